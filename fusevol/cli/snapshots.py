"""`fusevol snapshot create/ls/rm`, `clone`, `rollback` and `diff`."""

import click

from .answers import human, snapshot_made
from .common import emit, json_option, open_service, open_store, parse_opts
from .group import command, group, store_path


@group()
def snapshot():
    """Create, list and delete snapshots (VOLUME@NAME)."""


@snapshot.command("create")
@click.argument("ref", metavar="VOLUME[@NAME]")
@json_option
@click.pass_context
def snapshot_create(ctx, ref, as_json):
    """Snapshot VOLUME (named NAME, or after the time)."""
    snap, text = snapshot_made(store_path(ctx), ref, as_json)
    emit(snap, as_json, text)


@snapshot.command("ls")
@click.argument("volume", required=False)
@json_option
@click.pass_context
def snapshot_ls(ctx, volume, as_json):
    """List snapshots (of VOLUME, or of all volumes)."""
    snaps = []
    for snap, unique, on_disk in open_service(ctx).snapshots(volume):
        row = snap.to_dict()
        row.pop("hardlinks")
        snaps.append({**row, "unique_bytes": unique, "unique_disk_bytes": on_disk})
    # UNIQUE: stored bytes only this snapshot holds; ON DISK: what deleting it frees in the store file.
    lines = [f"{'SNAPSHOT':<45} {'CREATED':<21} {'SIZE':>10} {'UNIQUE':>10} {'ON DISK':>10}"]
    for s in snaps:
        lines.append(f"{s['volume'] + '@' + s['name']:<45} {s['created_at']:<21} "
                     f"{human(s['logical_bytes']):>10} {human(s['unique_bytes']):>10} "
                     f"{human(s['unique_disk_bytes']):>10}")
    emit(snaps, as_json, "\n".join(lines))


@snapshot.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="VOLUME@NAME...")
@click.pass_context
def snapshot_rm(ctx, refs):
    """Delete snapshots; data no volume or snapshot reaches is freed."""
    from ..store import snapshots

    for ref in refs:
        volume, name = snapshots.parse_ref(ref)
        with open_store(ctx).write() as txn:
            snapshots.remove(txn, volume, name)
        click.echo(ref)


@command()
@click.argument("ref", metavar="VOLUME@NAME")
@click.argument("new_volume")
@click.option("-o", "--opt", "opts", multiple=True, metavar="KEY=VALUE")
@json_option
@click.pass_context
def clone(ctx, ref, new_volume, opts, as_json):
    """Make NEW_VOLUME, a writable volume starting as snapshot VOLUME@NAME."""
    from ..store import snapshots

    volume, name = snapshots.parse_ref(ref)
    record = open_service(ctx).clone(volume, name, new_volume, parse_opts(opts))
    emit(record.to_dict(), as_json, new_volume)


@command()
@click.argument("ref", metavar="VOLUME@NAME")
@click.option("--force", is_flag=True,
              help="If mounted by hand: store its data, unmount, roll back, mount again.")
@click.pass_context
def rollback(ctx, ref, force):
    """Return VOLUME to snapshot NAME (refused while mounted, unless --force)."""
    from ..store import snapshots

    volume, name = snapshots.parse_ref(ref)
    open_service(ctx).rollback(volume, name, force=force)
    click.echo(f"{volume} is now {ref}")


@command()
@click.argument("old", metavar="VOLUME@A")
@click.argument("new", required=False, metavar="[VOLUME@B | VOLUME]")
@json_option
@click.pass_context
def diff(ctx, old, new, as_json):
    """Show what changed from snapshot A to snapshot B or to the volume now."""
    from ..store import snapshots
    from ..store.diff import diff as tree_diff

    snapshots.parse_ref(old)
    new = new or old.partition("@")[0]
    volume, name = snapshots.parse_ref(new, need_snapshot=False)
    if name is None:
        open_service(ctx).flush_for_read(volume)
    with open_store(ctx).write() as txn:  # the live side may need its changes written as objects
        changes = tree_diff(txn, snapshots.resolve_tree(txn, old), snapshots.resolve_tree(txn, new))
    rows = [{"status": c.status, "path": c.path.decode(errors="surrogateescape"),
             **({"new_path": c.new_path.decode(errors="surrogateescape")} if c.new_path else {})}
            for c in changes]
    if as_json or changes:
        emit(rows, as_json, "\n".join(c.line() for c in changes))
