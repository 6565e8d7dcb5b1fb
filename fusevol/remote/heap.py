"""Freed memory kept for reuse while a pull stores chunks (glibc's malloc).

LMDB copies every value of a write transaction into pages it mallocs (a 128
KiB chunk: 33 pages in one allocation) and frees them at commit. glibc serves
that size by mmap, or from a heap it hands back to the kernel as soon as the
top is free: every transaction's pages came fresh from the kernel, a page
fault and a zeroed page per 4 KiB, which was most of a put (1 GiB stored in
64 MiB transactions: 1.8-2.4 s of puts, 0.6-0.9 s with the memory kept; a
1 GiB pull's page faults 189,000 -> 95,000). While a
pull runs, allocations up to the size of a downloaded range come from the
heap and what is freed stays there for the next transaction; after the last
pull of the process, glibc's default thresholds return and the surplus goes
back to the kernel. Elsewhere than glibc this does nothing.
"""

import contextlib
import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 128 * 1024   # glibc's default for both
MMAP_THRESHOLD = 32 << 20        # glibc's largest: a 16 MiB range comes from the heap too
TRIM_THRESHOLD = 512 << 20       # freed memory kept, at most

_lock = threading.Lock()
_users = 0


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def _set(mmap_threshold: int, trim_threshold: int) -> None:
    # mallopt answers 0 when it refuses a value; the defaults then stay.
    if not (_LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
            and _LIBC.mallopt(_M_TRIM_THRESHOLD, trim_threshold)):
        log.debug("mallopt refused the pull's heap thresholds")


@contextlib.contextmanager
def kept():
    """Within the block (and any block of another thread), freed memory is
    kept for reuse."""
    global _users
    if _LIBC is None:
        yield
        return
    with _lock:
        _users += 1
        if _users == 1:
            _set(MMAP_THRESHOLD, TRIM_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _set(DEFAULT_THRESHOLD, DEFAULT_THRESHOLD)
                _LIBC.malloc_trim(0)
