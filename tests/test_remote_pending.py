"""A volume that follows a remote (-o remote=NAME) owes the remote its data
from its first mount until the push after its last unmount has landed. That
debt outlives the daemon: a daemon killed in the middle of that push pushes
when it starts again, so no snapshot is silently left unpushed."""

import hashlib
import os
import shutil
import tempfile
import time

import pytest

from conftest import needs_fuse
from plugin_daemon import PluginDaemon
from remote_helpers import Host, keys, new_bucket, s3_client, volume_digests

MiB = 1 << 20
# Many PUTs, at 16 MiB/s: a push of 64 MiB long enough to cut (about 4 s) on any machine.
SMALL_PACKS = {"FUSEVOL_PACK_SIZE": str(256 << 10), "FUSEVOL_PUSH_LIMIT": "16M"}


def _wait_for(what: str, check, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def short_dir():
    path = tempfile.mkdtemp(prefix="fvp-", dir="/tmp")  # a unix socket path is short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_fuse
def test_a_push_cut_short_by_a_killed_daemon_is_done_when_it_starts_again(
        ceph, tmp_path, short_dir, monkeypatch):
    bucket = new_bucket()
    a, b = Host(ceph, str(tmp_path / "a")), Host(ceph, str(tmp_path / "b"))
    a.add_remote(bucket)
    b.add_remote(bucket, create=False)
    for key, value in {**a.env, **SMALL_PACKS}.items():
        monkeypatch.setenv(key, value)  # the daemon inherits them
    daemon = PluginDaemon(a.store, os.path.join(short_dir, "a.sock"), str(tmp_path / "serve.log"))
    daemon.start()
    try:
        assert daemon.call("/VolumeDriver.Create", {"Name": "app", "Opts": {"remote": "r"}})[0] == 200
        status, reply = daemon.call("/VolumeDriver.Mount", {"Name": "app", "ID": "c1"})
        assert status == 200, reply
        data = os.urandom(64 * MiB)
        with open(os.path.join(reply["Mountpoint"], "data"), "wb") as f:
            f.write(data)
        assert daemon.call("/VolumeDriver.Unmount", {"Name": "app", "ID": "c1"})[0] == 200

        # The push after the last unmount is under way: kill the daemon.
        _wait_for("packs of the push", lambda: sum(
            k.startswith("fv/data/") for k in keys(ceph, bucket, "fv/")) >= 4)
        daemon.kill()
        assert not any(k.startswith("fv/snapshots/app/") for k in keys(ceph, bucket, "fv/")), \
            "the push ended before the daemon was killed: nothing left to test"

        daemon.start()
        _wait_for("the push done by the restarted daemon", lambda: any(
            k.startswith("fv/snapshots/app/") for k in keys(ceph, bucket, "fv/")), timeout=60)
        _wait_for("the lease released", lambda: b'"released"' in s3_client(ceph).get_object(
            Bucket=bucket, Key="fv/leases/app")["Body"].read(), timeout=30)
        (snap,) = b.json("remote", "snapshots", "r", "app")
        b.run("pull", "r", f"app@{snap['name']}")
        assert volume_digests(b.store, "app")["data"] == hashlib.sha256(data).hexdigest()
    finally:
        daemon.cleanup()


@needs_fuse
def test_a_volume_mounted_across_a_daemon_restart_is_pushed_at_its_last_unmount(
        ceph, tmp_path, short_dir, monkeypatch):
    bucket = new_bucket()
    a = Host(ceph, str(tmp_path / "a"))
    a.add_remote(bucket)
    for key, value in a.env.items():
        monkeypatch.setenv(key, value)
    daemon = PluginDaemon(a.store, os.path.join(short_dir, "a.sock"), str(tmp_path / "serve.log"))
    daemon.start()
    try:
        assert daemon.call("/VolumeDriver.Create", {"Name": "app", "Opts": {"remote": "r"}})[0] == 200
        status, reply = daemon.call("/VolumeDriver.Mount", {"Name": "app", "ID": "c1"})
        assert status == 200, reply
        daemon.kill()  # its worker keeps serving the mount
        daemon.start()
        data = os.urandom(3 * MiB)
        with open(os.path.join(reply["Mountpoint"], "data"), "wb") as f:
            f.write(data)
        assert daemon.call("/VolumeDriver.Unmount", {"Name": "app", "ID": "c1"})[0] == 200
        _wait_for("the push after the last unmount", lambda: any(
            k.startswith("fv/snapshots/app/") for k in keys(ceph, bucket, "fv/")), timeout=60)
        (snap,) = a.json("remote", "snapshots", "r", "app")
        assert volume_digests(a.store, f"app@{snap['name']}")["data"] == \
            hashlib.sha256(data).hexdigest()
    finally:
        daemon.cleanup()
