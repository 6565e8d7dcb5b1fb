"""The kernel's writeback against the worker's flushes, through a real mount.

fio writes 4 KiB at random offsets over a file laid out before, then fsyncs:
the page cache sends the worker runs of dirty pages, many at once, while
background flushes (made small here, FUSEVOL_FLUSH_AT) replace the blocks
those writes load. A write that met a flush letting go of the chunk it was
loading failed with EIO at the fsync; the written data must come back whole.
"""

import json
import os
import shutil
import subprocess

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
