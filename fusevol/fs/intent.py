"""fsync of small writes through the volume's intent log (store/intentlog.py).

An fsync whose file holds at most LOG_UP_TO bytes written since they were
last made durable appends one record (those bytes, the file's size and times)
to the log and syncs the log: one write and one fdatasync, shared by the
fsyncs that come meanwhile (group commit). The bytes stay in the file's
buffers and reach the store like any write, in a later commit.

Such an fsync is taken only while every operation queued since the last
durable commit stores file data or sets times (the runner's `loggable`): a
change of names, modes or sizes before it must be durable too, and goes
through a checkpoint. A checkpoint flushes every open file, records in the same
commit the last log record it covers, and commits durably; fsyncs that cannot
be logged, sync and syncfs are checkpoints, and one runs every few seconds
while records are not covered. Whatever a commit made durable is never undone
by an older record: a durable commit that a file's fsync relied on is always a
checkpoint, and a truncate of a file with records waits for one first.

The bytes of a file "written since they were durable" are kept as ranges
(`pending`), per inode and not per open file: data flushed at close without
an fsync is not durable either, and a later fsync of the file covers it.
"""

import errno
import logging
import os
import select
import time

import trio

from ..errors import FsError
from ..store import intentlog
from ..store.intentlog import Record

log = logging.getLogger(__name__)

# Bytes of a file an fsync logs at most; a larger fsync stores chunks (writing
# its bytes twice, to the log and then the store, would cost more).
LOG_UP_TO = 256 << 10
# Past this many bytes in the log file being written, fsyncs checkpoint.
FILE_MAX = 16 << 20
CHECKPOINT_EVERY = float(os.environ.get("FUSEVOL_INTENT_CHECKPOINT_EVERY", "5"))
# Ranges kept per file at most; more are folded into one that spans them all.
RANGES_MAX = 1024
# Files with ranges kept, past which the periodic checkpoint runs even with no
# record to cover (it makes their data durable and forgets their ranges).
PENDING_FILES_MAX = 4096
# How long the store's batches of file data and times alone linger (runner.py).
LOGGABLE_LINGER = 0.05
# A log file is laid out (zeros, synced) this far ahead of its last record, this
# much at a time, in a thread: a record that grew the file would cost its sync a
# journal commit. Up to the most a file can hold (a record may start at FILE_MAX).
LAY_OUT_AHEAD = 2 << 20
LAY_OUT_STEP = 4 << 20
LAID_OUT_MAX = FILE_MAX + 2 * LOG_UP_TO
# Scheduler turns an fsync gives others at most before it syncs the log.
GROUP_TURNS = 8


class _LogFile:
    __slots__ = ("path", "fd", "offset", "last_lsn", "unsynced", "laid_out", "laying_out")

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None
        self.offset = 0
        self.last_lsn = 0  # the last record written to it since it was started again
        self.unsynced = False
        self.laid_out = 0  # the file's size: zeros synced, or records
        self.laying_out: trio.Event | None = None  # set when the zeros under way are synced


