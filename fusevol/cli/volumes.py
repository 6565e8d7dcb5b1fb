"""`fusevol volume create/ls/inspect/rm`.

Like every command module, it imports the store when a command runs, not when
the CLI starts: `fusevol --help` must not pay for it.
"""

import json

import click

from .common import emit, human, json_option, open_service, parse_opts
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


def _describe(txn, service, volume) -> dict:
    from ..store import volumes

    st = volumes.stats(txn, volume)
    out = volume.to_dict()
    out["logical_bytes"] = st.logical_bytes
    out["inodes"] = st.inodes
    worker = service.serving_worker(volume.family)
    out["served_at"] = worker.mountpoint if worker else None
    return out


@volume.command("ls")
@json_option
@click.pass_context
def volume_ls(ctx, as_json):
    """List volumes."""
    from ..store import volumes

    service = open_service(ctx)
    with service.store.read() as txn:
        rows = [_describe(txn, service, v) for v in volumes.list_all(txn)]
    lines = [f"{'NAME':<30} {'SIZE':>10} {'CREATED':<21} OPTIONS"]
    for r in rows:
        opts = ",".join(f"{k}={v}" for k, v in sorted(r["options"].items()))
        lines.append(f"{r['name']:<30} {human(r['logical_bytes']):>10} {r['created_at']:<21} {opts}")
    emit(rows, as_json, "\n".join(lines))


@volume.command("inspect")
@click.argument("name")
@click.pass_context
def volume_inspect(ctx, name):
    """Show volume NAME as JSON."""
    from ..store import volumes

    service = open_service(ctx)
    with service.store.read() as txn:
        out = _describe(txn, service, volumes.get(txn, name))
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
