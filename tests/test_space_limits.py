"""A full disk and a quota, pushed by a writer that does not stop at the first error.

What a program saw acknowledged is what a remount shows: every byte of a
write(2) that returned when write(2) reaches the worker (a volume with a quota,
or no writeback cache), and everything a successful fsync covered otherwise.
The worker does not buffer what it cannot store, and a stored file is always a
prefix of what was written, never one with a hole inside.
"""

import ctypes
import errno
import json
import os
import random
import signal
import subprocess
import time

import pytest

from conftest import Mounts, needs_fuse, run_cli
from fusevol.fs import registry
from small_disks import ext4_loop, needs_loop

MiB = 1 << 20


def _rss_anon_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def _push(path: str, total_mib: int, seed: int, then_tries: int = 20):
    """Write seeded 1 MiB records with os.write; keep trying after the first error.

    Returns (acknowledged bytes, errno of the first failure or None, data written).
    """
    rng = random.Random(seed)
    data = bytearray()
    acked = 0
    first_error = None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(total_mib):
            record = rng.randbytes(MiB)
            data += record
            try:
                n = os.write(fd, record)
            except OSError as e:
                first_error = first_error or e.errno
                break
            assert n == MiB, n  # a short write would be a partial acknowledgement
            acked += n
        if first_error is not None:
            # A writer that does not stop (dd with conv=noerror, a logger): every
            # further write must fail too, so nothing lands after a gap.
            for _ in range(then_tries):
                with pytest.raises(OSError) as failed:
                    os.write(fd, rng.randbytes(MiB))
                assert failed.value.errno == first_error
    finally:
        try:
            os.close(fd)
        except OSError as e:
            first_error = first_error or e.errno
    return acked, first_error, bytes(data)


def _worker_pid(store: str, volume: str) -> int:
    return registry.worker_of(store, volume=volume).pid


@pytest.fixture
def small_disk(tmp_path):
    """A 200 MiB tmpfs for a store: a disk that fills."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(small)], check=True)
    yield str(small)
    subprocess.run(["umount", "-l", str(small)], check=False)


def _fill(path: str, pid: int, seed: int):
    """Write seeded 1 MiB records, fsync every 8, until write or fsync fails;
    then go on writing as `dd conv=noerror` would. Returns (bytes covered by
    the last fsync that succeeded, errno of the first failure, data written,
    peak RssAnon of the worker in KiB)."""
    rng = random.Random(seed)
    data = bytearray()
    synced, failure, peak = 0, None, 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for n in range(1, 1000):
            record = rng.randbytes(MiB)
            try:
                os.write(fd, record)
                data += record
                if n % 8 == 0:
                    os.fsync(fd)
                    synced = len(data)
            except OSError as e:
                failure = e.errno
                break
        for _ in range(50):  # a writer that does not stop: memory stays bounded
            try:
                os.write(fd, rng.randbytes(MiB))
            except OSError:
                pass
            peak = max(peak, _rss_anon_kib(pid))
        with pytest.raises(OSError) as late:  # the error is not forgotten
            os.fsync(fd)
        assert late.value.errno == failure
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    return synced, failure, bytes(data), peak


@needs_fuse
def test_full_disk_gives_enospc_keeps_what_was_synced_and_stores_a_prefix(small_disk, tmp_path):
    store = os.path.join(small_disk, "store")
    m = Mounts(store, str(tmp_path / "mnt"))
    try:
        mp = m.mount("full")
        path = os.path.join(mp, "fill")
        synced, failure, data, peak = _fill(path, _worker_pid(store, "full"), seed=7)
        # With the writeback cache, write(2) fills the page cache and the
        # refusal comes at the next fsync (at the latest), as ENOSPC.
        assert failure == errno.ENOSPC, errno.errorcode.get(failure, failure)
        assert 32 * MiB <= synced < 200 * MiB, synced
        # The worker holds no more than its bounded buffers, full disk or not.
        assert peak < 400 * 1024, f"worker RssAnon {peak} KiB"
        m.umount(mp)
        mp = m.mount("full")
        with open(os.path.join(mp, "fill"), "rb") as f:
            stored = f.read()
        assert synced <= len(stored) <= len(data)
        assert stored == data[:len(stored)], "the stored file is not a prefix of what was written"
    finally:
        m.cleanup()


def _sync_file_range(fd: int, offset: int, length: int) -> None:
    """Write out only these pages of the page cache, and wait for them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    wait_before, write, wait_after = 1, 2, 4
    if libc.sync_file_range(fd, offset, length, wait_before | write | wait_after) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@needs_fuse
