"""Archive commands of the `fusevol` CLI: export a volume or snapshot as a tar, import a tar."""

import contextlib
import os
import sys

import click
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)

from . import errors
from .cli import _parse_opts, _store, cli_errors, main
from .fs.registry import flush_worker
from .store import snapshots, tar_export, tar_import, volumes


class _Report:
    """A progress bar of bytes on stderr when it is a terminal; warnings either way."""

    def __init__(self, label: str, quiet: bool):
        self.quiet = quiet
        self.bar = None
        if not quiet and sys.stderr.isatty():
            self.bar = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(label, total=None)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def total(self, n: int) -> None:
        if self.bar:
            self.bar.update(self.task, total=n)

    def advance(self, n: int) -> None:
        if self.bar:
            self.bar.advance(self.task, n)

    def warn(self, message: str) -> None:
        if self.bar:
            self.bar.console.print(f"fusevol: warning: {message}", markup=False, highlight=False)
        else:
            click.echo(f"fusevol: warning: {message}", err=True)


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
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@main.command("export")
@click.argument("ref", metavar="VOLUME[@SNAPSHOT]")
@click.option("-o", "--output", metavar="FILE", help="Write the archive here (default: stdout).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@cli_errors
def export(ctx, ref, output, quiet):
    """Write a volume or snapshot as a tar archive (POSIX pax, with xattrs).

    Extract it with: tar --xattrs --xattrs-include='*' -xpf FILE
    """
    store = _store(ctx)
    volume, name = snapshots.parse_ref(ref, need_snapshot=False)
    if name is None:
        with store.read() as txn:
            record = volumes.get(txn, volume)
        flush_worker(store.path, record.get("source") or volume)
    with _output(output) as out, _Report("export", quiet) as report:
        try:
            tar_export.export(store, ref, out, on_total=report.total, on_bytes=report.advance,
                              warn=report.warn)
        except BrokenPipeError:
            # The reader went away (export | head): nothing more to say on a pipe that is gone.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise errors.FusevolError("output closed before the archive was written") from None


@main.command("import")
@click.argument("volume")
@click.argument("file", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Option of the new volume.")
@click.option("--strip-components", "strip", type=click.IntRange(min=0), default=0, metavar="N",
              help="Drop the first N parts of every name (as tar does).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@cli_errors
def import_(ctx, volume, file, opts, strip, quiet):
    """Make the new VOLUME from a tar archive in FILE (default: stdin).

    Reads GNU, pax and ustar archives, plain or compressed (gzip, bzip2, xz, zstd).
    """
    store = _store(ctx)
    with contextlib.ExitStack() as stack:
        if file is None or file == "-":
            source, size = sys.stdin.buffer, None
        else:
            source = stack.enter_context(open(file, "rb"))
            size = os.fstat(source.fileno()).st_size or None
        report = stack.enter_context(_Report("import", quiet))
        if size:
            report.total(size)
        tar_import.import_tar(store, volume, source, opts=_parse_opts(opts), strip=strip,
                              on_bytes=report.advance, warn=report.warn)
    click.echo(volume)
