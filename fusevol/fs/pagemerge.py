"""The forkserver's memory offered to the kernel's same-page merging (KSM).

A forked worker shares the forkserver's pages until it writes to them, and
CPython 3.11 writes to every object it uses (its reference count; a code
object's call counter): the code a worker runs to mount and serve copies
some 1,850 of those pages (7.3 MiB) into each worker. Every worker runs the
same code, so most of its copies are alike, byte for byte, in every other
worker: two thirds of one worker's own pages were equal to another's at the
same address. KSM merges such pages back into one, write-protected, and
copies a page again only when a process writes to it.

Offered here: the private, writable memory the forkserver holds when it
forks (its heap, pymalloc's arenas, the data of libpython and of the
extension modules), which its workers inherit with the offer. Not offered:
what a worker maps later (its threads' stacks and heaps, pymalloc's new
arenas, the buffers of large requests), where most of a volume's data
passes; a small buffer may still land in a free block of the inherited
heap, and be merged if another process offered the very same page (KSM's
known side channel: a write to a merged page takes longer, so a process can
tell that a page it guessed exists elsewhere). Nothing merges unless the
host runs KSM (/sys/kernel/mm/ksm/run set to 1 by its admin); without it
the offer costs nothing. FUSEVOL_MERGE_PAGES=0 leaves it out.
"""

import ctypes
import os

MADV_MERGEABLE = 12  # <asm-generic/mman-common.h>


def enabled() -> bool:
    return os.environ.get("FUSEVOL_MERGE_PAGES", "1") != "0"


def private_writable(maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, end) of every private writable mapping (anonymous or a file's copy)."""
    ranges = []
    with open(maps) as f:
        for line in f:
            fields = line.split()
            perms = fields[1]
            if perms[1] != "w" or perms[3] != "p":
                continue
            if len(fields) > 5 and fields[5] == "[vsyscall]":
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def offer() -> int:
    """Mark this process's private writable memory mergeable; how many mappings
    took it (0 on a kernel without KSM)."""
    libc = ctypes.CDLL(None)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    # A mapping that cannot take it (EINVAL: a kernel without KSM) stays as it is.
    return sum(libc.madvise(start, end - start, MADV_MERGEABLE) == 0
               for start, end in private_writable())
