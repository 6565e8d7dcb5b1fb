"""Write buffering for the files of a mounted volume.

Writes land in whole-block buffers in memory and reach the store as chunks on
flush: at close, fsync, when a file or the whole mount holds too much, or after
a few seconds. One FileData serves every open handle of an inode, so all of
them see the same bytes. While a flush is being committed its blocks stay
readable from `inflight`.

Every await may let another request run: a flush may complete (emptying
`inflight`), a truncate may cut the buffers, a write may fill a block. Reads and
writes hold the buffers they saw before an await and start again when a
truncate ran meanwhile.

Once data could not be stored for lack of space, the file refuses further
writes (the same errno) until it is truncated or closed by all: what reaches
the store is then always a prefix of what was written, never a file with a
refused range in its middle. The kernel's writeback sends the ranges of a file
out of order, several at once: a range past the refused one may have been
taken (even stored) before it. The file is then cut where the refused range
starts (`cut_unstored`), never below what an fsync made durable.
"""

import errno
import functools

import trio

from ..errors import FsError, FusevolError, StoreDamaged
from ..store import Inodes, chunks
from . import pagepush
from .runner import TxnRunner
from .space import SpaceBudget

SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT)
# Flushes of this many bytes or more are hashed and compressed in threads
# first; smaller ones on the store thread (a thread round trip costs more).
PREPARE_AT = 1 << 20
# Flushes up to this many bytes that fsync does not wait for are worked out
# on the trio thread (hashed there, stored by the store thread later: see
# fs/speculate.py), as the metadata changes are; the file's data stays
# readable meanwhile (a read of it waits behind it on the store thread).
AHEAD_UP_TO = 256 << 10
PREPARE_THREADS = 2
# Loads of at most this many chunks are read on the trio thread; larger ones
# (sequential reads) in threads, several at once.
INLINE_READS_UP_TO = 1


