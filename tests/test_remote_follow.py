"""Volumes created with -o remote=NAME follow their service between hosts:
the Docker handlers of two stores (two hosts) with real mounts and a real S3
server. One host at a time holds the volume's lease; each first mount gets
the newest data, each last unmount pushes it."""

import hashlib
import os

import pytest

from conftest import needs_fuse
from fusevol.errors import Busy
from fusevol.plugin.protocol import Driver
from fusevol.plugin.supervisor import Supervisor
from fusevol.store import Store
from plugin_daemon import stop_driver_mounts
from remote_helpers import Host, keys

MiB = 1 << 20


def _driver(host: Host) -> Driver:
    return Driver(Supervisor(host.store))


def _cleanup(driver: Driver) -> None:
    driver.sup.follower.close()
    stop_driver_mounts(driver.store.path, driver.sup.mnt_dir)
    Store._instances.pop(driver.store.path).close()


def _two_hosts(ceph, tmp_path, monkeypatch) -> tuple[str, Host, Host]:
    """A new bucket, and two stores (hosts a and b) with it as remote "r"."""
    from remote_helpers import new_bucket

    bucket = new_bucket()
    a, b = Host(ceph, str(tmp_path / "a")), Host(ceph, str(tmp_path / "b"))
    a.add_remote(bucket)
    b.add_remote(bucket, create=False)
    for key, value in a.env.items():
        monkeypatch.setenv(key, value)
    return bucket, a, b


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@needs_fuse
def test_a_volume_follows_its_service_from_host_to_host(ceph, tmp_path, monkeypatch):
    bucket, a, b = _two_hosts(ceph, tmp_path, monkeypatch)
    one, two = _driver(a), _driver(b)
    try:
        opts = {"remote": "r"}
        one.create({"Name": "app", "Opts": opts})
        path = one.mount({"Name": "app", "ID": "c1"})["Mountpoint"]
        with open(os.path.join(path, "data"), "wb") as f:
            f.write(os.urandom(2 * MiB))
        first = _digest(os.path.join(path, "data"))
        assert list(keys(ceph, bucket, "fv/leases/")) == ["fv/leases/app"]

        # Host b makes the volume while a still has it mounted: it gets what
        # the remote has (nothing yet), and cannot mount it (a holds the lease).
        two.create({"Name": "app", "Opts": opts})
        with pytest.raises(Busy, match="volume app is in use on .* lease on remote r"):
            two.mount({"Name": "app", "ID": "c2"})

        one.unmount({"Name": "app", "ID": "c1"})
        one.sup.follower.wait("app")  # the snapshot and push after the last unmount
        assert [s["volume"] for s in a.json("remote", "snapshots", "r", "app")] == ["app"]

        # Now b's first mount takes the lease and pulls a's data first.
        path = two.mount({"Name": "app", "ID": "c2"})["Mountpoint"]
        assert _digest(os.path.join(path, "data")) == first
        with pytest.raises(Busy):
            one.mount({"Name": "app", "ID": "c3"})
        with open(os.path.join(path, "data"), "r+b") as f:
            f.write(b"changed on b")
        second = _digest(os.path.join(path, "data"))
        two.unmount({"Name": "app", "ID": "c2"})
        two.sup.follower.wait("app")

        # Back on a: it catches up with b's change before mounting.
        path = one.mount({"Name": "app", "ID": "c4"})["Mountpoint"]
        assert _digest(os.path.join(path, "data")) == second
        one.unmount({"Name": "app", "ID": "c4"})
        one.sup.follower.wait("app")
        assert len(a.json("remote", "snapshots", "r", "app")) == 2  # nothing new: no third
    finally:
        _cleanup(one)
        _cleanup(two)


@needs_fuse
def test_a_first_mount_refuses_at_once_when_both_copies_changed(ceph, tmp_path, monkeypatch):
    """Host b changed its copy by hand (nothing pushed it) while host a pushed
    a newer snapshot: b's Mount says the copies diverged before downloading
    anything (it used to download the whole snapshot, then receive refused)."""
    bucket, a, b = _two_hosts(ceph, tmp_path, monkeypatch)
    one, two = _driver(a), _driver(b)

    def write_on(driver: Driver, mount_id: str, data: bytes) -> None:
        path = driver.mount({"Name": "app", "ID": mount_id})["Mountpoint"]
        with open(os.path.join(path, "data"), "wb") as f:
            f.write(data)
        driver.unmount({"Name": "app", "ID": mount_id})
        driver.sup.follower.wait("app")

    try:
        opts = {"remote": "r"}
        one.create({"Name": "app", "Opts": opts})
        write_on(one, "c1", b"first")
        two.create({"Name": "app", "Opts": opts})  # starts as a's snapshot
        two.mount({"Name": "app", "ID": "c2"})
        two.unmount({"Name": "app", "ID": "c2"})
        two.sup.follower.wait("app")
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        b.run("mount", "app", str(mnt), "--background")
        (mnt / "data").write_bytes(b"changed on b by hand")
        b.run("umount", str(mnt))
        write_on(one, "c3", os.urandom(4 * MiB))

        with pytest.raises(Busy) as refused:
            two.mount({"Name": "app", "ID": "c4"})
        assert refused.value.reason == "diverged", refused.value
        assert "the copies diverged" in str(refused.value)
        assert two._pulling("app") is None  # no pull was started
    finally:
        _cleanup(one)
        _cleanup(two)
