"""Volumes with `xattr=off`: no extended attributes (EOPNOTSUPP, as on a filesystem
without them), so the kernel stops asking the worker for security.capability before
every write(2). Through real mounts; the worker's own request counters say what
reached it."""

import errno
import io
import json
import os
import shutil
import subprocess
import tarfile
import time

import pytest

from conftest import needs_fuse, run_cli

pytestmark = needs_fuse

WRITES = 300
COUNTED = {"FUSEVOL_METRICS_INTERVAL": "0.1"}  # the worker publishes its counters often


def inspect(store_path: str, name: str) -> dict:
    return json.loads(run_cli(store_path, "volume", "inspect", name).stdout)


def requests_after(store_path: str, name: str, mountpoint: str) -> dict:
    """The worker's request counts, once it published everything done so far."""
    since = time.time()
    os.stat(mountpoint)  # a request after the rest: the next record counts them all
    path = os.path.join(store_path, "run", "metrics", f"{name}.json")
    deadline = time.monotonic() + 30
    while True:
        try:
            with open(path) as f:
                record = json.load(f)
            if record["time"] > since:
                return {op: v["count"] for op, v in record["ops"].items()}
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline, "the worker published no counters"
        time.sleep(0.05)


def random_writes(path: str, count: int = WRITES) -> bytes:
    """count write(2)s of 4 KiB at scattered offsets of a 1 MiB file, then fsync;
    what the file then holds."""
    data = bytearray(1 << 20)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for i in range(count):
            offset = (i * 97 % 256) * 4096
            block = bytes([i % 251 + 1]) * 4096
            os.pwrite(fd, block, offset)
            data[offset:offset + 4096] = block
        os.fsync(fd)
    finally:
        os.close(fd)
    return bytes(data)


def refused(call, *args) -> int:
    with pytest.raises(OSError) as info:
        call(*args)
    return info.value.errno


def test_an_xattr_off_volume_has_no_xattrs_and_writes_without_asking(mounts, store_path):
    mounts.create("bare", "xattr=off")
    assert inspect(store_path, "bare")["xattr"] is False
    mp = mounts.mount("bare", create=False, env=COUNTED)
    f, d = os.path.join(mp, "f"), os.path.join(mp, "d")
    expected = random_writes(f)
    os.mkdir(d)
    with open(f, "rb") as fh:
        assert fh.read() == expected

    # As on a filesystem without xattrs, whatever the name, file or folder.
    for path in (f, d, mp):
        assert refused(os.getxattr, path, "user.a") == errno.EOPNOTSUPP
        assert refused(os.setxattr, path, "user.a", b"1") == errno.EOPNOTSUPP
        assert refused(os.listxattr, path) == errno.EOPNOTSUPP
        assert refused(os.removexattr, path, "user.a") == errno.EOPNOTSUPP
    assert refused(os.getxattr, f, "security.capability") == errno.EOPNOTSUPP
    # POSIX ACLs go with them (even one that says no more than a mode).
    mode_only = bytes.fromhex("02000000" "01000600ffffffff" "04000400ffffffff" "20000000ffffffff")
    assert refused(os.setxattr, f, "system.posix_acl_access", mode_only) == errno.EOPNOTSUPP

    counts = requests_after(store_path, "bare", mp)
    # The first getxattr was answered ENOSYS; the kernel asked nothing more, for
    # none of the writes nor the calls above.
    assert counts.get("getxattr", 0) <= 1, counts
    assert counts.get("setxattr", 0) <= 1 and counts.get("listxattr", 0) <= 1, counts

    mounts.umount(mp)
    mp = mounts.mount("bare", create=False)
    with open(os.path.join(mp, "f"), "rb") as fh:
        assert fh.read() == expected


@pytest.mark.skipif(not shutil.which("setfattr"), reason="setfattr/getfattr (package attr) missing")
def test_attr_tools_say_not_supported(mounts):
    mounts.create("bare", "xattr=off")
    mp = mounts.mount("bare", create=False)
    f = os.path.join(mp, "f")
    with open(f, "w") as fh:
        fh.write("x")
    for cmd in (["setfattr", "-n", "user.a", "-v", "1", f], ["getfattr", "-d", f],
                ["getfattr", "-n", "user.a", f], ["setfattr", "-x", "user.a", f]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode != 0 and "Operation not supported" in proc.stderr, (cmd, proc)


def test_a_default_volume_keeps_its_xattrs_and_is_asked_before_each_write(mounts, store_path):
    mp = mounts.mount("full", env=COUNTED)
    assert inspect(store_path, "full")["xattr"] is True
    f = os.path.join(mp, "f")
    random_writes(f)
    counts = requests_after(store_path, "full", mp)
    assert counts["getxattr"] >= WRITES, counts  # security.capability, before every write(2)
    os.setxattr(f, "user.kept", b"yes")
    mounts.umount(mp)
    mp = mounts.mount("full", create=False)
    assert os.getxattr(os.path.join(mp, "f"), "user.kept") == b"yes"
    assert os.listxattr(os.path.join(mp, "f")) == ["user.kept"]


def test_a_snapshot_of_a_mounted_xattr_off_volume_has_what_was_written(mounts, store_path):
    # The CLI's flush reaches a worker that answers no getxattr.
    mounts.create("bare", "xattr=off")
    mp = mounts.mount("bare", create=False)
    data = os.urandom(3 << 20)
    with open(os.path.join(mp, "open"), "wb") as fh:
        fh.write(data)
        fh.flush()  # in the kernel's pages or the worker's buffers; the file stays open
        run_cli(store_path, "snapshot", "create", "bare@s")
    tar = run_cli(store_path, "export", "bare@s").stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        assert t.extractfile("./open").read() == data


def test_clones_keep_the_stored_xattrs_out_of_reach(mounts, store_path):
    mp = mounts.mount("src")
    f = os.path.join(mp, "f")
    open(f, "w").close()
    os.setxattr(f, "user.a", b"stored")
    mounts.umount(mp)
    run_cli(store_path, "snapshot", "create", "src@s")

    run_cli(store_path, "clone", "src@s", "bare", "-o", "xattr=off")
    mp = mounts.mount("bare", create=False)
    assert refused(os.getxattr, os.path.join(mp, "f"), "user.a") == errno.EOPNOTSUPP
    mounts.umount(mp)
    # A clone keeps its source's xattr=off unless told otherwise...
    run_cli(store_path, "snapshot", "create", "bare@s")
    run_cli(store_path, "clone", "bare@s", "bare2")
    assert inspect(store_path, "bare2")["xattr"] is False
    # ...and the attributes were kept all along: a clone with xattr=on shows them.
    run_cli(store_path, "clone", "bare@s", "full", "-o", "xattr=on")
    mp = mounts.mount("full", create=False)
    assert os.getxattr(os.path.join(mp, "f"), "user.a") == b"stored"


def test_bad_values_are_refused(store_path):
    for value in ("maybe", "", "sa"):
        proc = run_cli(store_path, "volume", "create", "vol", "-o", f"xattr={value}", check=False)
        assert proc.returncode == 4, proc
        assert f"option xattr={value!r}: use on or off" in proc.stderr.decode()
    run_cli(store_path, "volume", "create", "src")
    proc = run_cli(store_path, "volume", "create", "view", "-o", "source=src", "-o", "subpath=d",
                   "-o", "xattr=off", check=False)
    assert proc.returncode == 4 and "xattr" in proc.stderr.decode()
    assert "vol" not in run_cli(store_path, "volume", "ls").stdout.decode().split()
