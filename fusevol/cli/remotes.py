"""`fusevol remote add/ls/rm/snapshots/prune`, `push` and `pull`: snapshots on
S3-compatible object storage. Credentials come from the AWS chain (boto3)."""

import click

from .common import emit, human, json_option, open_service, open_store, quiet_option
from .group import command, group
from .progress import phases


def _remote(ctx, name: str) -> dict:
    from ..store import remotes

    with open_store(ctx).read() as txn:
        return remotes.get(txn, name)


@group()
def remote():
    """Remotes: S3 buckets (AWS, Ceph radosgw, MinIO, ...) that hold snapshots."""


@remote.command("add")
@click.argument("name")
@click.argument("url", metavar="s3://BUCKET[/PREFIX]")
@click.option("--endpoint", metavar="URL", help="S3 endpoint of a server other than AWS "
              "(e.g. http://127.0.0.1:7480).")
@click.option("--region", metavar="REGION", help="Region to sign for (default us-east-1).")
@click.option("--create-bucket", is_flag=True, help="Create the bucket if it does not exist.")
@click.pass_context
def remote_add(ctx, name, url, endpoint, region, create_bucket):
    """Add remote NAME at URL. Credentials are never stored: they come from
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials."""
    from ..remote import location
    from ..store import remotes

    record = location.make_record(name, url, endpoint, region)
    if create_bucket:
        from ..remote.s3 import Bucket

        Bucket(record).create_bucket()
    with open_store(ctx).write() as txn:
        remotes.add(txn, record)
    click.echo(f"{name}: {record['url']}" + (f" at {record['endpoint']}" if record["endpoint"] else ""))


@remote.command("ls")
@json_option
@click.pass_context
def remote_ls(ctx, as_json):
    """List remotes."""
    from ..store import remotes

    with open_store(ctx).read() as txn:
        records = remotes.list_all(txn)
    lines = [f"{'NAME':<20} {'URL':<40} {'ENDPOINT':<30} REGION"]
    lines += [f"{r['name']:<20} {r['url']:<40} {r['endpoint'] or '-':<30} {r['region'] or '-'}"
              for r in records]
    emit(records, as_json, "\n".join(lines))


@remote.command("rm")
@click.argument("name")
@click.pass_context
def remote_rm(ctx, name):
    """Forget remote NAME (its bucket is left as it is)."""
    from ..store import remotes

    with open_store(ctx).write() as txn:
        remotes.remove(txn, name)


@remote.command("snapshots")
@click.argument("name")
@click.argument("volume", required=False)
@json_option
@click.pass_context
def remote_snapshots(ctx, name, volume, as_json):
    """List the snapshots remote NAME holds (of VOLUME)."""
    import concurrent.futures

    from ..remote import manifests
    from ..remote.s3 import Bucket

    bucket = Bucket(_remote(ctx, name))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        records = manifests.list_all(bucket, pool, volume)
    for r in records:
        r.pop("hardlinks", None)
    lines = [f"{'SNAPSHOT':<45} {'CREATED':<21} {'SIZE':>10}  PUSHED FROM"]
    lines += [f"{r['volume'] + '@' + r['name']:<45} {r['created_at']:<21} "
              f"{human(r['logical_bytes']):>10}  {r.get('pushed_from', '-')}" for r in records]
    emit(records, as_json, "\n".join(lines))


@remote.command("forget")
@click.argument("name")
@click.argument("ref", metavar="VOLUME@SNAP")
@click.pass_context
def remote_forget(ctx, name, ref):
    """Delete snapshot VOLUME@SNAP from remote NAME (its manifest; `remote
    prune` then frees the data no other snapshot uses)."""
    from ..remote import prune as pruning
    from ..store import snapshots

    volume, snap = snapshots.parse_ref(ref)
    pruning.forget(_remote(ctx, name), volume, snap)


@remote.command("verify")
@click.argument("name")
@click.option("--read-data", is_flag=True,
              help="Download every chunk the snapshots reach and check it by its hash.")
