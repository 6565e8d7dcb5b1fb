"""Giving the C heap's free memory back to the system.

glibc keeps what a thread frees in that thread's arena, and returns pages to
the system only from the top of an arena. After a large write a worker's
arenas hold what its flushes used (request buffers, LMDB's pages of a batch):
100-150 MiB of RssAnon stayed with a worker that had gone idle.
malloc_trim(0) gives every whole free page of every arena back.
"""

import ctypes
import logging

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
