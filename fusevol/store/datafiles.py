"""Large chunks in data files beside the LMDB file, written with direct I/O.

A chunk kept as an LMDB value is copied twice more than a plain file's
bytes: into the pages LMDB allocates for it, then by the kernel into fresh
page-cache pages of the growing store file, which on this kind of machine
costs more than the disk's own write. Measured (1 GiB in 128 KiB values,
commits of 16 MiB each synced): LMDB 2.9-5.6 s and 2.1-4.8 s of CPU; the
same bytes appended to a file from one aligned buffer with O_DIRECT
1.1-1.3 s and 0.28 s of CPU; appended through the page cache 4.2-5.0 s.

Files: `data/NNNNNNNN` in the store's folder, append only. A process that
writes (a volume's worker) takes a file no other holds and with room left
(or creates one), holds an exclusive flock on it while it lives and appends
to no other; it takes another past FILE_MAX. Row `datafiles`: file number ->
its committed end, where the next holder appends (over whatever a holder that
died left past it). A chunk's count row says file, offset and stored length
(chunks.py).

Writing: a root write transaction that takes a Writer (Txn.data) stages the
large chunks it adds in the writer's aligned buffer; its commit
(env.Store.commit) first writes the buffer at the file's end, durable when
the call returns (O_DIRECT | O_DSYNC), and puts the new end, then commits
LMDB. A crash between the two leaves bytes past the recorded end that no row
points to; the next commit of that writer writes over them. A nested
transaction that aborts takes back what it staged. A transaction that stages
more than the buffer holds (a receive, in one transaction) writes the buffer
out past the end and goes on staging (a spill): its bytes are the file's once
the commit puts the new end, and past the end, no one's, if it aborts. So a
transaction of any size keeps its large chunks here, in a buffer's worth of
memory, and a file may grow past FILE_MAX within one.

Dead space: a chunk let go of leaves a `datadead` row keyed by the
transaction that let go of it. Its bytes may go only when no reader can
still see a snapshot that points at them and when that transaction's commit
is durable (LMDB's own rule for its free pages, freepages.py): then a later
commit punches the range out of the file (fallocate's PUNCH_HOLE) and drops
the row, and the disk has the blocks back.
"""

import errno
import fcntl
import mmap
import os
import struct
import sys
import threading
from collections import namedtuple

from ..errors import FusevolError, NoSpace, StoreDamaged
from . import schema

ALIGN = 4096                 # direct I/O's alignment of offsets, lengths and memory
STAGE_MAX = 48 << 20         # a transaction's staged bytes (a worker's batch: 16 MiB and its last flush)
FILE_MAX = 1 << 30           # a writer starts a new file past this
MIN_LENGTH = 64 * 1024 + 1   # smaller chunks go to packs (packs.ENTRY_MAX)
RECLAIM_MAX = 4096           # dead ranges punched per commit
_FILE = struct.Struct(">I")
_DEAD = struct.Struct(">QIQ")  # txn that let go of the range, file, offset
_LENGTH = struct.Struct(">I")
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


# Where a chunk is in the data files: file number, offset, stored length.
# (collections' namedtuple, not typing's: every process that opens the store
# imports this module, and typing costs a CLI command a tenth of its start.)
Extent = namedtuple("Extent", "file offset length")


def enabled() -> bool:
    return os.environ.get("FUSEVOL_DATA_FILES", "1") != "0"


def folder(store_path: str) -> str:
    return os.path.join(store_path, "data")


def path_of(store_path: str, number: int) -> str:
    return os.path.join(folder(store_path), f"{number:08d}")


