"""Replication and upkeep commands of the `fusevol` CLI: send, receive, gc, verify."""

import contextlib
import os
import sys

import click

from . import errors
from .cli import _emit, _parse_opts, _store, cli_errors, human, main
from .fs.mount import worker_of, workers
from .store import check, snapshots, stream, volumes


class _Bar(stream.NoProgress):
    """A rich progress bar on stderr, one task per phase."""

    def __init__(self, progress):
        self.progress = progress
        self.task = None

    def start(self, what: str, total: int | None = None) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(what, total=total)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)


@contextlib.contextmanager
def _progress(quiet: bool, in_bytes: bool = True):
    """A progress bar when stderr is a terminal and nobody asked for quiet."""
    if quiet or not sys.stderr.isatty():
        yield stream.NoProgress()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                               TextColumn, TimeElapsedColumn, TransferSpeedColumn)

    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if in_bytes else [MofNCompleteColumn()]
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True) as progress:
        yield _Bar(progress)


def _parse_base(text: str, volume: str) -> tuple[str, str]:
    if text.startswith("@"):
        text = volume + text
    base_volume, base_name = snapshots.parse_ref(text)
    return base_volume, base_name


@main.command()
@click.argument("ref", metavar="VOLUME@NAME")
@click.option("-i", "base", metavar="VOLUME@BASE",
              help="Send only what differs from snapshot BASE (the receiver holds it).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE, not stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@cli_errors
def send(ctx, ref, base, output, quiet):
    """Write snapshot VOLUME@NAME as a stream for `fusevol receive`."""
    volume, name = snapshots.parse_ref(ref)
    base_ref = _parse_base(base, volume) if base else None
    store = _store(ctx)
    if output is None:
        if sys.stdout.isatty():
            raise errors.InvalidArgument("refusing to write a stream to a terminal: "
                                         "pipe it (| fusevol receive ...) or use -o FILE")
        try:
            with _progress(quiet) as progress:
                stream.send(store, volume, name, sys.stdout.buffer, base_ref, progress)
        except BrokenPipeError:
            # Nothing more can reach the reader; keep the interpreter's own flush quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise errors.FusevolError("the reader of the stream went away (broken pipe)") from None
        return
    try:
        with open(output, "wb") as out, _progress(quiet) as progress:
            stats = stream.send(store, volume, name, out, base_ref, progress)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(output)
        raise
    if not quiet:
        click.echo(f"{ref}: {human(stats['bytes'])} ({stats['objects']} objects, "
                   f"{stats['chunks']} chunks) to {output}", err=True)


@main.command()
@click.argument("volume")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("-F", "--force", is_flag=True,
              help="Discard changes made to VOLUME since its latest snapshot.")
@click.option("-o", "--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="Driver option of a new volume (compression, size).")
@click.option("--json", "as_json", is_flag=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@cli_errors
def receive(ctx, volume, file, force, opts, as_json, quiet):
    """Read a stream from `fusevol send` (FILE or stdin) into VOLUME.

    A full stream makes a new volume; an incremental one (send -i) goes into
    the existing VOLUME, which must hold the base snapshot, and rolls it to
    the snapshot received."""
    store = _store(ctx)
    mounted = worker_of(store.path, volume=volume) is not None
    with contextlib.ExitStack() as stack:
        if file is None:
            if sys.stdin.isatty():
                raise errors.InvalidArgument("no stream: pipe one in (fusevol send ... |) or give FILE")
            src = sys.stdin.buffer
        else:
            src = stack.enter_context(open(file, "rb"))
        progress = stack.enter_context(_progress(quiet or as_json))
        report = stream.receive(store, volume, src, force=force, mounted=mounted,
                                opts=_parse_opts(opts), progress=progress)
    _emit(report, as_json, report["snapshot"])


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@cli_errors
def gc(ctx, as_json, quiet):
    """Free what nothing reaches and repair wrong reference counts.

    Reference counts free space at once already; gc is the safety net after
    a crash, a bug or a manual edit. Orphan files of mounted volumes are left
    to their workers."""
    store = _store(ctx)
    served = {w["volume"] for w in workers(store.path)}
    with _progress(quiet or as_json, in_bytes=False) as progress, store.write() as txn:
        busy = {r["vid"] for r in volumes.list_all(txn) if r["name"] in served}
        report = check.gc(txn, busy, progress)
    lines = [
        f"freed     {human(report['stored_bytes_freed']):>12}  stored "
        f"({report['chunks_freed']} chunks, {report['objects_freed']} tree objects)",
        f"orphans   {report['orphans_purged']:>12}  purged",
        f"fixed     {len(report['counts_fixed']):>12}  reference counts",
    ]
    for fix in report["counts_fixed"]:
        kind = "chunk" if "chunk" in fix else "tree object"
        lines.append(f"  {kind} {fix.get('chunk') or fix.get('object')}: {fix['was']} -> {fix['now']}")
    if report["totals_fixed"]:
        lines.append(f"  store totals: {report['totals_fixed']['was']} -> {report['totals_fixed']['now']}")
    for gone in report["missing"]:
        lines.append(f"  chunk {gone['chunk']} {gone['state']}: run fusevol verify")
    _emit(report, as_json, "\n".join(lines))


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@cli_errors
def verify(ctx, as_json, quiet):
    """Re-hash every chunk and tree object and follow every reference;
    name the files that damage reaches. Exits non-zero on any problem."""
    store = _store(ctx)
    with _progress(quiet or as_json, in_bytes=False) as progress, store.read() as txn:
        report = check.verify(txn, progress)
    lines = []
    for p in report["problems"]:
        lines.append(f"{p['where']}: {p['path']}: {p['message']}" if p["path"] is not None
                     else f"{p['where']}: {p['message']}")
    summary = (f"checked {report['chunks']} chunks, {report['objects']} tree objects, "
               f"{report['volumes']} volumes, {report['snapshots']} snapshots: "
               + ("ok" if report["ok"] else f"{len(report['problems'])} problem(s)"))
    _emit(report, as_json, "\n".join(lines + [summary]))
    if not report["ok"]:
        sys.exit(errors.StoreDamaged.exit_code)
