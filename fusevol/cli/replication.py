"""`fusevol send` and `fusevol receive`: snapshots as verified streams between stores."""

import contextlib
import os
import sys

import click

from .. import errors
from .common import emit, human, json_option, open_service, open_store, parse_opts, quiet_option
from .group import command
from .progress import phases


def _parse_base(text: str, volume: str) -> tuple[str, str]:
    from ..store import snapshots

    if text.startswith("@"):
        text = volume + text
    return snapshots.parse_ref(text)


@command()
@click.argument("ref", metavar="VOLUME@NAME")
@click.option("-i", "base", metavar="VOLUME@BASE",
              help="Send only what differs from snapshot BASE (the receiver holds it).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE, not stdout.")
@quiet_option
@click.pass_context
def send(ctx, ref, base, output, quiet):
    """Write snapshot VOLUME@NAME as a stream for `fusevol receive`."""
    from ..store import snapshots, stream

    volume, name = snapshots.parse_ref(ref)
    base_ref = _parse_base(base, volume) if base else None
    store = open_store(ctx)
    if output is None:
        if sys.stdout.isatty():
            raise errors.InvalidArgument("refusing to write a stream to a terminal: "
                                         "pipe it (| fusevol receive ...) or use -o FILE")
        try:
            with phases(quiet) as progress:
                stream.send(store, volume, name, sys.stdout.buffer, base_ref, progress)
        except BrokenPipeError:
            # Nothing more can reach the reader; keep the interpreter's own flush quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise errors.FusevolError("the reader of the stream went away (broken pipe)") from None
        return
    try:
        with open(output, "wb") as out, phases(quiet) as progress:
            stats = stream.send(store, volume, name, out, base_ref, progress)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(output)
        raise
    if not quiet:
        click.echo(f"{ref}: {human(stats['bytes'])} ({stats['objects']} objects, "
                   f"{stats['chunks']} chunks) to {output}", err=True)


@command()
@click.argument("volume")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("-F", "--force", is_flag=True,
              help="Discard changes made to VOLUME since its latest snapshot.")
@click.option("-o", "--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="Driver option of a new volume (compression, size).")
@json_option
@quiet_option
@click.pass_context
def receive(ctx, volume, file, force, opts, as_json, quiet):
    """Read a stream from `fusevol send` (FILE or stdin) into VOLUME.

    A full stream makes a new volume; an incremental one (send -i) goes into
    the existing VOLUME, which must hold the base snapshot, and rolls it to
    the snapshot received."""
    from ..store import stream

    service = open_service(ctx)
    store = service.store
    mounted = service.receive_target_served(volume)
    with contextlib.ExitStack() as stack:
        if file is None:
            if sys.stdin.isatty():
                raise errors.InvalidArgument("no stream: pipe one in (fusevol send ... |) or give FILE")
            src = sys.stdin.buffer
        else:
            src = stack.enter_context(open(file, "rb"))
        progress = stack.enter_context(phases(quiet or as_json))
        report = stream.receive(store, volume, src, force=force, mounted=mounted,
                                opts=parse_opts(opts), progress=progress)
    emit(report, as_json, report["snapshot"])
