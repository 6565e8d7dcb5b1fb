"""A byte flipped in a stored chunk: reads fail with EIO, never return wrong
bytes; export and send refuse; verify names the file."""

import errno
import json
import os
import random

import pytest

from conftest import run_cli
from fusevol.fs import registry
from store_damage import flip_byte, store_files

BS = 128 * 1024


@pytest.fixture
def damaged(mounts):
    """Volume `vol` with files `victim` (its second block damaged on disk) and
    `intact`; a snapshot `vol@before` taken before the damage. Unmounted."""
    rng = random.Random(5)
    blocks = [rng.randbytes(BS) for _ in range(3)]
    intact = rng.randbytes(3 * BS)
    mp = mounts.mount("vol")
    for name, data in (("victim", b"".join(blocks)), ("intact", intact)):
        with open(os.path.join(mp, name), "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
    run_cli(mounts.store_path, "snapshot", "create", "vol@before")
    mounts.umount(mp)
    found = sum(flip_byte(path, blocks[1]) for path in store_files(mounts.store_path))
    assert found >= 1, "the block is in none of the store's files"
    return {"blocks": blocks, "intact": intact}


def test_reading_a_damaged_block_fails_with_eio(mounts, damaged):
    mp = mounts.mount("vol", create=False)
    pid = registry.worker_of(mounts.store_path, volume="vol").pid
    fd = os.open(os.path.join(mp, "victim"), os.O_RDONLY)
    try:
        with pytest.raises(OSError) as failed:
            os.pread(fd, BS, BS)
        assert failed.value.errno == errno.EIO
    finally:
        os.close(fd)
    with pytest.raises(OSError) as failed:
        with open(os.path.join(mp, "victim"), "rb") as f:
            f.read()
    assert failed.value.errno == errno.EIO
    # A partial write into the damaged block needs its old bytes: refused as well,
    # rather than a new chunk built on damaged data.
    fd = os.open(os.path.join(mp, "victim"), os.O_WRONLY)
    try:
        with pytest.raises(OSError) as failed:
            os.pwrite(fd, b"x", BS + 100)
            os.fsync(fd)
        assert failed.value.errno == errno.EIO
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    # The worker keeps serving, and the rest of the volume reads right.
    assert registry.worker_of(mounts.store_path, volume="vol").pid == pid
    with open(os.path.join(mp, "intact"), "rb") as f:
        assert f.read() == damaged["intact"]


def test_a_read_of_part_of_a_damaged_block_fails_and_pushes_nothing(mounts, damaged):
    """A read of part of a block reads the whole block to hand it to the
    kernel's page cache (fs/pagepush.py): it is checked all the same."""
    mp = mounts.mount("vol", create=False)
    path = os.path.join(mp, "victim")
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(2):  # nothing of it was pushed: the second read fails too
            with pytest.raises(OSError) as failed:
                os.pread(fd, 4096, BS + 8192)
            assert failed.value.errno == errno.EIO
        assert os.pread(fd, 4096, 2 * BS + 8192) == damaged["blocks"][2][8192:8192 + 4096]
    finally:
        os.close(fd)


def test_verify_names_the_damaged_file(mounts, damaged):
    proc = run_cli(mounts.store_path, "verify", "--json", check=False)
    assert proc.returncode == 8, proc.stderr
    report = json.loads(proc.stdout)
    named = {(p["where"], p["path"]) for p in report["problems"]}
    assert named == {("volume vol", "victim"), ("snapshot vol@before", "victim")}, report["problems"]
    text = run_cli(mounts.store_path, "verify", check=False).stdout.decode()
    assert "volume vol: victim: chunk" in text


def test_export_and_send_refuse_a_damaged_chunk(mounts, damaged, tmp_path):
    for args in (["export", "vol"], ["export", "vol@before"], ["send", "vol@before"]):
        out = str(tmp_path / "out")
        proc = run_cli(mounts.store_path, *args, "-o", out, check=False)
        assert proc.returncode == 8, (args, proc.returncode, proc.stderr)
        err = proc.stderr.decode()
        assert "damaged" in err and "Traceback" not in err, err
