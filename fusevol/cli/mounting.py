"""`fusevol mount` and `fusevol umount`: a volume served by a worker process."""

import click

from ..errors import InvalidArgument
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
@click.option("--fsname", default=None, hidden=True)
@click.pass_context
def mount(ctx, name, mountpoint, readonly, subpath, background, options, fsname):
    """Mount volume NAME at MOUNTPOINT (in the foreground unless --background).

    A view (or --subpath) is a folder of its data volume's one worker, bound at
    MOUNTPOINT, as the Docker driver shows views; in the foreground the command
    returns once it is unmounted."""
    from ..fs import mountopts
    from ..service import VolumeService

    parsed = mountopts.parse(options)  # errors now, not in the worker
    if parsed.store:
        ctx.meta[STORE_KEY] = parsed.store
    service = VolumeService.open(store_path(ctx))
    spec = service.mount_spec(name, subpath=subpath or parsed.subpath,
                              readonly=readonly or parsed.readonly)
    if spec.subpath:
        if parsed.atime or parsed.dev is not None or parsed.suid is not None:
            raise InvalidArgument(f"{name}: a view (or a subpath) has its volume's atime, dev "
                                  "and suid; only ro, rw and noexec apply to it")
        service.mount_view(spec, mountpoint, noexec=parsed.noexec, keeper=background)
        if not background:
            _serve_view_until_unmounted(service, mountpoint)
        return
    if background:
        service.start_worker(spec, mountpoint, options=options, fsname=fsname)
        return
    from ..fs import registry
    from ..fs.worker import WorkerRequest, log_in_foreground, serve_reporting  # pyfuse3, trio

    log_in_foreground(registry.worker_log(service.store_path, spec.data.name))
    serve_reporting(WorkerRequest(store=service.store_path, spec=spec, mountpoint=mountpoint,
                                  options=options, fsname=fsname))


def _serve_view_until_unmounted(service, mountpoint: str) -> None:
    """A view in the foreground: until it is unmounted (by `fusevol umount`,
    umount(8), or this command's Ctrl-C, SIGTERM or SIGHUP, which unmount it)."""
    import signal

    from ..service.keeper import wait_unmounted

    def interrupt(*_):
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):  # a closed terminal too: no count left behind
        signal.signal(signum, interrupt)
    try:
        wait_unmounted(mountpoint)
    except KeyboardInterrupt:
        pass
    service.unmount_view(mountpoint, lazy=True)


@command()
@click.argument("mountpoint", type=click.Path())
@click.option("--lazy", is_flag=True, help="Detach now; finish once open files close.")
@click.pass_context
def umount(ctx, mountpoint, lazy):
    """Unmount MOUNTPOINT once its data is stored."""
    from ..service import VolumeService

    VolumeService.open(store_path(ctx)).stop_worker(mountpoint, lazy=lazy)
