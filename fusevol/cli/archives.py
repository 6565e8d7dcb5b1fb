"""`fusevol export` and `fusevol import`: volumes and snapshots as tar archives."""

import contextlib
import os
import sys

import click

from .. import errors
from .common import open_service, open_store, parse_opts, quiet_option
from .group import command
from .progress import phases


@contextlib.contextmanager
def _output(path: str | None):
    """Where the archive goes: a file that appears whole (or not at all), or stdout."""
    if path is None or path == "-":
        if sys.stdout.isatty():
            raise errors.InvalidArgument("refusing to write a tar archive to a terminal; "
                                         "use -o FILE or redirect the output")
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    if os.path.exists(path) and not os.path.isfile(path):
        # A device or a pipe (-o /dev/null): written as it is. A file renamed
        # over it would replace the device itself.
        with open(path, "wb") as f:
            yield f
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@command("export")
@click.argument("ref", metavar="VOLUME[@SNAPSHOT]")
@click.option("-o", "--output", metavar="FILE", help="Write the archive here (default: stdout).")
@quiet_option
@click.pass_context
def export(ctx, ref, output, quiet):
    """Write a volume or snapshot as a tar archive (POSIX pax, with xattrs).

    Extract it with: tar --xattrs --xattrs-include='*' -xpf FILE
    """
    from ..store import snapshots, tar_export

    service = open_service(ctx)
    store = service.store
    volume, name = snapshots.parse_ref(ref, need_snapshot=False)
    if name is None:
        service.flush_for_read(volume, missing_ok=False)
    with _output(output) as out, phases(quiet) as progress:
        try:
            tar_export.export(store, ref, out, progress=progress)
        except BrokenPipeError:
            # The reader went away (export | head): nothing more to say on a pipe that is gone.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise errors.FusevolError("output closed before the archive was written") from None


@command("import")
@click.argument("volume")
@click.argument("file", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Option of the new volume.")
@click.option("--strip-components", "strip", type=click.IntRange(min=0), default=0, metavar="N",
              help="Drop the first N parts of every name (as tar does).")
@quiet_option
@click.pass_context
def import_(ctx, volume, file, opts, strip, quiet):
    """Make the new VOLUME from a tar archive in FILE (default: stdin).

    Reads GNU, pax and ustar archives, plain or compressed (gzip, bzip2, xz, zstd).
    """
    from ..store import tar_import

    store = open_store(ctx)
    with contextlib.ExitStack() as stack:
        if file is None or file == "-":
            source, size = sys.stdin.buffer, None
        else:
            source = stack.enter_context(open(file, "rb"))
            size = os.fstat(source.fileno()).st_size or None
        progress = stack.enter_context(phases(quiet))
        tar_import.import_tar(store, volume, source, opts=parse_opts(opts), strip=strip,
                              size=size, progress=progress)
    click.echo(volume)
