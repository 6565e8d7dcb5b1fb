"""Crash safety, deduplication and a full disk, on real mounts and real LMDB files."""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time


from conftest import needs_fuse, run_cli
from fusevol.fs.registry import worker_of

RECORD = 64 * 1024

# Appends numbered records; after each fsync it reports the count on stdout.
WRITER = r"""
import os, sys
path, every = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
i = 0
while True:
    os.write(fd, i.to_bytes(8, "big") * (%d // 8))
    i += 1
    if i %% every == 0:
        os.fsync(fd)
        print(i, flush=True)
""" % RECORD


def df(store: str) -> dict:
    return json.loads(run_cli(store, "df", "--json").stdout)


@needs_fuse
def test_sigkill_keeps_every_fsynced_byte(mounts, store_path):
    mp = mounts.mount("crash")
    target = os.path.join(mp, "stream")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, target, "7"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    synced = 0
    while synced < 300:  # about 20 MiB acknowledged by fsync
        line = writer.stdout.readline()
        assert line, "writer died before the crash"
        synced = int(line)
    worker = worker_of(store_path, volume="crash")
    os.kill(worker.pid, signal.SIGKILL)  # mid-stream: the writer never stops on its own
    writer.kill()
    writer.wait()
    for line in writer.stdout:  # fsyncs that returned before the kill count too
        synced = max(synced, int(line))

    deadline = time.time() + 10
    while os.path.exists(f"/proc/{worker.pid}") and time.time() < deadline:
        time.sleep(0.05)
    mounts.umount(mp)  # detaches the dead mount
    mp = mounts.mount("crash", create=False)
    with open(os.path.join(mp, "stream"), "rb") as f:
        data = f.read()
    assert len(data) >= synced * RECORD
    for i in range(synced):
        record = data[i * RECORD:(i + 1) * RECORD]
        assert record == i.to_bytes(8, "big") * (RECORD // 8), f"record {i} damaged"
    # The store opened cleanly and takes writes again (the dead writer's lock was released).
    with open(os.path.join(mp, "after"), "wb") as f:
        f.write(b"alive")
        os.fsync(f.fileno())
    assert df(store_path)["logical_bytes"] >= synced * RECORD


def _kill_worker_and_remount(mounts, store_path, volume: str, mp: str) -> str:
    worker = worker_of(store_path, volume=volume)
    os.kill(worker.pid, signal.SIGKILL)
    deadline = time.time() + 10
    while os.path.exists(f"/proc/{worker.pid}") and time.time() < deadline:
        time.sleep(0.05)
    mounts.umount(mp)  # detaches the dead mount
    return mounts.mount(volume, create=False)


@needs_fuse
def test_sigkill_keeps_times_set_before_an_fsync(mounts, store_path):
    """Times set on a file, by a program (utimensat, open or closed) or by the
    kernel (the mtime and ctime its writeback cache keeps after writes), then
    made durable by an fsync of the file, survive the worker's death."""
    mp = mounts.mount("times")
    for i in range(30):
        path = os.path.join(mp, f"f{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"x" * (100 + i))
            if i % 3 == 0:  # set while open
                os.utime(fd, ns=(10**18 + i, 2 * 10**18 + i))
            os.fsync(fd)
        finally:
            os.close(fd)
        if i % 3 == 1:  # set on the closed file, then fsync'd
            os.utime(path, ns=(3 * 10**18 + i, 4 * 10**18 + i))
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    shown = {name: (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
             for name in os.listdir(mp) for st in [os.stat(os.path.join(mp, name))]}
    assert shown["f1"][1] == 4 * 10**18 + 1
    mp = _kill_worker_and_remount(mounts, store_path, "times", mp)
    after = {name: (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
             for name in os.listdir(mp) for st in [os.stat(os.path.join(mp, name))]}
    assert after == shown


@needs_fuse
def test_same_data_in_two_volumes_is_stored_once(mounts, store_path, tmp_path):
    size = 256 << 20
    source = tmp_path / "random"
    with open(source, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    run_cli(store_path, "volume", "ls")  # creates the empty store
    empty = df(store_path)["disk_bytes"]

    for name in ("one", "two"):
        mp = mounts.mount(name)
        subprocess.run(["cp", str(source), os.path.join(mp, "copy")], check=True)
        mounts.umount(mp)

    after = df(store_path)
    assert after["logical_bytes"] == 2 * size
    assert after["unique_bytes"] == size
    assert after["dedup_ratio"] == 2.0
    growth = after["disk_bytes"] - empty
    assert growth <= 1.05 * size, f"store grew {growth / size:.3f}x one copy"


@needs_fuse
def test_full_disk_gives_enospc_and_keeps_the_store(tmp_path, mounts):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(small)], check=True)
    try:
        store = str(small / "store")
        from conftest import Mounts
        m = Mounts(store, str(tmp_path / "mnt-small"))
        try:
            mp = m.mount("full")
            with open(os.path.join(mp, "kept"), "wb") as f:
                f.write(b"k" * 4096)
                os.fsync(f.fileno())
            failure = None
            try:
                with open(os.path.join(mp, "filler"), "wb") as f:
                    for _ in range(400):
                        f.write(os.urandom(1 << 20))
                    os.fsync(f.fileno())
            except OSError as e:
                failure = e
            assert failure is not None and failure.errno == errno.ENOSPC, failure
            # The volume still serves, keeps what was synced, and writes again once space is freed.
            with open(os.path.join(mp, "kept"), "rb") as f:
                assert f.read() == b"k" * 4096
            os.unlink(os.path.join(mp, "filler"))
            with open(os.path.join(mp, "again"), "wb") as f:
                f.write(os.urandom(8 << 20))
                os.fsync(f.fileno())
            m.umount(mp)
            info = df(store)
            assert info["logical_bytes"] == 4096 + (8 << 20)
        finally:
            m.cleanup()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@needs_fuse
def test_sigkill_keeps_modes_and_owners_set_before_an_fsync(mounts, store_path):
    """chmod and chown (tar's fchown, fchmod and futimens on each file it
    extracts), open or closed, then an fsync of the file: they survive the
    worker's death, and chown of a setuid or setgid file drops those bits as
    on ext4 (setgid only with group execute: without it the bit marks
    mandatory locking)."""
    mp = mounts.mount("owners")
    modes = (0o4755, 0o6755, 0o2745, 0o1777, 0o600)
    for i in range(20):  # made durable first: what follows is all an fsync has to cover
        with open(os.path.join(mp, f"f{i}"), "wb") as f:
            f.write(b"x" * (100 + i))
            os.fsync(f.fileno())
    for i in range(20):
        path = os.path.join(mp, f"f{i}")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"y" * i)  # bytes the intent log could take, were the change times alone
            if i % 2 == 0:  # set while open, as tar does
                os.fchmod(fd, modes[i % 5])
                os.fchown(fd, 1000 + i, 2000 + i)
                os.utime(fd, ns=(10**18 + i, 2 * 10**18 + i))
            else:  # set on the file by its name
                os.chmod(path, modes[i % 5])
                os.chown(path, 1000 + i, -1)
            os.fsync(fd)
        finally:
            os.close(fd)
    shown = {name: (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
             for name in os.listdir(mp) for st in [os.stat(os.path.join(mp, name))]}
    # chmod of a file's own bits; chown after it drops setuid, and setgid
    # when group execute is set.
    assert stat.S_IMODE(shown["f0"][0]) == 0o755      # 0o4755, then chown
    assert stat.S_IMODE(shown["f1"][0]) == 0o755      # 0o6755, then chown
    assert stat.S_IMODE(shown["f2"][0]) == 0o2745     # setgid without group x: kept
    assert stat.S_IMODE(shown["f3"][0]) == 0o1777     # sticky: kept
    assert stat.S_IMODE(shown["f4"][0]) == 0o600
    assert shown["f2"][1:3] == (1002, 2002) and shown["f3"][1:3] == (1003, 0)
    assert all(stat.S_ISREG(mode) for mode, *_ in shown.values())
    mp = _kill_worker_and_remount(mounts, store_path, "owners", mp)
    after = {name: (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
             for name in os.listdir(mp) for st in [os.stat(os.path.join(mp, name))]}
    assert after == shown