class IntentLog:
    def __init__(self, store_path: str, inodes, runner, lock_fd: int, applied: int):
        self.store_path = store_path
        self.inodes = inodes
        self.vid = inodes.vid
        self.runner = runner
        self._lock_fd = lock_fd
        self.lsn = self.synced = self.applied = applied
        self.pending: dict[int, list[list[int]]] = {}
        self.logged: set[int] = set()  # files with records a checkpoint has not covered
        self.files = [_LogFile(p) for p in intentlog.file_paths(store_path, self.vid)]
        self.current = 0
        self.failed: str | None = None
        self._syncing: trio.Event | None = None
        self._checkpointing = trio.Lock()
        self._lay_out_wanted = trio.Event()
        self._requests: select.poll | None = None  # the FUSE session's, when known
        self._fsyncs = 0  # logged fsyncs under way (tasks that may append a record)
        self.counts = {"logged": 0, "stored": 0, "checkpoints": 0, "log_syncs": 0}
        runner.loggable_linger = LOGGABLE_LINGER

    @classmethod
    def open(cls, store_path: str, inodes, runner) -> "IntentLog":
        """Take the volume's log (before the worker serves), apply what it
        holds and start it empty; the runner must be running."""
        fd = intentlog.lock(store_path, inodes.vid)
        try:
            paths = intentlog.file_paths(store_path, inodes.vid)
            if not any(os.path.exists(path) for path in paths):
                # Nothing logged (the usual start): a read, not a durable
                # commit under the store's write lock, on the way to serving.
                with runner.store.read() as txn:
                    return cls(store_path, inodes, runner, fd, intentlog.applied(txn, inodes.vid))
            applied = runner.run_sync(intentlog.replay, store_path, inodes, durable=True)
            for path in paths:
                try:
                    os.unlink(path)  # what it held is in the store, durably
                except FileNotFoundError:
                    pass
        except BaseException:
            os.close(fd)
            raise
        return cls(store_path, inodes, runner, fd, applied)

    def close(self) -> None:
        """Let go of the log at the worker's end: deleted if a checkpoint
        covers it, else left for the next mount (or process) to apply."""
        for f in self.files:
            if f.fd is not None:
                os.close(f.fd)
                f.fd = None
        if self.lsn == self.applied and self.failed is None:
            intentlog.remove(self.store_path, self.vid, self._lock_fd)
        else:
            os.close(self._lock_fd)

    # -- what the file data layer tells -------------------------------------------------

    def wrote(self, ino: int, start: int, end: int) -> None:
        ranges = self.pending.get(ino)
        if not ranges:
            self.pending[ino] = [[start, end]]
            return
        last = ranges[-1]
        if last[0] <= start <= last[1]:
            last[1] = max(last[1], end)
        elif len(ranges) < RANGES_MAX:
            ranges.append([start, end])
        else:
            self.pending[ino] = [[min(r[0] for r in ranges + [[start, end]]),
                                  max(r[1] for r in ranges + [[start, end]])]]

    def truncated(self, ino: int, size: int) -> None:
        ranges = self.pending.get(ino)
        if ranges:
            kept = [[a, min(b, size)] for a, b in ranges if a < size]
            if kept:
                self.pending[ino] = kept
            else:
                del self.pending[ino]

    def _give_back(self, ino: int, ranges) -> None:
        if ranges:
            self.pending[ino] = ranges + self.pending.get(ino, [])

    def requests_from(self, fuse_fd: int | None) -> None:
        """The session's /dev/fuse: an fsync alone (nothing ready to run, no
        request waiting to be read) syncs without a scheduler turn first."""
        if fuse_fd is not None:
            self._requests = select.poll()
            self._requests.register(fuse_fd, select.POLLIN)

    async def _let_others_append(self) -> None:
        """Before a sync: scheduler turns while tasks are ready to run or
        requests wait to be read (at most GROUP_TURNS), so that fsyncs sent
        meanwhile append their records and share the sync. Reading a request
        takes turns of its own (epoll wakes pyfuse3's reader, which then reads
        and runs it): one turn let 8 writers fsync'ing at once share nothing
        (799 syncs for 800 fsyncs). An fsync alone syncs at once: with no
        other logged fsync under way, no task can append (trio's statistics,
        built afresh each call, are not asked then: pgbench's fsyncs come one
        at a time)."""
        if self._requests is None:  # (no session known: one turn)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        for _ in range(GROUP_TURNS):
            if not ((self._fsyncs > 1 and trio.lowlevel.current_statistics().tasks_runnable)
                    or self._requests.poll(0)):
                return
            await trio.lowlevel.cancel_shielded_checkpoint()

    # -- fsync -----------------------------------------------------------------------

    def _quiet(self) -> bool:
        """Whether nothing but file data and times changed since the last
        durable commit (see the module's docstring)."""
        runner = self.runner
        return runner.broken is None and runner.last_unloggable <= runner.durable_seq

    async def fsync(self, fd, files: dict) -> None:
        """Make the file's data and attributes durable."""
        self._fsyncs += 1
        try:
            await self._fsync(fd, files)
        finally:
            self._fsyncs -= 1

    async def _fsync(self, fd, files: dict) -> None:
        if self._checkpointing.locked():
            # It took every file's ranges: they are durable once it ends (or
            # given back if it fails), not before.
            async with self._checkpointing:
                pass
        ino = fd.ino
        ranges = _merged(self.pending.get(ino) or [])
        runner = self.runner
        if not ranges and runner.durable_seq >= runner.applied == runner.queued:
            return  # nothing of it (nor anything else) changed since the last durable commit
        if (self.failed is not None or fd.error is not None or not self._quiet()
                or sum(b - a for a, b in ranges) > LOG_UP_TO
                or self.files[self.current].offset > FILE_MAX):
            await self._stored_fsync(fd, files)
            return
        captured = self.pending.pop(ino, None)
        truncations = fd.truncations
        try:
            await self._ensure_files()
        except OSError as e:  # (a full disk): fsyncs store chunks
            self._fail(f"cannot lay out the intent log: {e}")
            self._give_back(ino, captured)
            await self._stored_fsync(fd, files)
            return
        try:
            pieces = [(a, await fd.read(a, b - a)) for a, b in ranges]
            # Its times, to read only: the shared decoded row when the worker holds it.
            node = self.runner.cache.decoded_if_held(*self.inodes.inode_row(ino))
            if node is None:
                node = await self.runner.read(self.inodes.peek, ino)
        except BaseException:
            self._give_back(ino, captured)
            raise
        if await self._waited_for_room(intentlog.encoded_size(pieces)):
            # A newer fsync of these bytes may have logged them meanwhile:
            # this record, older, must not come after its record. Again.
            self._give_back(ino, captured)
            await self._fsync(fd, files)
            return
        # Every await may have let a change in: check again, with no await
        # between the check and the append.
        if (fd.truncations != truncations or fd.error is not None or not self._quiet()
                or self.failed is not None):
            self._give_back(ino, captured)
            await self._stored_fsync(fd, files)
            return
        mtime_ns, ctime_ns = node.mtime_ns, node.ctime_ns
        if not fd.writeback_cache and fd.times_pending:
            mtime_ns = ctime_ns = time.time_ns()  # what the flush would set
        rec = Record(self.lsn + 1, ino, fd.size, mtime_ns, ctime_ns,
                     [(a, data) for a, data in pieces if data])
        try:
            self._append(rec)
        except OSError as e:
            self._fail(f"cannot write the intent log: {e}")
            self._give_back(ino, captured)
            await self._stored_fsync(fd, files)
            return
        self.logged.add(ino)
        self.counts["logged"] += 1
        await self._durable(rec.lsn)

    async def _stored_fsync(self, fd, files: dict) -> None:
        """The fsync without the log: the file's blocks stored and committed
        durably; a checkpoint when records are not covered yet."""
        self.counts["stored"] += 1
        if self.lsn > self.applied:
            await self.checkpoint(files)
            return
        captured = self.pending.pop(fd.ino, None)
        try:
            await fd.flush(durable=True)
        except BaseException:
            self._give_back(fd.ino, captured)
            raise

    async def before_truncate(self, ino: int, files: dict) -> None:
        """A truncate stored while a record of the file is not covered could be
        undone in part by that record after a crash: checkpoint first."""
        if ino in self.logged:
            await self.checkpoint(files)

    # -- checkpoints ------------------------------------------------------------------

    async def checkpoint(self, files: dict, last=None):
        """Store every open file's buffers and commit durably, with the last
        record the commit covers: the log up to it is free again. `last`: an
        async function that does that commit itself (ops.flush_all); its result."""
        async with self._checkpointing:
            upto = self.lsn
            old, other = self.current, 1 - self.current
            switched = upto > self.applied and self.files[other].last_lsn <= self.applied
            if switched:  # new records go to the other file, from its start
                self.current = other
                self.files[other].offset = 0
            taken, self.pending = self.pending, {}
            logged, self.logged = self.logged, set()
            try:
                for fd in list(files.values()):
                    await fd.flush()
                if upto > self.applied:
                    await self.runner.run(intentlog.set_applied, self.vid, upto,
                                          foreseen=True, loggable=True)
                done = await (last() if last is not None else self.runner.sync())
            except BaseException:
                for ino, ranges in taken.items():
                    self._give_back(ino, ranges)
                self.logged |= logged
                raise
            self.applied = max(self.applied, upto)
            self.counts["checkpoints"] += 1
            if not switched and self.files[old].last_lsn <= upto:
                self.files[old].offset = 0  # nothing past what is covered: start again
            return done

    async def run_checkpoints(self, files: dict) -> None:
        """Keep the log short and the logged data stored, and lay its files out
        ahead of the records (a task of the mount)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._lay_out_when_wanted)
            while True:
                await trio.sleep(CHECKPOINT_EVERY)
                if self.lsn > self.applied or len(self.pending) > PENDING_FILES_MAX:
                    try:
                        await self.checkpoint(files)
                    except Exception as e:  # reported by the next fsync that needs it
                        log.warning("intent log checkpoint failed: %s", e)

    # -- the files --------------------------------------------------------------------

    async def _ensure_files(self) -> None:
        if self.files[0].fd is None or self.files[1].fd is None:
            await trio.to_thread.run_sync(self._open_files)

    def _open_files(self) -> None:
        for f in self.files:
            if f.fd is None:
                fd = os.open(f.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    size = os.fstat(fd).st_size
                    if size < intentlog.PREALLOCATE:
                        _lay_out(fd, size, intentlog.PREALLOCATE - size)
                        size = intentlog.PREALLOCATE
                except BaseException:
                    os.close(fd)
                    raise
                f.laid_out = size
                f.fd = fd

    async def _waited_for_room(self, size: int) -> bool:
        """Wait while the next record would reach into zeros being laid out
        (they would be written over it); whether it waited."""
        waited = False
        while True:
            f = self.files[self.current]
            event = f.laying_out
            if event is None or f.offset + size <= f.laid_out:
                return waited
            await event.wait()
            waited = True

    async def _lay_out_when_wanted(self) -> None:
        while True:
            await self._lay_out_wanted.wait()
            self._lay_out_wanted = trio.Event()
            for f in self.files:
                while (f.fd is not None and f.laid_out < LAID_OUT_MAX
                       and f.offset + LAY_OUT_AHEAD > f.laid_out):
                    start, event = f.laid_out, trio.Event()
                    size = min(LAY_OUT_STEP, LAID_OUT_MAX - start)
                    f.laying_out = event
                    try:
                        await trio.to_thread.run_sync(_lay_out, f.fd, start, size)
                    except OSError as e:  # (a full disk): records grow the file
                        log.warning("cannot lay out the intent log further: %s", e)
                        return
                    finally:
                        f.laying_out = None
                        event.set()
                    f.laid_out = max(f.laid_out, start + size)

    def _append(self, rec: Record) -> None:
        body, digest = parts = intentlog.encode_parts(rec)
        size = len(body) + len(digest)
        f = self.files[self.current]
        written = os.pwritev(f.fd, parts, f.offset)
        if written != size:
            raise OSError(errno.EIO, "short write")
        f.offset += size
        f.last_lsn = rec.lsn
        f.unsynced = True
        self.lsn = rec.lsn
        if f.offset > f.laid_out:
            f.laid_out = f.offset  # grown by the record: lay out only past it
        if f.offset + LAY_OUT_AHEAD > f.laid_out and f.laid_out < LAID_OUT_MAX:
            self._lay_out_wanted.set()

    async def _durable(self, lsn: int) -> None:
        """Return once record `lsn` is on disk; fsyncs that come while the log
        is being synced share the next sync.

        The sync runs on this (the FUSE) thread, as a C FUSE server's would:
        handing it to a thread and back cost two thread wakeups per fsync,
        0.5 ms at the median and 1.7 ms on average of pgbench's fsyncs on a
        loaded machine, a third of what the sync itself took. fdatasync lets go
        of the GIL: the store thread goes on meanwhile. Fsyncs whose tasks are
        ready to run, or whose requests wait to be read, append their records
        first (_let_others_append), and that sync covers them."""
        while self.synced < lsn:
            if self.failed is not None:
                raise FsError(errno.EIO, self.failed)
            if self._syncing is not None:
                await self._syncing.wait()
                continue
            event = self._syncing = trio.Event()
            await self._let_others_append()
            upto = self.lsn
            fds = [f.fd for f in self.files if f.unsynced]
            for f in self.files:
                f.unsynced = False
            try:
                _fdatasync_all(fds)
                self.counts["log_syncs"] += 1
            except OSError as e:
                # Whether the records reached the disk is unknown: from now on
                # every fsync checkpoints, which covers them.
                self._fail(f"cannot sync the intent log: {e}")
                raise FsError(errno.EIO, self.failed) from None
            finally:
                self._syncing = None
                event.set()
            self.synced = max(self.synced, upto)

    def _fail(self, why: str) -> None:
        if self.failed is None:
            log.error("%s; fsyncs store chunks from now on", why)
            self.failed = why


def _lay_out(fd: int, start: int, size: int) -> None:
    if os.pwrite(fd, bytes(size), start) != size:
        raise OSError(errno.ENOSPC, "short write")
    os.fdatasync(fd)


def _fdatasync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fdatasync(fd)


def _merged(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if a >= b:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]
