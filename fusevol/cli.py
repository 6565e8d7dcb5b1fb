"""The `fusevol` command line. Errors end as one line on stderr and an exit code."""

import functools
import json
import logging
import os
import sys

import click

from . import errors
from .store import Store, resolve_path
from .store import chunks, snapshots, volumes

log = logging.getLogger("fusevol")


def _fail(message: str, code: int) -> None:
    click.echo(f"fusevol: {message}", err=True)
    sys.exit(code)


def cli_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except errors.FusevolError as e:
            _fail(str(e), e.exit_code)
        except OSError as e:
            _fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}", 1)
    return wrapper


def _store(ctx) -> Store:
    return Store.open(ctx.obj["store"])


def _emit(data, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else text)


def _parse_opts(pairs) -> dict:
    opts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.InvalidArgument(f"option {pair!r} is not KEY=VALUE")
        opts[key] = value
    return opts


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store_path", envvar="FUSEVOL_STORE", default=None,
              help="Store directory (default $FUSEVOL_STORE or /var/lib/fusevol).")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens.")
@click.pass_context
def main(ctx, store_path, verbose):
    """fusevol: deduplicating FUSE volumes for Docker."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ctx.obj = {"store": resolve_path(store_path)}


# -- volumes ------------------------------------------------------------------

@main.group()
def volume():
    """Create, list, inspect and remove volumes."""


@volume.command("create")
@click.argument("name")
@click.option("-o", "--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="Driver option; repeat for several: " + ", ".join(volumes.OPTIONS))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@cli_errors
def volume_create(ctx, name, opts, as_json):
    """Create volume NAME."""
    with _store(ctx).write() as txn:
        record = snapshots.create_volume(txn, name, _parse_opts(opts))
    _emit(record, as_json, name)


def _describe(txn, store_path: str, record: dict) -> dict:
    from .fs.registry import worker_of

    st = volumes.stats(txn, record)
    out = dict(record)
    out["logical_bytes"] = st.logical_bytes
    out["inodes"] = st.inodes
    worker = worker_of(store_path, volume=record.get("source") or record["name"])
    out["served_at"] = worker["mountpoint"] if worker else None
    return out


@volume.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@cli_errors
def volume_ls(ctx, as_json):
    """List volumes."""
    store = _store(ctx)
    with store.read() as txn:
        rows = [_describe(txn, store.path, r) for r in volumes.list_all(txn)]
    lines = [f"{'NAME':<30} {'SIZE':>10} {'CREATED':<21} OPTIONS"]
    for r in rows:
        opts = ",".join(f"{k}={v}" for k, v in sorted(r["options"].items()))
        lines.append(f"{r['name']:<30} {human(r['logical_bytes']):>10} {r['created_at']:<21} {opts}")
    _emit(rows, as_json, "\n".join(lines))


@volume.command("inspect")
@click.argument("name")
@click.pass_context
@cli_errors
def volume_inspect(ctx, name):
    """Show volume NAME as JSON."""
    store = _store(ctx)
    with store.read() as txn:
        out = _describe(txn, store.path, volumes.get(txn, name))
    click.echo(json.dumps(out, indent=2))


@volume.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
@cli_errors
def volume_rm(ctx, names):
    """Remove volumes and free the data only they held."""
    from .fs.registry import worker_of

    store = _store(ctx)
    for name in names:
        with store.read() as txn:
            volumes.get(txn, name)
        worker = worker_of(store.path, volume=name)
        if worker is not None:
            raise errors.Busy(f"volume {name} is mounted at {worker['mountpoint']}; unmount it first")
        with store.write() as txn:
            volumes.remove(txn, name)
        click.echo(name)


# -- mounting -----------------------------------------------------------------

@main.command()
@click.argument("name")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--read-only", "readonly", is_flag=True, help="Refuse every change (EROFS).")
@click.option("--subpath", default=None, help="Serve only this folder of the volume.")
@click.option("--background", is_flag=True, help="Return once the mount serves.")
@click.option("--ready-fd", type=int, default=None, hidden=True)
@click.pass_context
def mount(ctx, name, mountpoint, readonly, subpath, background, ready_fd):
    """Mount volume NAME at MOUNTPOINT (in the foreground unless --background)."""
    store_path = ctx.obj["store"]
    if background:
        from .fs.registry import start_worker

        cli_errors(start_worker)(store_path, name, mountpoint, readonly=readonly, subpath=subpath)
        return
    from .fs import mount as mounting

    def report(message: str) -> None:
        if ready_fd is not None:
            os.write(ready_fd, message.encode())
            os.close(ready_fd)

    def on_ready():
        report("ok")
        log.info("volume %s serves at %s", name, os.path.abspath(mountpoint))

    try:
        mounting.serve(store_path, name, mountpoint, readonly=readonly, subpath=subpath,
                       on_ready=on_ready)
    except errors.FusevolError as e:
        report(str(e))
        _fail(str(e), e.exit_code)
    except (OSError, RuntimeError) as e:
        report(f"cannot mount {mountpoint}: {e}")
        _fail(f"cannot mount {mountpoint}: {e}", 1)


@main.command()
@click.argument("mountpoint", type=click.Path())
@click.option("--lazy", is_flag=True, help="Detach now; finish once open files close.")
@click.pass_context
@cli_errors
def umount(ctx, mountpoint, lazy):
    """Unmount MOUNTPOINT once its data is stored."""
    from .fs.registry import unmount

    unmount(ctx.obj["store"], mountpoint, lazy=lazy)


# -- the Docker plugin ------------------------------------------------------------

@main.command()
@click.option("--store", "store_path", default=None, help="Store directory (overrides the global --store).")
@click.option("--socket", "socket_path", default="/run/docker/plugins/fusevol.sock", show_default=True,
              help="Plugin socket; dockerd names the driver after its basename.")
@click.option("--worker-start-timeout", type=click.FloatRange(min=0.1), default=60.0,
              show_default=True, metavar="SECONDS",
              help="A Mount fails if the volume's worker does not serve within this time.")
@click.pass_context
@cli_errors
def serve(ctx, store_path, socket_path, worker_start_timeout):
    """Serve the Docker volume plugin protocol until SIGTERM."""
    from .plugin.daemon import serve as serve_plugin

    serve_plugin(resolve_path(store_path) if store_path else ctx.obj["store"], socket_path,
                 worker_start_timeout)


# -- space ----------------------------------------------------------------------

def _file_bytes(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@cli_errors
def df(ctx, as_json):
    """Show logical and stored bytes, with dedup and compression ratios."""
    store = _store(ctx)
    with store.read() as txn:
        totals = chunks.totals(txn)
        per_volume = {r["name"]: volumes.stats(txn, r).logical_bytes
                      for r in volumes.list_all(txn) if r["vid"] is not None}
    logical = sum(per_volume.values())
    unique = totals["unique_bytes"]
    stored = totals["stored_bytes"]
    out = {
        "logical_bytes": logical,
        "unique_bytes": unique,
        "stored_bytes": stored,
        "store_file_bytes": _file_bytes(os.path.join(store.path, "db", "data.mdb")),
        "chunks": totals["chunks"],
        "dedup_ratio": round(logical / unique, 3) if unique else 1.0,
        "compression_ratio": round(unique / stored, 3) if stored else 1.0,
        "volumes": per_volume,
    }
    text = "\n".join([
        f"logical   {human(logical):>12}  (what the volumes hold)",
        f"unique    {human(unique):>12}  (after dedup, ratio {out['dedup_ratio']:.2f}x)",
        f"stored    {human(stored):>12}  (after compression, ratio {out['compression_ratio']:.2f}x)",
        f"on disk   {human(out['store_file_bytes']):>12}  (store file)",
        f"chunks    {totals['chunks']:>12}",
    ])
    _emit(out, as_json, text)


from . import cli_snapshots  # noqa: E402,F401  (registers its commands on main)
from . import cli_transfer  # noqa: E402,F401  (registers its commands on main)
from . import cli_replication  # noqa: E402,F401  (registers its commands on main)
