"""`fusevol mount` and `fusevol umount`: a volume served by a worker process."""

import logging
import os

import click

from .. import errors
from .group import command, store_path

log = logging.getLogger("fusevol")


@command()
@click.argument("name")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--read-only", "readonly", is_flag=True, help="Refuse every change (EROFS).")
@click.option("--subpath", default=None, help="Serve only this folder of the volume.")
@click.option("--background", is_flag=True, help="Return once the mount serves.")
@click.option("--ready-fd", type=int, default=None, hidden=True)
@click.pass_context
def mount(ctx, name, mountpoint, readonly, subpath, background, ready_fd):
    """Mount volume NAME at MOUNTPOINT (in the foreground unless --background)."""
    if background:
        from ..fs.registry import start_worker

        start_worker(store_path(ctx), name, mountpoint, readonly=readonly, subpath=subpath)
        return
    from ..fs import mount as mounting  # pyfuse3 and trio: only the worker needs them

    def report(message: str) -> None:
        """Tell the starting process (start_worker) once: "ok" or what failed."""
        nonlocal ready_fd
        if ready_fd is not None:
            os.write(ready_fd, message.encode())
            os.close(ready_fd)
            ready_fd = None

    def on_ready():
        report("ok")
        log.info("volume %s serves at %s", name, os.path.abspath(mountpoint))

    try:
        mounting.serve(store_path(ctx), name, mountpoint, readonly=readonly, subpath=subpath,
                       on_ready=on_ready)
    except errors.FusevolError as e:
        report(str(e))
        raise
    except (OSError, RuntimeError) as e:
        report(f"cannot mount {mountpoint}: {e}")
        raise errors.FusevolError(f"cannot mount {mountpoint}: {e}") from None
    except BaseException as e:
        report(f"internal error: {type(e).__name__}: {e}")
        raise


@command()
@click.argument("mountpoint", type=click.Path())
@click.option("--lazy", is_flag=True, help="Detach now; finish once open files close.")
@click.pass_context
def umount(ctx, mountpoint, lazy):
    """Unmount MOUNTPOINT once its data is stored."""
    from ..fs.registry import unmount

    unmount(store_path(ctx), mountpoint, lazy=lazy)
