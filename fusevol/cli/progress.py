"""Progress bars on stderr, drawn with rich only when stderr is a terminal
(rich is imported then, and only then: it costs tens of milliseconds)."""

import contextlib
import sys

import click


def _wanted(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class _Plain:
    """No bars (not a terminal, or --quiet); warnings still reach stderr."""

    def start(self, what: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def warn(self, message: str) -> None:
        click.echo(f"fusevol: warning: {message}", err=True)


class _PhaseBar:
    """The progress protocol (fusevol/progress.py) as rich bars: one per phase."""

    def __init__(self, progress):
        self.progress = progress
        self.task = None

    def start(self, what: str, total: int | None = None) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(what, total=total)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def warn(self, message: str) -> None:
        self.progress.console.print(f"fusevol: warning: {message}", markup=False, highlight=False)


@contextlib.contextmanager
def phases(quiet: bool, in_bytes: bool = True):
    """A Progress for every long command: bars on a terminal (in bytes, or
    items), nothing otherwise; warnings printed either way."""
    if not _wanted(quiet):
        yield _Plain()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += ([DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()] if in_bytes
                else [MofNCompleteColumn()])
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True) as progress:
        yield _PhaseBar(progress)