class FileData:
    """The buffered blocks of one inode. A dirty block is a bytearray, or the
    memoryview of a write request's bytes when that write covered it whole."""

    def __init__(self, ino: int, size: int, inodes: Inodes, runner: TxnRunner,
                 space: SpaceBudget, writeback_cache: bool = True, intent=None,
                 push_pages: bool = False):
        self.ino = ino
        self.intent = intent  # told of every write and truncate (fs/intent.py)
        # With the writeback cache the kernel owns mtime and ctime and sends
        # them (setattr) when they change; without it a data flush sets them.
        self.writeback_cache = writeback_cache
        self.size = size
        self.inodes = inodes
        self.runner = runner
        self.space = space
        self.bs = inodes.block_size
        self.dirty: dict[int, bytearray] = {}
        self.inflight: dict[int, bytearray] = {}
        self.opens = 0
        self.writers = 0  # open handles that may write (their pages may be dirty)
        self.writers_opened = 0  # ...and how many were ever opened, to notice one
        # Read parts of blocks are answered with the whole block handed to the
        # kernel's page cache (pagepush.py) while no handle may write.
        self.push_pages = push_pages
        self.times_pending = False  # size or mtime changed and not yet stored
        self.flush_lock = _FlushLock()
        self.flushes = 0  # completed flushes, to notice one during an await
        self.truncations = 0  # likewise for truncates
        # The size up to which an fsync (or an earlier open) covered the
        # file: a cut after a refusal never goes below it.
        self.durable_size = size
        self.error: int | None = None  # space ran out: writes are refused
        self.error_unreported = False  # ...and no close or fsync said so yet

    async def open_writer(self) -> None:
        """A handle that may write opens: no page is pushed from now on, and
        the pushes already started are over before it is answered."""
        self.writers += 1
        self.writers_opened += 1
        await pagepush.settled(self.runner, self.ino)

    def close_writer(self) -> None:
        self.writers -= 1

    @property
    def dirty_bytes(self) -> int:
        return len(self.dirty) * self.bs

    @property
    def buffered_bytes(self) -> int:
        """Bytes held in memory and not stored yet (what a flush will add)."""
        return (len(self.dirty) + len(self.inflight)) * self.bs

    def new_bytes(self, offset: int, length: int) -> int:
        """Buffer bytes a write of this range would add."""
        if length <= 0:
            return 0
        first, last = offset // self.bs, (offset + length - 1) // self.bs
        if first == last:  # (most writes)
            return 0 if first in self.dirty else self.bs
        return sum(self.bs for i in range(first, last + 1) if i not in self.dirty)

    def refuse(self, err: int, reported: bool = True) -> None:
        """Refuse writes from now on (see the module's docstring)."""
        self.error = err
        self.error_unreported = self.error_unreported or not reported

    def take_error(self) -> None:
        """Raise a space error that close or fsync has not reported yet (once)."""
        if self.error_unreported:
            self.error_unreported = False
            raise FsError(self.error)

    def _cached(self, index: int) -> bytearray | None:
        buf = self.dirty.get(index)
        return buf if buf is not None else self.inflight.get(index)

    async def _load(self, indexes: list[int]) -> dict[int, bytes | None]:
        """Stored content of blocks (None for holes). The block map comes from
        the worker's rows; the chunks, immutable, are read and decompressed by
        other threads, several requests at once, unless there is only one.

        A flush that completes while the chunks are read may replace a block
        and let go of the chunk it held: such a block is read again from the
        map as it is then. A chunk missing while the store's own map still
        points to it is damage."""
        while True:
            ids = await self.runner.read(self.inodes.block_ids, self.ino, indexes)
            wanted = {i: cid for i, cid in ids.items() if cid is not None}
            if len(wanted) <= INLINE_READS_UP_TO:
                # A thread round trip cost more than the read itself: 4 KiB random
                # reads, cold, 2,400 -> 3,600-6,400 IOPS on this project's machine.
                # The loop waits for the disk meanwhile, as a C FUSE server would.
                found = _read_chunks(self.runner.store, wanted)
            else:
                found = await trio.to_thread.run_sync(_read_chunks, self.runner.store, wanted,
                                                      limiter=self.runner.read_limiter)
            missing = {i: cid for i, cid in wanted.items() if i not in found}
            if missing:  # written by the open batch, not committed yet (or let go of)
                found.update(await self.runner.run(chunks.read_present, missing,
                                                   foreseen=True, loggable=True))
            gone = [i for i in wanted if i not in found]
            if not gone:
                return {i: found.get(i) for i in indexes}
            # The map as the store thread has it: an fsync's flush, answered
            # only at its durable commit, reaches the worker's rows after
            # operations behind it, though its chunks were let go of already.
            now = await self.runner.run(self.inodes.block_ids, self.ino, gone,
                                        foreseen=True, loggable=True)
            for i in gone:
                if now[i] == wanted[i]:
                    raise StoreDamaged(f"missing chunk {wanted[i].hex()}")

    async def _read_stored(self, first: int, last: int, offset: int, end: int
                           ) -> tuple[bytes | None, bytes | None]:
        """Bytes offset..end of stored blocks first..last, each raw chunk copied
        once, from LMDB's map into the reply (in the thread that reads them);
        None if a chunk is not committed yet (or was let go of meanwhile).
        With them, for a read of part of one block when pages may be pushed,
        the whole block (to the file's end) that they were cut from."""
        bs = self.bs
        ids = await self.runner.read(self.inodes.block_ids, self.ino, list(range(first, last + 1)))
        whole_from, whole_to = first * bs, min(self.size, (first + 1) * bs)
        whole = (self.push_pages and not self.writers and first == last
                 and ids[first] is not None and (offset, end) != (whole_from, whole_to))
        if whole:
            offset, end = whole_from, whole_to
        parts = [(ids[i], max(offset, i * bs) - i * bs, min(end, (i + 1) * bs) - i * bs)
                 for i in range(first, last + 1)]
        if sum(cid is not None for cid, _, _ in parts) <= INLINE_READS_UP_TO:
            data = _read_parts(self.runner.store, parts)  # see _load
        else:
            data = await trio.to_thread.run_sync(_read_parts, self.runner.store, parts,
                                                 limiter=self.runner.read_limiter)
        return data, (data if whole else None)

    async def write(self, offset: int, data: bytes) -> int:
        bs = self.bs
        end = offset + len(data)
        first, last = offset // bs, (end - 1) // bs
        # Blocks written only in part need their old bytes first. If a flush
        # completed while they were loading, a write that came meanwhile may
        # be in them now but in neither buffer any more: load again.
        while True:
            partial = [i for i in {first, last}
                       if self._cached(i) is None and i * bs < self.size
                       and not (offset <= i * bs and end >= (i + 1) * bs)]
            flushes, truncations = self.flushes, self.truncations
            loaded = await self._load(partial) if partial else {}
            if self.flushes == flushes and self.truncations == truncations:
                break
        if self.error is not None:  # a flush ran out of space meanwhile
            raise FsError(self.error)
        view = memoryview(data)
        for index in range(first, last + 1):
            start = max(offset, index * bs)
            stop = min(end, (index + 1) * bs)
            if stop - start == bs:
                # A whole block: keep the request's own bytes (immutable), no copy.
                self.dirty[index] = view[start - offset: stop - offset]
                continue
            buf = self.dirty.get(index)
            if type(buf) is not bytearray:  # none yet, or a whole block kept as it came
                base = buf if buf is not None else self.inflight.get(index)
                if base is None:
                    base = loaded.get(index) or b""
                    # Bytes past the file's end are not data (a truncate dropped them).
                    base = base[: max(0, self.size - index * bs)]
                buf = self.dirty[index] = bytearray(base)
            lo = start - index * bs
            if len(buf) < lo:
                buf.extend(bytes(lo - len(buf)))
            buf[lo: stop - index * bs] = view[start - offset: stop - offset]
        self.size = max(self.size, end)
        self.times_pending = True
        if self.intent is not None:
            self.intent.wrote(self.ino, offset, end)
        return len(data)

    async def read(self, offset: int, length: int) -> bytes:
        bs = self.bs
        end = min(offset + length, self.size)
        index = offset // bs
        if offset < end and (end - 1) // bs == index:
            # Within one block held in memory (an fsync's record of what was
            # written): its bytes at once, as the long way below gives them.
            block = self._cached(index)
            if block is not None and len(block) >= end - index * bs:
                return bytes(memoryview(block)[offset - index * bs: end - index * bs])
        direct = True
        while True:
            end = min(offset + length, self.size)
            if offset >= end:
                return b""
            first, last = offset // bs, (end - 1) // bs
            # Hold the buffers seen now: a flush that completes during the load
            # takes them out of `inflight`, and they are not in `loaded` either.
            seen = {i: self._cached(i) for i in range(first, last + 1)}
            truncations, flushes, writers = self.truncations, self.flushes, self.writers_opened
            missing = [i for i, block in seen.items() if block is None]
            if len(missing) == len(seen) and direct:
                # Nothing of it in memory: the reply straight from the store.
                data, block = await self._read_stored(first, last, offset, end)
                if data is not None and self.truncations == truncations and \
                        all(self._cached(i) is None for i in seen):
                    if block is None:
                        return data
                    if self.writers_opened == writers and self.flushes == flushes:
                        # No writer came meanwhile, nor a flush: the block is
                        # the file's as it is now (see pagepush).
                        pagepush.push(self.runner, self.ino, first * bs, block)
                    return data[offset - first * bs: end - first * bs]
                direct = False  # not all committed, or changed meanwhile: the long way
                continue
            loaded = await self._load(missing) if missing else {}
            if self.truncations == truncations:
                break
        pieces = []  # views: the bytes are copied once, by the join
        for index in range(first, last + 1):
            block = self._cached(index)  # a write during the load is newer
            if block is None:
                block = seen[index]
            if block is None:
                block = loaded.get(index) or b""
            lo = max(offset, index * bs) - index * bs
            hi = min(end, (index + 1) * bs) - index * bs
            piece = memoryview(block)[lo:hi]
            pieces.append(piece)
            if len(piece) < hi - lo:
                pieces.append(bytes(hi - lo - len(piece)))  # a hole, or past the stored bytes
        return b"".join(pieces)

    def truncate(self, size: int) -> None:
        """Apply a new size to the buffers (the store is truncated by the caller)."""
        self._cut_buffers(size)
        self.durable_size = min(self.durable_size, size)
        self.error = None  # what is kept is a prefix again
        self.error_unreported = False

    def _cut_buffers(self, size: int) -> None:
        bs = self.bs
        for table in (self.dirty, self.inflight):
            for index in [i for i in table if i * bs >= size]:
                del table[index]
            last = size // bs
            if last in table:
                # A new buffer, not a cut in place: a flush may be hashing the old one.
                table[last] = table[last][: size - last * bs]
        self.size = size
        if self.intent is not None:
            self.intent.truncated(self.ino, size)
        self.truncations += 1

    def synced(self, size: int) -> None:
        """An fsync of the file succeeded: the kernel had sent it everything up
        to `size` (the file's size when the fsync came), now durable."""
        self.durable_size = max(self.durable_size, min(size, self.size))

    async def cut_unstored(self, offset: int) -> bool:
        """Data from `offset` on was refused for lack of space (a write, or a
        failed flush's buffers dropped): if the file holds nothing there but
        holds data past it, cut the file there, buffers and store (see the
        module's docstring). An overwrite refused leaves the old bytes: no
        cut. Whether it was cut."""
        if not self.writeback_cache:
            # Each write(2) came on its own and its answer was a promise to
            # the program: it is kept, wherever it lies.
            return False
        async with self.flush_lock:
            bs = self.bs
            # At a block's start: the cut frees blocks and writes none (a cut
            # inside a stored block would store a new chunk on a full disk).
            cut = max(offset - offset % bs, self.durable_size)
            if cut >= self.size:
                return False
            held = self._cached(offset // bs)
            if held is not None and len(held) > offset % bs:
                return False
            truncations = self.truncations
            if held is None and await self.runner.run(
                    _stored_at, self.inodes, self.ino, offset, foreseen=True, loggable=True):
                return False
            # Meanwhile a truncate may have ended the file (a cut would make it
            # longer again) and an fsync may have covered more of it.
            cut = max(cut, self.durable_size)
            if self.truncations != truncations or cut >= self.size:
                return False
            self._cut_buffers(cut)
            await self.runner.run(_cut_stored, self.inodes, self.ino, cut, foreseen=True)
            return True

    async def flush(self, durable: bool = False, then=None):
        """Store the dirty blocks as chunks, with the file's size and mtime.

        `then(txn)`, a store function, runs in the same store call once the
        data is stored; its result is returned.
        """
        if not (self.dirty or self.times_pending or durable or then is not None
                or self.flush_lock.locked()):
            return None  # nothing to store and no flush to wait for (close after a flush)
        async with self.flush_lock:
            if not self.dirty and not self.times_pending:
                if then is not None:
                    return await self.runner.run(then, durable=durable, foreseen=True)
                if durable:
                    await self.runner.sync()
                return None
            bs, size = self.bs, self.size
            batch, self.inflight, self.dirty = self.dirty, self.dirty, {}
            self.times_pending = False
            # The buffers leave the trio thread as they are: nothing writes to a
            # batch once it is swapped out (writes go to the new dirty map).
            blocks = [(i, buf if len(buf) <= size - i * bs else buf[: size - i * bs])
                      for i, buf in sorted(batch.items()) if i * bs < size]
            written = sum(len(buf) for _, buf in blocks)
            try:
                store = functools.partial(_store_blocks, keep_times=self.writeback_cache,
                                          then=then)
                # A flush with `then` may change a size: not for the intent log.
                loggable = then is None
                if written <= AHEAD_UP_TO and not durable:
                    added, result = await self.runner.change(
                        store, self.inodes, self.ino, blocks, size, None, foreseen=True,
                        loggable=loggable)
                else:
                    prepared = await _prepare(blocks, self.inodes.compression) \
                        if written >= PREPARE_AT else None
                    added, result = await self.runner.run(
                        store, self.inodes, self.ino, blocks, size, prepared,
                        durable=durable, foreseen=True, loggable=loggable)
            except BaseException as e:
                # Keep the data for a later try; newer writes win.
                for index, buf in batch.items():
                    if index * bs < self.size:
                        self.dirty.setdefault(index, buf)
                self.times_pending = True
                if isinstance(e, FusevolError) and e.errno in SPACE_ERRORS:
                    self.refuse(e.errno, reported=False)
                raise
            else:
                self.space.stored(added, written)
                return result
            finally:
                self.inflight = {}
                self.flushes += 1

    def drop(self) -> None:
        """Forget what could not be stored (its error was reported)."""
        self.dirty.clear()
        self.times_pending = False


class _FlushLock:
    """trio.Lock, taken without a checkpoint when it is free: a small file's
    flush at close then answers without a turn of trio's scheduler (an epoll
    round per file)."""

    __slots__ = ("_lock",)

    def __init__(self):
        self._lock = trio.Lock()

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self):
        lock = self._lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()

    async def __aexit__(self, *exc):
        self._lock.release()


