"""A worker's entry point: serve one volume and tell the starting process how it went.

A worker is started either as `fusevol mount ... --ready-fd N` (the CLI's
--background, and the fallback) or forked by the daemon's forkserver
(forkserver.py). Both end here: the worker writes one JSON report on the
ready pipe, {"ready": true} once the mount serves or the error's class and
message if it could not, then closes it; registry.start_worker raises the
same error class, so its caller (the CLI's exit code, the plugin's Err) sees
what the worker saw.
"""

import json
import logging
import os

from .. import errors
from . import mount as mounting
from . import mountopts

log = logging.getLogger("fusevol")

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def serve_reporting(store_path: str, name: str, mountpoint: str, *, readonly: bool = False,
                    subpath: str | None = None, options: str | None = None,
                    fsname: str | None = None, ready_fd: int | None = None) -> None:
    """Serve until unmounted; errors are reported on ready_fd, then raised."""

    def report(**message) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            os.write(ready_fd, json.dumps(message).encode())
            os.close(ready_fd)
            ready_fd = None

    def on_ready():
        report(ready=True)
        log.info("volume %s serves at %s", name, os.path.abspath(mountpoint))

    try:
        mounting.serve(store_path, name, mountpoint, readonly=readonly, subpath=subpath,
                       options=mountopts.parse(options), fsname=fsname, on_ready=on_ready)
    except errors.FusevolError as e:
        report(error=type(e).__name__, message=str(e))
        raise
    except (OSError, RuntimeError) as e:
        report(error="FusevolError", message=f"cannot mount {mountpoint}: {e}")
        raise errors.FusevolError(f"cannot mount {mountpoint}: {e}") from None
    except BaseException as e:
        report(error="FusevolError", message=f"internal error: {type(e).__name__}: {e}")
        raise