@json_option
@click.pass_context
def remote_verify(ctx, name, read_data, as_json):
    """Check that every snapshot on remote NAME is whole; name what is
    damaged or missing. Exits 8 on any problem."""
    from ..errors import RemoteDamaged
    from ..remote import verify as verifying

    report = verifying.verify(_remote(ctx, name), read_data=read_data)
    summary = (f"{name}: checked {report['snapshots']} snapshots, {report['indexes']} indexes, "
               f"{report['packs']} packs, {report['chunks_reached']} chunks"
               + (" (read and hashed)" if read_data else "") + ": "
               + ("ok" if not report["problems"] else f"{report['problems']} problem(s)"))
    emit(report, as_json, "\n".join(report["named"] + [summary]))
    if report["problems"]:
        ctx.exit(RemoteDamaged.exit_code)


@remote.command("prune")
@click.argument("name")
@click.option("-n", "--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--break-locks", is_flag=True,
              help="Ignore and remove push locks (only when no push is running anywhere).")
@json_option
@click.pass_context
def remote_prune(ctx, name, dry_run, break_locks, as_json):
    """Delete from remote NAME the packs no snapshot reaches. Refused while a
    push runs (each push holds a lock on the remote)."""
    from ..remote import prune as pruning

    report = pruning.prune(_remote(ctx, name), break_locks=break_locks, dry_run=dry_run)
    emit(report, as_json, f"{name}: {'would delete' if dry_run else 'deleted'} "
         f"{report['packs_deleted']} packs ({human(report['bytes_deleted'])}), kept "
         f"{report['packs_kept']} for {report['snapshots']} snapshots")


@command()
@click.argument("ref", metavar="VOLUME@SNAP")
@click.argument("name", metavar="REMOTE")
@json_option
@quiet_option
@click.pass_context
def push(ctx, ref, name, as_json, quiet):
    """Upload snapshot VOLUME@SNAP to REMOTE: only what the remote lacks."""
    from ..remote import push as pushing
    from ..store import snapshots

    volume, snap = snapshots.parse_ref(ref)
    record = _remote(ctx, name)
    with phases(quiet or as_json) as progress:
        report = pushing.push(open_store(ctx), record, volume, snap, progress)
    text = (f"{ref}: already on {name}" if report["already"] else
            f"{ref} -> {name}: {human(report['uploaded_bytes'])} in {report['packs']} packs "
            f"({report['chunks']} chunks, {report['objects']} objects"
            + (f"; {report['reused_packs']} packs of an interrupted push reused" if report["reused_packs"] else "")
            + f") in {report['seconds']:.1f} s")
    emit(report, as_json, text)


@command()
@click.argument("name", metavar="REMOTE")
@click.argument("ref", metavar="VOLUME@SNAP")
@click.argument("new_volume", metavar="[NEWVOLUME]", required=False)
@click.option("-F", "--force", is_flag=True,
              help="Discard changes made to the local volume since its latest snapshot.")
@json_option
@quiet_option
@click.pass_context
def pull(ctx, name, ref, new_volume, force, as_json, quiet):
    """Download snapshot VOLUME@SNAP from REMOTE: only what this store lacks.

    Into NEWVOLUME (a new volume), or into VOLUME: a new volume if there is
    none here, else the local VOLUME is rolled to the snapshot (as receive does
    with an incremental stream: unmounted, unchanged since a snapshot)."""
    from ..remote import pull as pulling
    from ..store import snapshots

    volume, snap = snapshots.parse_ref(ref)
    record = _remote(ctx, name)
    service = open_service(ctx)
    mounted = service.receive_target_served(new_volume or volume)
    with phases(quiet or as_json) as progress:
        report = pulling.pull(service.store, record, volume, snap, new_volume, force=force,
                              mounted=mounted, progress=progress)
    emit(report, as_json, f"{name}:{ref} -> {report['snapshot']}: "
         f"{human(report['downloaded_bytes'])} downloaded in {report['seconds']:.1f} s")