class Writer:
    """One process's appends to its data file (used by one thread: a worker's
    store thread). Staged bytes belong to the root transaction that staged
    them until its commit writes them (`write_out`) or drops them."""

    def __init__(self, store):
        self.store = store
        self.fd: int | None = None
        self.number = 0
        self.end = 0          # committed end of the file (a multiple of ALIGN)
        self.spilled = 0      # bytes the open transaction wrote past it (a multiple of ALIGN)
        self.used = 0         # bytes staged in the buffer, to go after those
        self.buf = mmap.mmap(-1, STAGE_MAX)

    # -- staging ----------------------------------------------------------

    def stage(self, txn, head: bytes, payload) -> Extent:
        """Stage a chunk's stored form (head + payload); where it will be.
        A full buffer is spilled first (NoSpace if the disk refuses it)."""
        n = len(head) + len(payload)
        if self.used + n > STAGE_MAX:
            self._write_buffer()
        if self.fd is None or (self.used == self.spilled == 0 and self.end >= FILE_MAX):
            self._start(txn)
        at = self.used + len(head)
        self.buf[self.used: at] = head
        self.buf[at: self.used + n] = payload
        ext = Extent(self.number, self.end + self.spilled + self.used, n)
        self.used += n
        return ext

    def mark(self) -> int:
        """Where the next chunk staged goes, past the committed end."""
        return self.spilled + self.used

    def rollback(self, txn, mark: int) -> None:
        """Take back what was staged since `mark` (a nested transaction
        failed; txn: its parent). What was spilled since is in the file,
        named by no row: it is let go of in txn, as a chunk is."""
        if mark >= self.spilled:
            self.used = mark - self.spilled
            return
        for at in range(mark, self.spilled, 1 << 30):  # (a dead row's length is 32 bits)
            release(txn, Extent(self.number, self.end + at, min(self.spilled - at, 1 << 30)))
        self.used = 0

    def staged(self, ext: Extent):
        """A chunk this transaction staged and still holds in the buffer, read
        in it (one it spilled is read from the file, as a committed one)."""
        start = self.end + self.spilled
        if self.fd is None or ext.file != self.number or ext.offset < start:
            return None
        lo = ext.offset - start
        return bytes(self.buf[lo: lo + ext.length])

    def _start(self, txn) -> None:
        """A file of this process's own to append to (the one before, if any,
        is done): one no live process holds and with room left, else a new
        one. A worker writes for as long as its volume is mounted, so a new
        file each time would leave a file (and an open descriptor in every
        reader) per container run that wrote a large file."""
        self.close()
        os.makedirs(folder(self.store.path), mode=0o700, exist_ok=True)
        for number, end in _ends(txn).items():
            if end < FILE_MAX and self._take(number, create=False):
                try:
                    # What lies past the end no commit named (a holder died
                    # in its commit): cut, and what a reader read of it.
                    if os.fstat(self.fd).st_size > end:
                        os.ftruncate(self.fd, end)
                except OSError:  # left as it is: another file, or a new one
                    self.close()
                    continue
                self.number, self.end = number, end
                return
        raw = txn.get("meta", b"next_datafile")
        number = schema.read_u64(raw) if raw else 1
        while not self._take(number, create=True):
            number += 1
        self.number, self.end = number, 0

    def _take(self, number: int, create: bool) -> bool:
        """Open file `number` for appending, under its flock; False when it
        is another's (or, not created, is not there any more)."""
        path = path_of(self.store.path, number)
        flags = os.O_WRONLY | os.O_CLOEXEC | os.O_DSYNC | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            fd = os.open(path, flags | os.O_DIRECT, 0o600)
        except (FileExistsError, FileNotFoundError):  # another process's; or gone
            return False
        except OSError as e:
            if e.errno != errno.EINVAL:  # EINVAL: no direct I/O here (tmpfs)
                raise FusevolError(f"cannot open data file {path}: {e.strerror}") from None
            try:
                fd = os.open(path, flags, 0o600)
            except (FileExistsError, FileNotFoundError):
                return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # `tidy` may have found it before the lock and deleted it: gone then.
            if os.fstat(fd).st_nlink == 0:
                raise BlockingIOError
        except BlockingIOError:  # a live writer's, or a process tidying up files
            os.close(fd)
            return False
        self.fd = fd
        return True

    # -- commit -------------------------------------------------------------

    def write_out(self, txn) -> int | None:
        """Write what is staged at the file's end, durably, and put the new
        end in txn (the root, about to commit); the new end, or None if
        nothing was staged. The caller calls `committed` or `dropped` after."""
        if not self.used and not self.spilled:
            return None
        if self.used:
            self._write_buffer()
        new_end = self.end + self.spilled
        txn.put("datafiles", _FILE.pack(self.number), schema.u64(new_end))
        raw = txn.get("meta", b"next_datafile")
        if not raw or schema.read_u64(raw) <= self.number:
            txn.put("meta", b"next_datafile", schema.u64(self.number + 1))
        return new_end

    def _write_buffer(self) -> None:
        """The staged bytes to the disk (O_DSYNC: durable on return), after
        what the transaction spilled, padded to ALIGN."""
        length = -(-self.used // ALIGN) * ALIGN
        self.buf[self.used: length] = bytes(length - self.used)
        view = memoryview(self.buf)[:length]
        at = self.end + self.spilled
        done = 0
        try:
            while done < length:
                done += os.pwrite(self.fd, view[done:], at + done)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace("no space left on the store's disk") from None
            raise FusevolError(f"data file write failed: {e.strerror}") from None
        finally:
            view.release()
        self.spilled += length
        self.used = 0

    def committed(self, new_end: int | None) -> None:
        if new_end is not None:
            self.end = new_end
        self.spilled = self.used = 0

    def dropped(self) -> None:
        """The transaction aborted: what it wrote past the end is no one's,
        and the next one writes over it."""
        self.spilled = self.used = 0

    def give_back(self) -> None:
        """Hand the buffer's pages back to the system (an idle writer)."""
        if not self.used:
            self.buf.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the flock goes with it
            self.fd = None

    def release(self) -> None:
        """close, and the buffer unmapped (the store is closed)."""
        self.close()
        self.buf.close()


# -- reading ------------------------------------------------------------------

class Readers:
    """A process's reads of the data files: chunks read with direct I/O (past
    the page cache) into a buffer of the reading thread's own, hashed and
    copied from there; the chunks one request wants that lie side by side in
    a file (as a sequential write leaves them) in one read (`views`). Each
    file is opened once.

    Measured (bench/datapath.py, a cold 1 GiB read through a mount, A/B
    alternated, the reading threads' CPU per GiB): 0.99-1.29 s against
    1.25-2.52 s with maps of the files (each chunk's pages populated in one
    call, MADV_SEQUENTIAL). perf of the maps: BLAKE3 ran 1.5x slower over
    pages just faulted into the page cache than over the same bytes read
    directly (465 against 319 samples a GiB). Direct reads of one chunk each
    gave that back in waits and the virtual disk's doorbell (1.44-1.69 s),
    and maps populated a request at a time measured 1.32-1.52 s: both halves
    count. Random 4 KiB cold reads: the same IOPS with less CPU (one chunk a
    read either way)."""

    def __init__(self, store_path: str):
        self.store_path = store_path
        self.fds: dict[int, int] = {}
        self.lock = threading.Lock()
        self.local = threading.local()

    def view(self, ext: Extent) -> memoryview:
        """The chunk's stored form (a view of a buffer that stays this
        thread's while a view of it lives); StoreDamaged if it cannot be read."""
        buf, start, got = self._read(ext.file, ext.offset, ext.offset + ext.length)
        lo = ext.offset - start
        if got < lo + ext.length:
            raise StoreDamaged(f"data file {ext.file} ends before a chunk at {ext.offset + ext.length}",
                               reason="missing")
        return memoryview(buf)[lo: lo + ext.length]

    def views(self, exts) -> dict:
        """Extent -> view of each of exts that could be read (the ones left
        out: file missing, cut short or unreadable), a run of them that lie
        side by side in a file read at once."""
        out = {}
        for number, lo, hi, run in _runs(sorted(set(exts))):
            try:
                buf, start, got = self._read(number, lo, hi)
            except StoreDamaged:
                continue  # the caller names the chunks
            whole = memoryview(buf)
            for ext in run:
                if ext.offset + ext.length <= start + got:
                    out[ext] = whole[ext.offset - start: ext.offset - start + ext.length]
        return out

    def _read(self, number: int, lo: int, hi: int) -> tuple[mmap.mmap, int, int]:
        """Bytes lo..hi of a file, the pages around them read into a buffer:
        (the buffer, the file offset it starts at, the bytes read, fewer at
        the file's end)."""
        fd = self.fds.get(number)
        if fd is None:
            fd = self._open(number)
        start = lo - lo % ALIGN
        length = -(-(hi - start) // ALIGN) * ALIGN
        buf = self._buffer(length)
        got = 0
        try:
            with memoryview(buf) as whole:
                while got < length:
                    with whole[got:length] as rest:
                        n = os.preadv(fd, [rest], start + got)
                    if n == 0:
                        break
                    got += n
        except OSError as e:
            raise StoreDamaged(f"data file {number}: bytes at {lo} cannot be read ({e.strerror})",
                               reason="missing") from None
        return buf, start, got

    def _buffer(self, length: int) -> mmap.mmap:
        """A page-aligned buffer (direct I/O's rule) of at least length bytes
        that nothing else refers to: every view of a buffer holds a reference
        to it, so one still read from (a request's chunks joined) is skipped."""
        pool = getattr(self.local, "buffers", None)
        if pool is None:
            pool = self.local.buffers = []
        for i in range(len(pool)):
            if _references(pool, i) == _UNUSED and len(pool[i]) >= length:
                return pool[i]
        buf = mmap.mmap(-1, max(length, RUN_MAX))
        if len(pool) < BUFFERS_KEPT:
            pool.append(buf)
        return buf

    def _open(self, number: int) -> int:
        with self.lock:
            fd = self.fds.get(number)
            if fd is not None:
                return fd
            path = path_of(self.store_path, number)
            try:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
                except OSError as e:
                    if e.errno != errno.EINVAL:  # EINVAL: no direct I/O here (tmpfs)
                        raise
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise StoreDamaged(f"data file {number} is missing", reason="missing") from None
            except OSError as e:
                raise StoreDamaged(f"data file {number} cannot be opened ({e.strerror})",
                                   reason="missing") from None
            self.fds[number] = fd
            return fd

    def close(self) -> None:
        with self.lock:
            for fd in self.fds.values():
                os.close(fd)
            self.fds.clear()


RUN_MAX = 2 << 20      # bytes read at once (a 1 MiB request's chunks and the pages around them)
RUN_GAP = MIN_LENGTH   # a gap between two chunks read through rather than in a read of its own
BUFFERS_KEPT = 4       # a thread's buffers kept for its next reads


def _references(pool: list, i: int) -> int:
    return sys.getrefcount(pool[i])


# What _references counts for a buffer that only its pool holds, found the
# same way (what the interpreter itself counts differs between versions).
_UNUSED = _references([mmap.mmap(-1, ALIGN)], 0)


def _runs(exts):
    """(file, first byte, end, extents) of each run of sorted extents that lie
    side by side (gaps under RUN_GAP), at most RUN_MAX long."""
    run: list = []
    for ext in exts:
        if run and (ext.file != run[0].file or ext.offset - end >= RUN_GAP
                    or ext.offset + ext.length - run[0].offset > RUN_MAX - 2 * ALIGN):
            yield run[0].file, run[0].offset, end, run
            run = []
        if not run:
            end = ext.offset
        run.append(ext)
        end = max(end, ext.offset + ext.length)
    if run:
        yield run[0].file, run[0].offset, end, run


def read(txn, ext: Extent):
    """A chunk's stored form from its data file (a view of a reading
    buffer, see Readers), or from the buffer of the transaction that staged it."""
    writer = getattr(txn.root(), "data", None)
    if writer is not None:
        data = writer.staged(ext)
        if data is not None:
            return data
    return txn.store.data_readers.view(ext)


def read_many(txn, exts) -> dict:
    """read's answer for each of exts that can be read (extent -> stored
    form), the ones side by side in a file read at once."""
    out = {}
    writer = getattr(txn.root(), "data", None)
    if writer is not None:
        for ext in exts:
            data = writer.staged(ext)
            if data is not None:
                out[ext] = data
    out.update(txn.store.data_readers.views([ext for ext in exts if ext not in out]))
    return out


# -- dead space -----------------------------------------------------------------

def release(txn, ext: Extent) -> None:
    """A chunk's range is dead once txn commits."""
    key = _DEAD.pack(txn.root().txn.id(), ext.file, ext.offset)
    txn.put("datadead", key, _LENGTH.pack(ext.length))


def dead_bytes(txn) -> int:
    """Bytes of ranges let go of and not punched yet."""
    return sum(_LENGTH.unpack(bytes(v))[0] for _, v in txn.scan("datadead", b""))


def reclaim(txn, limit: int = RECLAIM_MAX, synced: bool = False) -> int:
    """Punch the dead ranges no reader can see any more out of their files
    and drop their rows (in txn, a write transaction); bytes punched.
    `synced`: the store was synced since its last commit (Store.sync), so
    that commit is durable too."""
    cur = txn.cursor("datadead")
    if not cur.first():
        return 0
    # The commit that let go of a range must be durable: the commit after it
    # synced its meta page, or a sync did.
    bound = txn.txn.id() - (1 if synced else 2)
    if _DEAD.unpack(bytes(cur.key()))[0] > bound:
        return 0
    from .env import Unreadable, oldest_reader
    try:
        oldest = oldest_reader(txn.store)
    except Unreadable:
        return 0
    if oldest is not None:
        bound = min(bound, oldest)
    ranges = []
    for key, value in cur:
        freed_by, number, offset = _DEAD.unpack(bytes(key))
        if freed_by > bound or len(ranges) >= limit:
            break
        ranges.append((number, offset, _LENGTH.unpack(bytes(value))[0], bytes(key)))
    punched = _punch(txn.store.path, sorted(r[:3] for r in ranges))
    for r in ranges:
        txn.delete("datadead", r[3])
    return punched


def reclaim_all(store) -> dict:
    """Punch every dead range no reader sees (gc, the idle upkeep): in one
    write transaction, the last commit made durable first (no other can
    commit meanwhile: the writer's lock is held)."""
    with store.read() as txn:
        if not txn.cursor("datadead").first():
            return {"punched_bytes": 0}
    with store.write(durable=False) as txn:
        store.sync()
        return {"punched_bytes": reclaim(txn, limit=1 << 30, synced=True)}


def tidy(store, live_files) -> dict:
    """Files no live process writes (no flock held), gc's part: bytes past
    the committed end cut off (written by a commit that did not happen); a
    file deleted when no commit ever named it, or when no chunk is in it any
    more and nothing of it waits to be punched (so no reader can see a chunk
    there: see `reclaim`). `live_files(txn)`: the numbers of the files
    chunks are in, as txn sees them.

    Each file is judged on one snapshot (its end, its chunks, its ranges
    waiting) and changed only if, under its flock, its end is still the one
    of that snapshot: a writer that appended to it and let go of it since
    committed chunks the snapshot did not see."""
    trimmed = deleted = 0
    with store.read() as txn:
        ends = _ends(txn)
        waiting = {_DEAD.unpack(bytes(k))[1] for k, _ in txn.scan("datadead", b"")}
        live = live_files(txn)
    # Listed after the snapshot: a file exists before a commit names it, so
    # a file the snapshot names and the listing lacks was deleted before.
    try:
        names = sorted(int(n) for n in os.listdir(folder(store.path)) if n.isdigit())
    except FileNotFoundError:
        names = []
    gone = [n for n in ends if n not in names]
    for number in names:
        try:
            fd = os.open(path_of(store.path, number), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer lives
            with store.read() as txn:
                end = _ends(txn, number).get(number)
            if end != ends.get(number):
                continue  # written since the snapshot
            if end is None or (number not in live and number not in waiting):
                os.unlink(path_of(store.path, number))
                deleted += 1
                if end is not None:
                    gone.append(number)
            elif os.fstat(fd).st_size > end:
                os.ftruncate(fd, end)
                trimmed += 1
        finally:
            os.close(fd)
    if gone:
        with store.write(durable=False) as txn:
            for number in gone:
                txn.delete("datafiles", _FILE.pack(number))
    return {"files_trimmed": trimmed, "files_deleted": deleted}


def _ends(txn, number: int | None = None) -> dict[int, int]:
    """Committed ends of the data files (or of one), by file number."""
    if number is not None:
        raw = txn.get("datafiles", _FILE.pack(number))
        return {} if raw is None else {number: schema.read_u64(raw)}
    return {_FILE.unpack(bytes(k))[0]: schema.read_u64(v) for k, v in txn.scan("datafiles", b"")}


def _punch(store_path: str, ranges) -> int:
    """fallocate(PUNCH_HOLE) each run of adjacent ranges; bytes punched."""
    done = 0
    runs = []
    for number, offset, length in ranges:
        if runs and runs[-1][0] == number and runs[-1][1] + runs[-1][2] == offset:
            runs[-1][2] += length
        else:
            runs.append([number, offset, length])
    fds = {}
    try:
        for number, offset, length in runs:
            fd = fds.get(number)
            if fd is None:
                try:
                    fd = fds[number] = os.open(path_of(store_path, number), os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
            try:
                lo, hi = _widened(fd, offset, offset + length)
                _fallocate(fd, lo, hi - lo)
                done += length
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
    finally:
        for fd in fds.values():
            os.close(fd)
    return done


def _widened(fd: int, lo: int, hi: int) -> tuple[int, int]:
    """A dead range [lo, hi) with the rest of the block at either end when
    the neighbour that shares that block was punched already. A punch frees
    only whole blocks: without this, the block two chunks share stays on the
    disk when they die at different times (measured: 2 MiB of 64 MiB given
    back stayed, a block a chunk). A chunk spans more than 16 blocks, so the
    block beyond the shared one is the neighbour's alone: a hole there says
    it was punched (a cheap look, no read). What decides is that the rest of
    the shared block reads as zeros, as a punched neighbour's part does: then
    the punch changes no byte any chunk holds, even on a filesystem that
    keeps a block of zeros as a hole."""
    head = lo - lo % ALIGN
    if head != lo and head >= ALIGN and _is_hole(fd, head - ALIGN) and _zeros(fd, head, lo):
        lo = head
    tail = hi + -hi % ALIGN
    if tail != hi and _is_hole(fd, tail) and _zeros(fd, hi, tail):
        hi = tail
    return lo, hi


def _is_hole(fd: int, offset: int) -> bool:
    try:
        return os.lseek(fd, offset, os.SEEK_HOLE) == offset
    except OSError:  # past the file's end (ENXIO), or no way to tell
        return False


def _zeros(fd: int, lo: int, hi: int) -> bool:
    data = os.pread(fd, hi - lo, lo)
    return len(data) == hi - lo and data == bytes(hi - lo)


def _fallocate(fd: int, offset: int, length: int) -> None:
    from .env import fallocate
    fallocate(fd, offset, length, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)


def disk_bytes(store_path: str) -> int:
    """What the data files take on the disk."""
    total = 0
    try:
        with os.scandir(folder(store_path)) as entries:
            for entry in entries:
                try:
                    total += entry.stat().st_blocks * 512
                except FileNotFoundError:
                    pass
    except FileNotFoundError:
        pass
    return total

