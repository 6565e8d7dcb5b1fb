"""Progress bars on stderr, drawn with rich only when stderr is a terminal
(rich is imported then, and only then: it costs tens of milliseconds)."""

import contextlib
import sys

import click


def _wanted(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


class _PhaseBar:
    """The store's progress protocol (start a phase, advance it) as rich bars."""

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
def phases(quiet: bool, in_bytes: bool = True):
    """A progress object for send, receive, gc and verify: one bar per phase."""
    if not _wanted(quiet):
        from ..store.stream import NoProgress

        yield NoProgress()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                               TextColumn, TimeElapsedColumn, TransferSpeedColumn)

    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if in_bytes else [MofNCompleteColumn()]
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True) as progress:
        yield _PhaseBar(progress)


class ByteReport:
    """Bytes of an archive on a bar (export, import); warnings printed either way."""

    def __init__(self, label: str, quiet: bool):
        self.bar = None
        if _wanted(quiet):
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

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
