"""A mount whose worker died is recognised and detached, even while the kernel still caches its root."""

import os
import signal
import time

from conftest import needs_fuse
from fusevol.fs import mount


@needs_fuse
def test_clear_dead_mount_despite_cached_attributes(mounts, store_path):
    mp = mounts.mount("vol")
    os.stat(mp)  # the root's attributes are now cached by the kernel
    assert mount.clear_dead_mount(mp) is False  # alive: left alone
    pid = mount.worker_of(store_path, mountpoint=mp).pid
    os.kill(pid, signal.SIGKILL)
    while mount.pid_alive(pid):
        time.sleep(0.01)
    assert mount.clear_dead_mount(mp) is True
    assert not mount.is_mountpoint(mp)
    mounts.active.remove(mp)
