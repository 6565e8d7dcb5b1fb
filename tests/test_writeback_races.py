"""The kernel's writeback and concurrent writers against the worker's flushes,
through a real mount.

fio writes 4 KiB at random offsets over a file laid out before, then fsyncs:
the page cache sends the worker runs of dirty pages, many at once, while
background flushes (made small here, FUSEVOL_FLUSH_AT) replace the blocks
those writes load. A write that met a flush letting go of the chunk it was
loading failed with EIO at the fsync; the written data must come back whole.
"""

import json
import os
import random
import shutil
import subprocess
import threading

import pytest

from conftest import needs_fuse

pytestmark = [needs_fuse,
              pytest.mark.skipif(shutil.which("fio") is None,
                                 reason="fio is not installed (scripts/setup.sh --test)")]

ROUNDS = 3


def _fio(directory: str, *args: str) -> dict:
    out = subprocess.run(["fio", "--name=w", f"--directory={directory}", "--ioengine=psync",
                          "--output-format=json", *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    job = json.loads(out.stdout)["jobs"][0]
    assert job["error"] == 0, job
    return job


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_random_writes_meeting_background_flushes_come_back_whole(mounts, round_):
    mp = mounts.mount(f"wb{round_}", env={"FUSEVOL_FLUSH_AT": str(512 << 10)})
    _fio(mp, "--rw=write", "--bs=1M", "--size=128M", "--end_fsync=1")
    # fio checks what it wrote (crc32c in each block) after the fsync.
    _fio(mp, "--rw=randwrite", "--bs=4k", "--size=128M", "--end_fsync=1", "--randrepeat=0",
         "--verify=crc32c", "--do_verify=1", "--verify_state_save=0")
    with open(os.path.join(mounts.store_path, "run", "log", f"wb{round_}.log")) as f:
        assert "ERROR" not in f.read()


REGION = 300_000  # not a multiple of the block size: neighbours share blocks
THREADS = 8


def _own_region(fd: int, k: int, seed: int, ops: int, out: dict, errors: list) -> None:
    """Random writes inside region k, an fsync now and then, reads checked
    against what this thread wrote; its final bytes go to out[k]."""
    rnd = random.Random(seed)
    base, model = k * REGION, bytearray(REGION)
    try:
        for n in range(ops):
            off = rnd.randrange(REGION - 1)
            data = rnd.randbytes(min(rnd.choice((1, 100, 4096, 5000, 70000)), REGION - off))
            os.pwrite(fd, data, base + off)
            model[off:off + len(data)] = data
            if rnd.random() < 0.02:
                os.fsync(fd)
            if rnd.random() < 0.1:
                at = rnd.randrange(REGION - 1)
                length = min(rnd.choice((10, 4096, 131072)), REGION - at)
                if os.pread(fd, length, base + at) != model[at:at + length]:
                    errors.append(f"region {k}, operation {n}: read {length} at {at} differs")
                    return
        os.fsync(fd)
        out[k] = bytes(model)
    except OSError as e:
        errors.append(f"region {k}: {e}")


@pytest.mark.parametrize("writeback", ["1", "0"])
def test_threads_writing_neighbouring_regions_of_one_file(mounts, writeback):
    """Blocks at the edges of the regions take writes from two threads at once,
    loaded, merged and flushed while the other writes: every byte must be the
    last one its thread wrote, while mounted and after a remount."""
    env = {"FUSEVOL_FLUSH_AT": str(256 << 10), "FUSEVOL_WRITEBACK_CACHE": writeback}
    mp = mounts.mount("regions", env=env)
    path = os.path.join(mp, "f")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    out, errors = {}, []
    try:
        os.ftruncate(fd, REGION * THREADS)
        threads = [threading.Thread(target=_own_region, args=(fd, k, 1000 + k, 1500, out, errors))
                   for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.close(fd)
    assert errors == []
    expected = b"".join(out[k] for k in range(THREADS))
    mounts.umount(mp)
    with open(os.path.join(mounts.mount("regions", env=env), "f"), "rb") as f:
        assert f.read() == expected