def _store_blocks(txn, inodes: Inodes, ino: int, blocks, size: int, prepared, *,
                  keep_times: bool, then) -> tuple[int, object]:
    """Write a flush's blocks (and run `then`); the bytes they added to the volume."""
    added = inodes.write_blocks(txn, ino, blocks, size, keep_times=keep_times,
                                prepared=prepared)
    result = then(txn) if then is not None else None
    return added, result


def _stored_at(txn, inodes: Inodes, ino: int, offset: int) -> bool:
    """Whether the store holds a byte of the file's data at `offset`."""
    index = offset // inodes.block_size
    cid = inodes.block_ids(txn, ino, [index])[index]
    return cid is not None and chunks.raw_length(txn, cid) > offset % inodes.block_size


def _cut_stored(txn, inodes: Inodes, ino: int, size: int) -> None:
    """Cut the stored file at `size` if it is longer (a flush may not have
    stored it that far: it is never made longer here)."""
    if inodes.get(txn, ino).size > size:
        inodes.setattr(txn, ino=ino, size=size)


async def _prepare(blocks, compression: str) -> dict:
    """Hash and compress a large flush's blocks in threads beside the FUSE loop
    and the store thread (BLAKE3 and zstd let go of the GIL), so that the store
    thread only puts them and the next writes come in meanwhile."""
    parts = [blocks[i::PREPARE_THREADS] for i in range(PREPARE_THREADS)]
    out: dict = {}

    async def one(part):
        out.update(await trio.to_thread.run_sync(chunks.prepare_blocks, part, compression))

    async with trio.open_nursery() as nursery:
        for part in parts:
            if part:
                nursery.start_soon(one, part)
    return out


def _read_parts(store, parts) -> bytes | None:
    """(chunk id or None for a hole, lo, hi) per block: bytes lo..hi of each,
    joined, or None if a chunk is not in the store. Raw chunks are checked
    where LMDB maps them or a data file's read put them, and sliced there:
    the join is their only copy."""
    with store.read(buffers=True) as txn:
        stored = iter(chunks.views_if_stored(txn, [cid for cid, _, _ in parts if cid is not None]))
        pieces = []
        for cid, lo, hi in parts:
            block = next(stored) if cid is not None else b""
            if block is None:
                return None
            piece = block[lo:hi]
            pieces.append(piece)
            if len(piece) < hi - lo:
                pieces.append(bytes(hi - lo - len(piece)))  # a hole, or past the stored bytes
        return b"".join(pieces)


def _read_chunks(store, wanted: dict[int, bytes]) -> dict[int, bytes]:
    """The chunks that are committed, each read once, in a read transaction."""
    with store.read(buffers=True) as txn:
        return chunks.read_present(txn, wanted)
