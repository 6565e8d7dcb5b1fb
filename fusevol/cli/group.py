"""What every command shares: one mapping of errors to messages and exit codes,
and the options a command takes wherever they stand on the line (`--store`).

Every group of the CLI is a `Group` and every command a `Command`, so a command
cannot forget either. A usage error ends as click says it (exit 2), and every
other error as failure.py words it.
"""

from typing import NoReturn

import click

from .failure import ending

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
    from ..store.names import resolve_path

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
        except (Exception, KeyboardInterrupt) as e:
            fail(*ending(e, lambda: store_path(ctx)))


def command(*args, **kwargs):
    """@click.command with the shared options and error mapping."""
    return click.command(*args, cls=Command, **kwargs)


def group(*args, **kwargs):
    """@click.group with the shared options and error mapping."""
    return click.group(*args, cls=Group, **kwargs)
