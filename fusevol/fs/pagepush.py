"""Whole chunks handed to the kernel's page cache after a read of part of one.

A read of a few pages of a stored block costs the whole block: its chunk is
read, checked against its id (and decompressed) whole, then cut. The kernel
asks a random reader's pages one request at a time (its readahead holds back
on random reads), so a reader that comes back to the same block later paid
for the whole of it again, request by request. Instead the block's checked
bytes are stored into the kernel's page cache of the file (FUSE's
notify_store), as the kernel's own readahead would have put them there: its
other pages are then answered by the kernel.

notify_store overwrites the pages it covers, dirty or not, and grows the
kernel's idea of the file's size to its end. So a push is only made of bytes
the worker holds no newer copy of, cut at the file's size, while no handle
that may write the file is open (with the writeback cache, only such a handle
makes dirty pages: the kernel writes them back before its last one is
released); an open for writing and a truncate wait until the pushes already
started are over (settled()). The push runs in a thread: the kernel locks the
pages it is still reading, and waits for the answer of this very loop.
"""

import pyfuse3
import trio

# Pushes under way at most (each holds its block): past it a read pushes
# nothing, as a push is only a hint.
MAX_UNDER_WAY = 32

# (id of the worker's runner, inode) -> [pushes not over, event set when none is left]
_started: dict[tuple[int, int], list] = {}
_under_way = 0


def push(runner, ino: int, offset: int, data: bytes) -> None:
    """Store data into the kernel's pages of inode `ino` at offset, from a thread."""
    global _under_way
    if _under_way >= MAX_UNDER_WAY:
        return
    _under_way += 1
    key = (id(runner), ino)
    entry = _started.get(key)
    if entry is None:
        entry = _started[key] = [0, trio.Event()]
    entry[0] += 1
    trio.lowlevel.spawn_system_task(_push, key, entry, ino, offset, data, name="page push")


async def _push(key, entry, ino: int, offset: int, data: bytes) -> None:
    global _under_way
    try:
        await trio.to_thread.run_sync(pyfuse3.notify_store, ino, offset, data)
    except Exception:  # noqa: BLE001 - a hint only (the kernel may lack it, or forgot the inode)
        pass
    finally:
        _under_way -= 1
        entry[0] -= 1
        if entry[0] == 0:
            entry[1].set()
            if _started.get(key) is entry:
                del _started[key]


async def settled(runner, ino: int) -> None:
    """Wait until no push to inode `ino` is under way."""
    entry = _started.get((id(runner), ino))
    if entry is not None:
        await entry[1].wait()
