"""A mount whose worker died is recognised and detached, even while the kernel still caches its root."""

import os
import signal
import subprocess
import time

from conftest import needs_fuse
from fusevol.fs import mount, registry
from plugin_daemon import PluginDaemon


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


@needs_fuse
def test_a_mount_is_not_handed_the_dead_mount_of_a_worker_that_still_seems_alive(tmp_path):
    """A worker killed a moment ago can still look alive to the registry (its
    last threads, ending, hold its entry's lock). The next Mount must not hand
    its dead mount to a container ("Transport endpoint is not connected") but
    detach it, wait for that worker to end and serve the volume anew."""
    d = PluginDaemon(str(tmp_path / "store"), str(tmp_path / "run" / "fv-dead.sock"),
                     str(tmp_path / "serve.log"))
    d.start()
    try:
        assert d.call("/VolumeDriver.Create", {"Name": "vol"})[0] == 200
        status, reply = d.call("/VolumeDriver.Mount", {"Name": "vol", "ID": "c1"})
        assert status == 200, reply
        path = reply["Mountpoint"]
        [worker] = d.workers()
        os.kill(worker.pid, signal.SIGKILL)
        while mount.pid_alive(worker.pid):
            time.sleep(0.01)
        # The registry as it was for that moment: a live process's locked entry for this mount.
        ending = subprocess.Popen(["sleep", "1"])
        held = registry.register(d.store, worker.replace(pid=ending.pid))
        try:
            status, reply = d.call("/VolumeDriver.Mount", {"Name": "vol", "ID": "c2"})
            assert status == 200, reply
            assert reply["Mountpoint"] == path
            assert os.listdir(path) == []  # served, not a dead mount
            assert [w.pid for w in d.workers()] not in ([], [worker.pid], [ending.pid])
        finally:
            held.close()
            ending.wait()
    finally:
        d.cleanup()
