"""Giving the C heap's free memory back to the system.

glibc keeps what a thread frees in that thread's arena, and returns pages to
the system only from the top of an arena. After a large write a worker's
arenas hold what its flushes used (request buffers, LMDB's pages of a batch):
100-150 MiB of RssAnon stayed with a worker that had gone idle.
malloc_trim(0) gives every whole free page of every arena back.

And, for the forkserver, the free blocks of Python's small-object pools
taken before forking (fill_free_blocks).
"""

import ctypes
import logging
import os
import sys
import tempfile

log = logging.getLogger(__name__)


def _malloc_trim():
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_trim = _malloc_trim()


def give_back() -> None:
    """Return the heap's free pages to the system (nothing without glibc)."""
    if _trim is not None:
        _trim(0)


# -- the forkserver's free small blocks, taken before forking ---------------------

# What the free blocks are filled with; kept for the forkserver's life.
_fillers: list = []


def fill_free_blocks(rounds: int = 3) -> int:
    """Take every free block of the pools Python's small-object allocator has
    in use; the blocks taken. A forked worker's first small objects would
    otherwise land in those blocks, scattered over the pages it shares with
    the forkserver, each write copying a whole page; taken here, they go to
    pools of the worker's own, packed together."""
    taken = 0
    for _ in range(rounds):  # what a round's own bookkeeping freed, taken again
        free = _free_blocks()
        if not free:
            break
        # One array for the round's objects (malloc's, not a small block of its own).
        batch = [None] * sum(free.values())
        i = 0
        for size, count in free.items():
            for _ in range(count):
                batch[i] = _block(size)
                i += 1
        _fillers.append(batch)
        taken += i
    return taken


def _block(size: int):
    """An object of one block of `size` bytes (the allocator's size class)."""
    if size <= 16:
        return object()
    if size <= 32:
        return _BIG + 1  # an int of one digit: 28 bytes, each a new object
    return bytes(size - sys.getsizeof(b""))


_BIG = 1 << 20


def _free_blocks() -> dict[int, int]:
    """Free blocks per size class in the pools in use (sys._debugmallocstats,
    which CPython writes to the process's standard error)."""
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as out:
            os.dup2(out.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
            out.seek(0)
            text = out.read().decode(errors="replace")
    finally:
        os.close(saved)
    free = {}
    for line in text.splitlines():
        fields = line.split()
        # class, size, pools, blocks in use, free blocks
        if len(fields) == 5 and all(f.isdigit() for f in fields) and int(fields[4]):
            free[int(fields[1])] = int(fields[4])
        elif fields[:1] == ["#"]:
            break
    return free
