"""A read that meets a flush completing under it returns the bytes, not zeros.

A direct read of two blocks, one only in the worker's flush buffers and one to
load from the store, while fsync commits the first: the read must not lose the
block the flush took out of its buffers during the load.
"""

import mmap
import os
import threading

from conftest import needs_fuse

BS = 128 << 10  # the store's block size


def _aligned(n: int) -> mmap.mmap:
    return mmap.mmap(-1, n)  # page-aligned, as O_DIRECT wants


@needs_fuse
def test_direct_reads_racing_fsync_never_see_zeros(vol):
    path = os.path.join(vol, "f")
    with open(path, "wb") as f:
        f.write(b"\x01" * (4 * BS))
        os.fsync(f.fileno())
    wfd = os.open(path, os.O_RDWR | os.O_DIRECT)
    rfd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    wbuf, rbuf = _aligned(BS), _aligned(2 * BS)
    bad = []
    try:
        for round_ in range(400):
            value = 2 + round_ % 250
            wbuf[:] = bytes([value]) * BS
            os.pwritev(wfd, [wbuf], 0)  # block 0 now only in the worker's buffers
            syncer = threading.Thread(target=os.fsync, args=(wfd,))
            syncer.start()
            n = os.preadv(rfd, [rbuf], 0)  # block 0 buffered, block 1 from the store
            syncer.join()
            assert n == 2 * BS
            if rbuf[:BS] != bytes([value]) * BS or rbuf[BS:] != b"\x01" * BS:
                first = next(i for i in range(2 * BS)
                             if rbuf[i] != (value if i < BS else 1))
                bad.append((round_, first, rbuf[first]))
    finally:
        os.close(wfd)
        os.close(rfd)
    assert not bad, f"{len(bad)} of 400 reads wrong; first (round, offset, byte): {bad[:3]}"
