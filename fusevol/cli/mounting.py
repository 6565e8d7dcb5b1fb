"""`fusevol mount` and `fusevol umount`: a volume served by a worker process."""

import click

from .group import STORE_KEY, command, store_path


@command()
@click.argument("name")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--read-only", "readonly", is_flag=True, help="Refuse every change (EROFS).")
@click.option("--subpath", default=None, help="Serve only this folder of the volume.")
@click.option("--background", is_flag=True, help="Return once the mount serves.")
@click.option("-o", "options", metavar="OPTS", default=None,
              help="mount(8)-style options: ro, rw, noatime, relatime, strictatime, "
                   "dev[=true], suid[=true] (root only), noexec, subpath=DIR, store=DIR.")
@click.option("--ready-fd", type=int, default=None, hidden=True)
@click.option("--fsname", default=None, hidden=True)
@click.pass_context
def mount(ctx, name, mountpoint, readonly, subpath, background, options, ready_fd, fsname):
    """Mount volume NAME at MOUNTPOINT (in the foreground unless --background)."""
    from ..fs import mountopts

    parsed = mountopts.parse(options)  # errors now, not in the worker
    if parsed.store:
        ctx.meta[STORE_KEY] = parsed.store
    readonly = readonly or parsed.readonly
    subpath = subpath or parsed.subpath
    if background:
        from ..service import VolumeService

        VolumeService.open(store_path(ctx)).start_worker(
            name, mountpoint, readonly=readonly, subpath=subpath, options=options, fsname=fsname)
        return
    from ..fs.worker import serve_reporting  # pyfuse3 and trio: only the worker needs them

    serve_reporting(store_path(ctx), name, mountpoint, readonly=readonly, subpath=subpath,
                    options=options, fsname=fsname, ready_fd=ready_fd)


@command()
@click.argument("mountpoint", type=click.Path())
@click.option("--lazy", is_flag=True, help="Detach now; finish once open files close.")
@click.pass_context
def umount(ctx, mountpoint, lazy):
    """Unmount MOUNTPOINT once its data is stored."""
    from ..service import VolumeService

    VolumeService.open(store_path(ctx)).stop_worker(mountpoint, lazy=lazy)
