"""What every command shares: one mapping of errors to messages and exit codes,
and the options a command takes wherever they stand on the line (`--store`).

Every group of the CLI is a `Group` and every command a `Command`, so a command
cannot forget either. Exits:

- a FusevolError: its message, its exit_code (fusevol/errors.py);
- an OSError: one line naming the file, exit 1;
- a usage error: what click says, exit 2;
- Ctrl-C: exit 130, as a shell reports a process killed by SIGINT;
- anything else is a bug: one line on stderr, the traceback in the store's
  CLI log (run/log/cli.log), exit 70 (EX_SOFTWARE). Never a traceback on the
  user's terminal.
"""

import logging
import os
import sys
from typing import NoReturn

import click

from .. import errors

INTERRUPTED = 130
INTERNAL_ERROR = 70

# The store a command works on, set by whichever --store came last on the line;
# ctx.meta is one dict shared by the root context and every nested one.
STORE_KEY = "fusevol.store"


def _remember_store(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[STORE_KEY] = value


def store_option() -> click.Option:
    return click.Option(["--store"], metavar="DIR", default=None, expose_value=False,
                        callback=_remember_store,
                        help="Store directory (default $FUSEVOL_STORE or /var/lib/fusevol).")


def store_path(ctx: click.Context) -> str:
    """The absolute path of the store the command line names (or the default)."""
    from ..store.env import resolve_path

    return resolve_path(ctx.meta.get(STORE_KEY))


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"fusevol: {message}", err=True)
    raise click.exceptions.Exit(code)


class _SharedOptions:
    """Adds the options every command accepts after its own name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(store_option())


class Command(_SharedOptions, click.Command):
    pass


class Group(_SharedOptions, click.Group):
    """A group whose commands and subgroups are of these classes, and whose
    commands' errors end as described above."""

    command_class = Command
    group_class = type  # subgroups are of this class too

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # usage errors and deliberate exits: click's own way
        except errors.FusevolError as e:
            from .advice import worded

            fail(worded(e), e.exit_code)
        except OSError as e:
            if isinstance(e, BrokenPipeError):
                _silence_stdout()
            fail(f"{f'{e.filename}: ' if e.filename else ''}{e.strerror or e}", 1)
        except KeyboardInterrupt:
            fail("interrupted", INTERRUPTED)
        except Exception as e:
            where = _log_internal_error(ctx, e)
            first_line = (str(e).splitlines() or [""])[0]
            fail(f"internal error: {type(e).__name__}"
                 f"{': ' + first_line if first_line else ''}"
                 f"{f' (traceback in {where})' if where else ''}", INTERNAL_ERROR)


def _silence_stdout() -> None:
    """The reader of stdout went away: keep the interpreter's last flush quiet."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _log_internal_error(ctx: click.Context, exc: Exception) -> str | None:
    """Write the traceback to STORE/run/log/cli.log (not to the terminal);
    return that path, or None if it cannot be written."""
    try:
        path = os.path.join(store_path(ctx), "run", "log", "cli.log")
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


def command(*args, **kwargs):
    """@click.command with the shared options and error mapping."""
    return click.command(*args, cls=Command, **kwargs)


def group(*args, **kwargs):
    """@click.group with the shared options and error mapping."""
    return click.group(*args, cls=Group, **kwargs)