def test_a_range_refused_after_a_later_one_was_stored_ends_the_file_there(small_disk, tmp_path):
    """The kernel's writeback sends a file's ranges out of order. Here the
    later range goes first and is stored, then the disk fills and the earlier
    range is refused: the stored file must end where the refused range starts,
    not keep the later range behind a hole of zeros."""
    store = os.path.join(small_disk, "store")
    m = Mounts(store, str(tmp_path / "mnt"))
    filler = os.path.join(small_disk, "filler")
    try:
        mp = m.mount("late")
        data = random.Random(5).randbytes(4 * MiB)
        fd = os.open(os.path.join(mp, "f"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data[:MiB])
            os.fsync(fd)
            os.write(fd, data[MiB:])
            _sync_file_range(fd, 2 * MiB, 2 * MiB)
            os.getxattr(mp, "trusted.fusevol.flush")  # the worker stores what it holds
            st = os.statvfs(small_disk)
            with open(filler, "wb") as f:  # leave less than the store's reserve
                os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - 16 * MiB)
            with pytest.raises(OSError) as refused:
                os.fsync(fd)  # sends the range 1-2 MiB
            assert refused.value.errno == errno.ENOSPC
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
            if os.path.exists(filler):
                os.unlink(filler)
        m.umount(mp)
        mp = m.mount("late")
        with open(os.path.join(mp, "f"), "rb") as f:
            stored = f.read()
        assert MiB <= len(stored) <= len(data), len(stored)
        assert stored == data[:len(stored)], "the stored file is not a prefix of what was written"
    finally:
        m.cleanup()


@needs_fuse
def test_full_disk_without_the_page_cache_refuses_at_write(small_disk, tmp_path):
    store = os.path.join(small_disk, "store")
    m = Mounts(store, str(tmp_path / "mnt"))
    try:
        mp = m.mount("full", env={"FUSEVOL_WRITEBACK_CACHE": "0"})
        path = os.path.join(mp, "fill")
        acked, failure, data = _push(path, 400, seed=7)
        assert failure == errno.ENOSPC, errno.errorcode.get(failure, failure)
        assert 32 * MiB <= acked < 200 * MiB, acked
        assert _rss_anon_kib(_worker_pid(store, "full")) < 400 * 1024
        m.umount(mp)
        mp = m.mount("full")
        with open(os.path.join(mp, "fill"), "rb") as f:
            stored = f.read()
        assert stored == data[:acked]
    finally:
        m.cleanup()


@needs_fuse
def test_quota_refuses_at_write_and_stores_a_prefix(mounts):
    mounts.create("quota50", "size=50M")
    mp = mounts.mount("quota50")
    path = os.path.join(mp, "data")
    acked, failure, data = _push(path, 100, seed=11)
    assert failure == errno.EDQUOT, errno.errorcode.get(failure, failure)
    assert 40 * MiB <= acked <= 50 * MiB, acked
    # A second file cannot get past the quota either.
    _, failure2, _ = _push(os.path.join(mp, "more"), 10, seed=12, then_tries=2)
    assert failure2 == errno.EDQUOT
    mounts.umount(mp)
    mp = mounts.mount("quota50", create=False)
    with open(os.path.join(mp, "data"), "rb") as f:
        stored = f.read()
    assert len(stored) == acked
    assert stored == data[:acked], "the stored file is not the acknowledged prefix"
    assert os.statvfs(mp).f_blocks * 4096 <= 50 * MiB


