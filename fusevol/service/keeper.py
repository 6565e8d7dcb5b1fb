"""A view mounted on the host, watched until it is unmounted (service/mounts.py).

umount(8) unmounts a bind mount by itself, never asking fusevol, so the count
a host view holds on its volume (and with it the volume's worker) would stay
for ever. The keeper, a process of its own started with the view, waits for
the mount to go, however it goes, then takes the count back: the worker stops
once nothing counts on its volume.

`python -m fusevol.service.keeper STORE MOUNTPOINT`
"""

import logging
import os
import select
import sys

from ..fs import registry

log = logging.getLogger(__name__)


def wait_unmounted(mountpoint: str) -> None:
    """Until nothing is mounted at `mountpoint`. The kernel marks the mount
    table changed (POLLPRI on /proc/self/mountinfo): no polling by time."""
    with open("/proc/self/mountinfo", "rb") as table:
        poller = select.poll()
        poller.register(table, select.POLLPRI | select.POLLERR)
        while registry.is_mountpoint(mountpoint):
            poller.poll(5000)  # a change, or a look every few seconds
            table.seek(0)
            table.read()  # takes the change in: the next poll waits for another


def main(argv: list[str]) -> int:
    from . import VolumeService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    store_path, mountpoint = argv[1], os.path.abspath(argv[2])
    try:
        wait_unmounted(mountpoint)
        VolumeService.open(store_path).release_view(mountpoint)
        return 0
    except Exception:
        log.exception("keeping the view at %s", mountpoint)
        return 70


if __name__ == "__main__":
    sys.exit(main(sys.argv))
