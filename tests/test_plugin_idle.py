"""A worker kept idle after the last Unmount: `docker run --rm` mounts and
unmounts a volume per container, and the next container must not wait for a
new worker. Through a real `fusevol serve` and its socket, as dockerd talks."""

import os
import signal
import time

import pytest

from conftest import needs_fuse, run_cli
from fusevol.fs import mount, registry
from plugin_daemon import PluginDaemon, mounts_under

IDLE = 2.0  # --idle-worker-time of these daemons


@pytest.fixture
def daemon(tmp_path):
    d = PluginDaemon(str(tmp_path / "store"), str(tmp_path / "run" / "fv-idle.sock"),
                     str(tmp_path / "serve.log"), "--idle-worker-time", str(IDLE))
    d.start()
    yield d
    d.cleanup()


def ok(reply):
    status, body = reply
    assert status == 200, body
    return body


def pids(d: PluginDaemon) -> list[int]:
    return [w.pid for w in d.workers()]


def wait_no_worker(d: PluginDaemon, within: float) -> float:
    started = time.monotonic()
    while d.workers() or mounts_under(os.path.join(d.store, "mnt")):
        assert time.monotonic() - started < within, (d.workers(), d.log()[-2000:])
        time.sleep(0.05)
    return time.monotonic() - started


@needs_fuse
def test_the_next_mount_adopts_the_idle_worker_which_stops_in_time(daemon):
    ok(daemon.call("/VolumeDriver.Create", {"Name": "vol"}))
    path = ok(daemon.call("/VolumeDriver.Mount", {"Name": "vol", "ID": "c1"}))["Mountpoint"]
    [first] = pids(daemon)
    with open(os.path.join(path, "f"), "w") as f:
        f.write("kept")
    ok(daemon.call("/VolumeDriver.Unmount", {"Name": "vol", "ID": "c1"}))
    assert pids(daemon) == [first] and mount.is_mountpoint(path)
    assert "Mountpoint" not in ok(daemon.call("/VolumeDriver.Get", {"Name": "vol"}))["Volume"]
    # What was written before the Unmount is stored by then.
    assert ok(daemon.call("/VolumeDriver.Get", {"Name": "vol"}))["Volume"]["Status"][
        "logical_bytes"] == 4

    assert ok(daemon.call("/VolumeDriver.Mount", {"Name": "vol", "ID": "c2"}))["Mountpoint"] == path
    assert pids(daemon) == [first]
    time.sleep(IDLE + 1)  # in use: kept however long
    assert pids(daemon) == [first]
    ok(daemon.call("/VolumeDriver.Unmount", {"Name": "vol", "ID": "c2"}))
    assert wait_no_worker(daemon, IDLE + 10) > IDLE - 0.5
    assert "Traceback" not in daemon.log()


@needs_fuse
def test_what_an_idle_worker_held_is_stored_when_the_unmount_returns(daemon):
    ok(daemon.call("/VolumeDriver.Create", {"Name": "vol"}))
    path = ok(daemon.call("/VolumeDriver.Mount", {"Name": "vol", "ID": "c1"}))["Mountpoint"]
    # A file still open on the host (the container is gone): what was written to
    # it is held by the kernel and the worker, and stored by nothing else.
    held = open(os.path.join(path, "f"), "wb")
    held.write(b"x" * 300_000)
    held.flush()
    ok(daemon.call("/VolumeDriver.Unmount", {"Name": "vol", "ID": "c1"}))
    [pid] = pids(daemon)
    os.kill(pid, signal.SIGKILL)  # it had no chance to store anything more
    registry.wait_exit(pid, 10)
    with pytest.raises(OSError):
        held.close()
    path = ok(daemon.call("/VolumeDriver.Mount", {"Name": "vol", "ID": "c2"}))["Mountpoint"]
    with open(os.path.join(path, "f"), "rb") as f:
        assert f.read() == b"x" * 300_000
    ok(daemon.call("/VolumeDriver.Unmount", {"Name": "vol", "ID": "c2"}))


@needs_fuse
def test_the_cli_waits_for_an_idle_worker_instead_of_refusing(daemon):
    ok(daemon.call("/VolumeDriver.Create", {"Name": "vol"}))
    path = ok(daemon.call("/VolumeDriver.Mount", {"Name": "vol", "ID": "c1"}))["Mountpoint"]
    with open(os.path.join(path, "f"), "w") as f:
        f.write("before")
    run_cli(daemon.store, "snapshot", "create", "vol@s")
    with open(os.path.join(path, "f"), "w") as f:
        f.write("after")
    ok(daemon.call("/VolumeDriver.Unmount", {"Name": "vol", "ID": "c1"}))
    assert pids(daemon)
    started = time.monotonic()
    run_cli(daemon.store, "rollback", "vol@s")  # no container left: allowed
    assert time.monotonic() - started < IDLE + 10
    assert daemon.workers() == []
    path = ok(daemon.call("/VolumeDriver.Mount", {"Name": "vol", "ID": "c2"}))["Mountpoint"]
    with open(os.path.join(path, "f")) as f:
        assert f.read() == "before"
    run_cli(daemon.store, "snapshot", "rm", "vol@s")
    ok(daemon.call("/VolumeDriver.Unmount", {"Name": "vol", "ID": "c2"}))
    ok(daemon.call("/VolumeDriver.Remove", {"Name": "vol"}))  # at once, idle worker or not
    assert daemon.workers() == []


@needs_fuse
def test_a_stopped_daemon_leaves_only_the_workers_in_use(daemon):
    for name in ("used", "idle"):
        ok(daemon.call("/VolumeDriver.Create", {"Name": name}))
        ok(daemon.call("/VolumeDriver.Mount", {"Name": name, "ID": "c1"}))
    ok(daemon.call("/VolumeDriver.Unmount", {"Name": "idle", "ID": "c1"}))
    assert sorted(w.volume for w in daemon.workers()) == ["idle", "used"]
    daemon.kill(signal.SIGTERM)
    assert [w.volume for w in daemon.workers()] == ["used"]
    daemon.start()  # adopts the one in use
    path = ok(daemon.call("/VolumeDriver.Mount", {"Name": "used", "ID": "c2"}))["Mountpoint"]
    assert os.listdir(path) == []
    ok(daemon.call("/VolumeDriver.Unmount", {"Name": "used", "ID": "c1"}))
    ok(daemon.call("/VolumeDriver.Unmount", {"Name": "used", "ID": "c2"}))
    wait_no_worker(daemon, IDLE + 10)