@needs_fuse
def test_space_freed_under_a_quota_is_usable_again(mounts):
    mounts.create("q2", "size=20M")
    mp = mounts.mount("q2")
    _, failure, _ = _push(os.path.join(mp, "a"), 30, seed=1, then_tries=1)
    assert failure == errno.EDQUOT
    os.unlink(os.path.join(mp, "a"))
    acked, failure, data = _push(os.path.join(mp, "b"), 10, seed=2)
    assert failure is None and acked == 10 * MiB
    with open(os.path.join(mp, "b"), "rb") as f:
        assert f.read() == data


@pytest.fixture
def ext4_store(tmp_path):
    """Mounts of a store on a 300 MiB ext4 image (loop device)."""
    with ext4_loop(str(tmp_path), 300) as point:
        m = Mounts(os.path.join(point, "store"), str(tmp_path / "mnt"))
        try:
            yield m
        finally:
            m.cleanup()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@needs_fuse
@needs_loop
def test_full_ext4_disk_keeps_what_it_took_and_space_freed_by_delete_is_usable(ext4_store):
    m = ext4_store
    mp = m.mount("full")
    synced, failure, data, _ = _fill(os.path.join(mp, "fill"), _worker_pid(m.store_path, "full"), seed=21)
    assert failure == errno.ENOSPC, errno.errorcode.get(failure, failure)
    assert 64 * MiB <= synced < 300 * MiB, synced
    m.umount(mp)
    mp = m.mount("full")
    stored = _read(os.path.join(mp, "fill"))
    assert synced <= len(stored) <= len(data)
    assert stored == data[:len(stored)], "the stored file is not a prefix of what was written"
    # Deleting gives the space back inside the store's file (the file does
    # not shrink): about as much can be written again (the limit moves by a
    # few MiB with the pages LMDB keeps for its own use).
    os.unlink(os.path.join(mp, "fill"))
    _, failure, data = _push(os.path.join(mp, "again"), synced // MiB - 16, seed=22)
    assert failure is None, errno.errorcode.get(failure, failure)
    m.umount(mp)
    mp = m.mount("full")
    assert _read(os.path.join(mp, "again")) == data
    assert run_cli(m.store_path, "verify").returncode == 0


@needs_fuse
@needs_loop
def test_space_freed_by_gc_on_a_full_ext4_disk_is_usable(ext4_store):
    m = ext4_store
    # Volume `left` keeps 96 MiB in a file that was unlinked while open and
    # then lost its worker: nothing purges it until that volume is mounted
    # again, or gc runs.
    mp = m.mount("left")
    held = os.open(os.path.join(mp, "held"), os.O_WRONLY | os.O_CREAT, 0o644)
    for i in range(96):
        os.write(held, random.Random(f"held{i}").randbytes(MiB))
    os.fsync(held)
    os.unlink(os.path.join(mp, "held"))
    os.fsync(held)
    pid = _worker_pid(m.store_path, "left")
    os.kill(pid, signal.SIGKILL)
    while registry.pid_alive(pid):
        time.sleep(0.01)
    with pytest.raises(OSError):  # ECONNABORTED: its worker is gone
        os.close(held)
    assert registry.clear_dead_mount(mp)
    m.active.remove(mp)

    mp = m.mount("busy")
    acked, failure, _ = _push(os.path.join(mp, "fill"), 400, seed=31, then_tries=1)
    assert failure == errno.ENOSPC
    # Space the store gets back after the refusal (its last commits, pages it frees)
    # may take a MiB more; 16 MiB more (refused at write or at close) may not fit.
    _, failure, _ = _push(os.path.join(mp, "more"), 16, seed=32, then_tries=0)
    assert failure == errno.ENOSPC, "the disk was not full"
    os.unlink(os.path.join(mp, "more"))

    report = json.loads(run_cli(m.store_path, "gc", "--json").stdout)
    assert report["orphans_purged"] == 1, report
    assert report["unique_bytes_freed"] == 96 * MiB, report
    more, failure, data = _push(os.path.join(mp, "more"), 64, seed=33)
    assert failure is None, errno.errorcode.get(failure, failure)
    m.umount(mp)
    mp = m.mount("busy")
    assert _read(os.path.join(mp, "more")) == data
    assert run_cli(m.store_path, "verify").returncode == 0
