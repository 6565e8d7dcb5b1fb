"""A read of part of a stored block hands the whole block to the kernel's page
cache (fs/pagepush.py), never while a handle that may write is open, and
never past the file's size."""

import ctypes
import mmap
import os
import random
import time

import pytest

BS = 128 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(None, use_errno=True)


def resident(path: str) -> list[bool]:
    """Which pages of the file the kernel's page cache holds (mincore)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)  # a private map: ctypes may see it
    finally:
        os.close(fd)
    try:
        pages = (size + PAGE - 1) // PAGE
        vec = (ctypes.c_ubyte * pages)()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return [bool(v & 1) for v in vec]
    finally:
        mm.close()


def wait_resident(path: str, pages: range, timeout: float = 5.0) -> list[bool]:
    """The residency once `pages` are all in (the push ends after the reply), or at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        now = resident(path)
        if all(now[p] for p in pages) or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


@pytest.fixture
def stored(mounts):
    """A file of 3 blocks and a tail, stored, served by a fresh mount (its
    page cache empty): (mountpoint, path, content)."""
    content = random.Random(7).randbytes(3 * BS + 5000)
    mp = mounts.mount("vol")
    path = os.path.join(mp, "f")
    with open(path, "wb") as f:
        f.write(content)
        os.fsync(f.fileno())
    mounts.umount(mp)
    mp = mounts.mount("vol", create=False)
    return mp, os.path.join(mp, "f"), content


def read_part(path: str, size: int, offset: int) -> bytes:
    """pread through a descriptor of its own (closed before the checks)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def test_a_read_of_part_of_a_block_brings_in_the_whole_block(stored):
    _, path, content = stored
    assert read_part(path, 4096, BS + 8192) == content[BS + 8192: BS + 8192 + 4096]
    block = range(BS // PAGE, 2 * BS // PAGE)
    now = wait_resident(path, block)
    assert all(now[p] for p in block), "the block's other pages were not pushed"
    assert not any(now[: BS // PAGE]) and not any(now[2 * BS // PAGE:])
    with open(path, "rb") as f:
        assert f.read() == content


def test_the_tail_block_is_pushed_up_to_the_files_end(stored):
    _, path, content = stored
    assert read_part(path, 100, 3 * BS + 10) == content[3 * BS + 10: 3 * BS + 110]
    tail = range(3 * BS // PAGE, (len(content) + PAGE - 1) // PAGE)
    assert all(wait_resident(path, tail)[p] for p in tail)
    assert os.stat(path).st_size == len(content)  # the push did not grow it
    with open(path, "rb") as f:
        assert f.read() == content


def test_nothing_is_pushed_while_a_writer_has_the_file_open(stored):
    _, path, content = stored
    writer = os.open(path, os.O_RDWR)
    try:
        read_part(path, 4096, BS + 8192)
        time.sleep(0.3)  # a push would have landed by now
        now = resident(path)
        assert sum(now) == 1 and now[(BS + 8192) // PAGE]
        # The writer's bytes are what every reader sees afterwards.
        os.pwrite(writer, b"x" * 100, BS + 9000)
    finally:
        os.close(writer)
    expected = content[:BS + 9000] + b"x" * 100 + content[BS + 9100:]
    assert read_part(path, 4096, BS + 4096 * 3) == expected[BS + 4096 * 3: BS + 4096 * 4]
    with open(path, "rb") as f:
        assert f.read() == expected


def test_a_truncate_after_a_pushed_read_is_kept(stored):
    _, path, content = stored
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 4096, 2 * BS + 4096)
        wait_resident(path, range(2 * BS // PAGE, 3 * BS // PAGE))
        os.truncate(path, 2 * BS + 100)
        assert os.fstat(fd).st_size == 2 * BS + 100
        os.truncate(path, 3 * BS)  # grown again: zeros past the cut, not the pushed bytes
        assert os.pread(fd, BS, 2 * BS) == content[2 * BS: 2 * BS + 100] + bytes(BS - 100)
    finally:
        os.close(fd)
