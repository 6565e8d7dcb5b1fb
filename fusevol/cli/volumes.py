"""`fusevol volume create/ls/inspect/rm`.

Like every command module, it imports the store when a command runs, not when
the CLI starts: `fusevol --help` must not pay for it.
"""

import json

import click

from .answers import describe_volume, volume_list
from .common import emit, json_option, open_service, parse_opts
from .group import group


class _DriverOption(click.Option):
    """`-o KEY=VALUE` whose help lists the store's volume options (looked up
    only when help is shown)."""

    def get_help_record(self, ctx):
        from ..store.volumes import OPTIONS

        self.help = "Driver option; repeat for several: " + ", ".join(OPTIONS)
        return super().get_help_record(ctx)


@group()
def volume():
    """Create, list, inspect and remove volumes."""


@volume.command("create")
@click.argument("name")
@click.option("-o", "--opt", "opts", multiple=True, metavar="KEY=VALUE", cls=_DriverOption)
@json_option
@click.pass_context
def volume_create(ctx, name, opts, as_json):
    """Create volume NAME."""
    record = open_service(ctx).create(name, parse_opts(opts))
    emit(record.to_dict(), as_json, name)


@volume.command("ls")
@json_option
@click.pass_context
def volume_ls(ctx, as_json):
    """List volumes."""
    rows, text = volume_list(open_service(ctx))
    emit(rows, as_json, text)


@volume.command("inspect")
@click.argument("name")
@click.pass_context
def volume_inspect(ctx, name):
    """Show volume NAME as JSON."""
    from ..store import volumes

    service = open_service(ctx)
    with service.store.read() as txn:
        out = describe_volume(txn, service, volumes.get(txn, name))
    click.echo(json.dumps(out, indent=2))


@volume.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def volume_rm(ctx, names):
    """Remove volumes and free the data only they held."""
    service = open_service(ctx)
    for name in names:
        deleted = service.remove(name)
        click.echo(name)
        if name not in deleted:
            click.echo(f"fusevol: {name} has views: its data stays until they are removed", err=True)
