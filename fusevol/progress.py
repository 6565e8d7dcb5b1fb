"""The one progress protocol of long operations (send, receive, gc, verify,
export, import, push, pull): they say which phase they are in and how far it
went, and pass on warnings a user should read; the caller decides what to
show (the CLI draws bars on a terminal, cli/progress.py). Like errors.py, this
module imports nothing of the project: every layer may take a `Progress`.
"""

import logging
from typing import Protocol

log = logging.getLogger("fusevol")


class Progress(Protocol):
    def start(self, what: str, total: int | None = None) -> None:
        """A new phase begins: `what` names it, `total` is how many units
        (bytes, or items) it will advance by, if known."""

    def advance(self, n: int) -> None:
        """The current phase went `n` units further."""

    def warn(self, message: str) -> None:
        """Something the user should read, that does not stop the operation
        (a member of an archive skipped, ...)."""


class NoProgress:
    """A Progress that shows nothing (warnings go to the log)."""

    def start(self, what: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def warn(self, message: str) -> None:
        log.warning("%s", message)
