"""How a command's error ends: the one line on stderr and the exit code.

Shared by click's commands (group.py) and the commands run without click
(entry.py), so both end alike; this module imports no click. Exits:

- a FusevolError: its message, its exit_code (fusevol/errors.py);
- an OSError: one line naming the file, exit 1;
- Ctrl-C: exit 130, as a shell reports a process killed by SIGINT;
- anything else is a bug: one line on stderr, the traceback in the store's
  CLI log (run/log/cli.log), exit 70 (EX_SOFTWARE). Never a traceback on the
  user's terminal.
"""

import os
import sys
from .. import errors

INTERRUPTED = 130
INTERNAL_ERROR = 70


def ending(exc: BaseException, store_path) -> tuple[str, int]:
    """The message (without the `fusevol: ` in front) and the exit code of a
    command that raised `exc`; store_path() names the store whose log takes a
    bug's traceback."""
    if isinstance(exc, errors.FusevolError):
        from .advice import worded

        return worded(exc), exc.exit_code
    if isinstance(exc, OSError):
        if isinstance(exc, BrokenPipeError):
            _silence_stdout()
        return f"{f'{exc.filename}: ' if exc.filename else ''}{exc.strerror or exc}", 1
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    where = _log_internal_error(store_path, exc)
    first_line = (str(exc).splitlines() or [""])[0]
    return (f"internal error: {type(exc).__name__}"
            f"{': ' + first_line if first_line else ''}"
            f"{f' (traceback in {where})' if where else ''}", INTERNAL_ERROR)


def _silence_stdout() -> None:
    """The reader of stdout went away: keep the interpreter's last flush quiet."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _log_internal_error(store_path, exc: BaseException) -> str | None:
    """Write the traceback to STORE/run/log/cli.log (not to the terminal);
    return that path, or None if it cannot be written."""
    import logging

    try:
        path = os.path.join(store_path(), "run", "log", "cli.log")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        handler = logging.FileHandler(path)
    except Exception:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    import shlex

    crash_log = logging.getLogger("fusevol.cli.internal")
    crash_log.propagate = False  # the terminal's handler must not print the traceback
    crash_log.addHandler(handler)
    try:
        crash_log.error("internal error in: fusevol %s", shlex.join(sys.argv[1:]), exc_info=exc)
    finally:
        crash_log.removeHandler(handler)
        handler.close()
    return path
