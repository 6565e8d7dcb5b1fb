"""Runs a worker's store operations on one thread, batching them into few commits.

Every operation runs in a nested transaction of a shared write transaction, so
each one is atomic while a batch of them costs one commit (one fsync). The
batch is committed once no operation came for `linger` seconds, once it is
`max_age` old, or for an operation that asks to be durable (fsync) once the
operations queued behind it ran too, so that fsyncs that come together share
one durable commit (group commit).
An LMDB write transaction must end on the thread that began it, hence the
dedicated thread; trio waits for each answer without blocking its loop.

Operations that return before the commit are as durable as a write(2) that
has not been fsync'ed: a crash may undo them, never half of one of them.

The rows each operation writes reach the worker's RowCache before its caller
resumes, so that `read` can answer from the trio thread (see cache.py), and
`change` can work a change out there and answer at once (see speculate.py).
Every operation gets a sequence number in the order it is queued; the store
thread applies them in that order.

A change is worked out on the trio thread only while no operation that may
change names or make inodes exist is queued (`run` unless `foreseen`): one
that only rewrites an inode's data or attributes cannot make a change worked
out meanwhile fail, only run again (speculate.py).
"""

import collections
import contextlib
import errno
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time

import trio

from ..errors import FsError, FusevolError
from ..store import Store, Txn
from ..store.env import SPACE_RESERVE
from ..store.workerrows import WORKER_TABLES
from .cache import NeedsStore, RowCache
from .space import FAR_FROM_FULL, FREE_FRESH_FOR
from . import heap, speculate
from .speculate import SpecTxn

log = logging.getLogger(__name__)

_STOP = object()
_REPLAY = object()  # the function of a queued change answered ahead (see _replay)
_SYNC = object()  # ...of a sync: it opens no batch (see _commit_batch)
# Changes worked out ahead of the store thread, at most: past this many, a
# change waits for the store thread like any other operation (back-pressure).
MAX_AHEAD = 512
# Free space a flush answered ahead leaves beyond the store's own reserve:
# the disk may fill from elsewhere before the store thread takes it.
AHEAD_MARGIN = 32 << 20
# Chunk bytes a batch holds at most before it is committed. LMDB copies each
# value of a write transaction into pages it allocates (malloc) until the
# commit writes them out, so a batch's bytes are the worker's memory: a stream
# of flushes lingering 50 ms apart (with the intent log) made batches of up to
# 88 MiB and a peak RssAnon of 220-260 MiB writing 1 GiB.
BATCH_BYTES_MAX = int(os.environ.get("FUSEVOL_BATCH_BYTES_MAX", 16 << 20))
# After this many chunk bytes committed, the store thread gives the heap's free
# memory back to the system once it has been idle for GIVE_BACK_AFTER seconds
# (see heap.py): not while writes stream in, which would take it again.
GIVE_BACK_BYTES = 32 << 20
GIVE_BACK_AFTER = 1.0
# Durable operations one commit waits for, at most, while more work is queued.
GROUP_COMMIT_MAX = 64
# Seconds between the signals that end a FUSE read blocked with the GIL.
NUDGE_EVERY = 0.1
# The garbage collector's thresholds in a worker (see tune_interpreter).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_interpreter() -> None:
    """The interpreter's settings for a worker.

    The FUSE loop and the store thread share the GIL: hand it over quickly,
    so a request never waits out Python's default 5 ms behind a busy batch.

    Collect garbage rarely: a worker holds many long-lived objects (the row
    cache and its decoded inodes) and makes a few short-lived ones per request,
    rarely in cycles. With Python's default thresholds (700, 10, 10) the collector
    took 40 us of CPU per small file (every full pass walks the whole cache), with
    these 10 us (bench/handlers.py); a young pass then takes a few milliseconds."""
    sys.setswitchinterval(float(os.environ.get("FUSEVOL_SWITCH_INTERVAL", "0.0005")))
    gc.set_threshold(*GC_THRESHOLDS)


class TxnRunner:
    def __init__(self, store: Store, linger: float = 0.005, max_age: float = 0.2,
                 nudge_reads: bool = False):
        self.store = store
        # pyfuse3 reads /dev/fuse holding the GIL once epoll said it was
        # readable; a request withdrawn meanwhile (its caller was killed)
        # leaves that read blocked until the next request comes, and this
        # thread, which needs the GIL to commit, holds the store's write lock
        # all that time: every writer of the store waits. While a batch is
        # open a timer signal (SIGALRM, whose handler the main thread set)
        # ends such a read; pyfuse3 then waits again without the GIL.
        self._nudge_reads = nudge_reads
        # Who holds the write lock, or may: the open batch, another thread of
        # the worker (its idle upkeep, upkeep.py); the timer runs while any does.
        self._nudgers: set[str] = set()
        self._nudge_lock = threading.Lock()
        self.linger = linger
        self.max_age = max_age
        self.broken: Exception | None = None
        # Operations in order; `_wakeups` wakes the thread for them. Changes
        # answered ahead wake it only when it sleeps without a deadline: with
        # a batch open it comes back within `linger` anyway, and a thread woken
        # per change would take the GIL back and forth with the trio thread.
        self._work: collections.deque = collections.deque()
        self._wakeups: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = False
        self._thread = threading.Thread(target=self._loop, name="fusevol-store", daemon=True)
        self._txn: Txn | None = None
        # Rows of the open batch's changes answered ahead, not written to it
        # yet: (table, key) -> (value or None, seq) (speculate.apply, write_rows).
        # Written before anything else reads the batch, and before its commit.
        self._pending: dict = {}
        # Rows of WORKER_TABLES the open batch wrote already, as they stand in
        # it (same form): the pending rows once written, and what every other
        # operation of the batch recorded. The store thread checks a change
        # answered ahead against them without an LMDB read (each lets go of
        # the GIL): a file's let-go writes the pending rows before it runs,
        # so the next unlink's check would read its folder's row back.
        # Nothing else writes those rows while the batch holds the write
        # lock; emptied with the batch.
        self._written: dict = {}
        # Threads that read committed chunks beside the store thread.
        self.read_limiter = trio.CapacityLimiter(4)
        self._started = 0.0
        self.cache = RowCache(store)
        self._reader = self.cache.reader()
        self._seq = 0  # sequence number of the last operation queued
        self.applied = 0  # ...and of the last one the store thread applied
        self._batch_last = 0  # the last operation of the open batch
        self._unforeseen = 0  # queued operations that may change names (see above)
        # Changes answered ahead, run again by the store thread, or waited for.
        self.counts: collections.Counter[str] = collections.Counter()
        # Chunk bytes stored by the open batch and not on disk yet (read by
        # the trio thread to count free space; a stale value is close enough).
        self.pending_bytes = 0
        # Chunk bytes of flushes answered ahead, queued and not stored yet:
        # counted by each thread on its own side, so no count is lost.
        self._ahead_in = 0  # the trio thread's
        self._ahead_out = 0  # the store thread's
        # Operations that asked to be durable, answered by the commit that
        # follows the work queued behind them: fsyncs that come together
        # cost one sync (group commit).
        self._held: list = []
        self._running = None  # the item the store thread is running, until answered
        # Whether the store's last commit is known durable: not at start (a
        # worker killed before this one may have left commits not synced).
        self._synced = False
        # For the intent log (fs/intent.py): the last operation queued that is
        # not `loggable` (it changes more than a file's data or times), and the
        # last one a durable commit covers (written by the store thread).
        self.last_unloggable = 0
        self.durable_seq = 0
        # How long a batch of loggable operations alone lingers (None: as any
        # other). With an intent log no fsync waits for such a batch, and each
        # commit costs a sync of the store file: under a database's stream of
        # fsyncs (each brings the kernel's setattr of the times), commits every
        # few ms competed with the log's own syncs.
        self.loggable_linger: float | None = None
        self._batch_first = 0  # the first operation of the open batch
        self._committed_bytes = 0  # chunk bytes committed since the heap was trimmed
        # Batches committed that changed the volume (not ones of reads alone),
        # for the idle upkeep (upkeep.py): it waits for one, then for quiet.
        self.changes = 0
        self._batch_dirty = False  # the open batch changes something
        self._on_change = None  # called once (store thread) at the next such commit

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Commit what is pending and end the thread."""
        if self._thread.is_alive():
            self._put(_STOP)
            self._thread.join()

    def _enqueue(self, fn, args, durable, reply, foreseen, wake=True, loggable=False) -> int:
        self._seq += 1
        self._unforeseen += not foreseen
        if not loggable:
            self.last_unloggable = self._seq
        self._put((self._seq, fn, args, durable, reply), wake)
        return self._seq

    def _put(self, item, wake: bool = True) -> None:
        self._work.append(item)
        if wake or self._idle:
            self._wakeups.put(None)

    async def run(self, fn, *args, durable: bool = False, foreseen: bool = False,
                  loggable: bool = False):
        """Run fn(txn, *args) on the store thread and return its result.

        `foreseen`: fn changes no names and makes no inode exist (it reads,
        or rewrites data or attributes): changes go on being answered ahead
        meanwhile. `loggable`: fn only reads, or stores file data or sets
        times: an fsync may go to the intent log past it (fs/intent.py)."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box = []
        cache = self.cache

        def reply(outcome):
            box.append(outcome)
            token.run_sync_soon(finish)

        def finish():
            # Callbacks run in the order the operations did: apply rows here,
            # not in the waiting task, which may resume after a later one.
            ok, value, writes = box[0]
            if ok and writes:
                cache.apply(writes, seq)
            self._unforeseen -= not foreseen
            done.set()

        seq = self._enqueue(fn, args, durable, reply, foreseen, loggable=loggable)
        await done.wait()
        ok, value, _ = box[0]
        if ok:
            return value
        raise value

    def submit(self, fn, *args) -> None:
        """Queue fn(txn, *args) on the store thread without waiting for it:
        work nobody waits for, such as giving back a deleted file's data (a
        foreseen operation, see run); an error is logged."""
        cache = self.cache
        seq = self._seq + 1  # what _enqueue numbers it: the store thread may answer first

        def reply(outcome):
            # No trio wakeup: nobody waits, and the rows join the cache before
            # its next read (a wakeup per deleted file cost a socket write, an
            # epoll round and a GIL handoff).
            ok, value, writes = outcome
            if ok and writes:
                cache.apply_later(writes, seq)
            elif not ok:
                log.warning("background store operation %s failed: %s",
                            getattr(fn, "__name__", fn), value)

        self._enqueue(fn, args, False, reply, True, wake=False)

    async def wait_changed(self, seen: int) -> None:
        """Return once `changes` is no longer `seen`: one wakeup of the trio
        thread per wait, none per commit."""
        if self.changes != seen:
            return
        token = trio.lowlevel.current_trio_token()
        event = trio.Event()

        def wake():
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)

        self._on_change = wake
        try:
            if self.changes == seen:  # not committed between the check and the hook
                await event.wait()
        finally:
            self._on_change = None

    def wrote_since(self, seen: int) -> bool:
        """Whether the volume was changed since `changes` was `seen`, or is
        being changed (a batch that changes it is open); any thread."""
        return self.changes != seen or self._batch_dirty

    @property
    def queued(self) -> int:
        """Sequence number of the last operation queued."""
        return self._seq

    @property
    def unstored_bytes(self) -> int:
        """Chunk bytes taken and not on disk yet (for the space budget)."""
        return self.pending_bytes + self._ahead_in - self._ahead_out

    def _room(self, incoming: int) -> bool:
        """Whether `incoming` chunk bytes surely fit on the store's disk, with
        everything queued ahead and a margin on top of the store's own reserve."""
        ours = incoming + SPACE_RESERVE + AHEAD_MARGIN + self.unstored_bytes
        return (ours + FAR_FROM_FULL <= self.store.disk_free(max_age=FREE_FRESH_FOR)
                or ours <= self.store.disk_free())

    async def change(self, fn, *args, foreseen: bool = False, loggable: bool = False):
        """fn(txn, *args) for an fn that changes the volume: worked out on this
        thread and answered at once when the cache allows (speculate.py), else
        run on the store thread (see run for `foreseen`). fn may run twice: it
        must do the same given the same rows and time (txn.now_ns)."""
        if self.broken is not None:
            raise _error_mode(self.broken)
        if not self._unforeseen and self._seq - self.applied < MAX_AHEAD:
            # The number it gets if answered ahead: nothing is queued meanwhile
            # (fn cannot await), and its rows carry it into the cache.
            seq = self._seq + 1
            spec = SpecTxn(self.cache, time.time_ns(), seq, self._room, self._reader)
            try:
                result = fn(spec, *args)
            except NeedsStore:
                pass
            else:
                self._seq = seq
                if not loggable:
                    self.last_unloggable = seq
                self._ahead_in += spec.deferred_bytes
                self.counts["ahead"] += 1
                self.cache.apply_newest(spec.writes)
                # (_put without a wakeup, inline: every change answered ahead comes here)
                self._work.append((seq, _REPLAY, (spec, fn, args), False, self._replay_done))
                if self._idle:
                    self._wakeups.put(None)
                return result
            finally:
                self._reader.close()
        self.counts["waited"] += 1
        return await self.run(fn, *args, foreseen=foreseen, loggable=loggable)

    def _replay_done(self, outcome) -> None:
        """On the store thread, after a change worked out ahead was applied."""
        ok, value, _ = outcome
        if not ok and self.broken is None:
            # The kernel was told it succeeded: stop rather than let the
            # kernel's view and the store drift apart.
            log.critical("a change answered ahead failed in the store, volume is now "
                         "read-only until remounted: %s", value)
            self.broken = value

    def _replay(self, spec: SpecTxn, fn, args):
        """On the store thread: apply a change answered ahead. Its collected
        rows join the batch's pending rows, written once each before anything
        else reads the batch (_write_pending), with no nested transaction:
        they are puts that cannot fail half way on their own (LMDB failing in
        between breaks the batch). A change whose rows changed meanwhile runs
        again, atomically, at its first time."""
        txn = self._txn
        self._ahead_out += spec.deferred_bytes
        if speculate.unchanged(txn, spec, self._pending, self.cache.counter_row, self.cache.owner,
                               self._written):
            # Its rows joined the cache when it was answered: they are not
            # recorded again.
            try:
                speculate.apply(txn, spec, self._pending)
            except BaseException as e:  # part of it is in the batch: drop the batch
                self._abort_batch(e)
                raise
            return True, None, None
        log.info("%s: rows changed since it was answered (a snapshot?); ran it again",
                 getattr(fn, "__name__", fn))
        self._write_pending()
        with self.store.nested(txn) as child:
            child.writes, child.recorded = [], WORKER_TABLES
            child.now_ns = spec.now_ns
            fn(child, *args)
        self._wrote(child.writes)
        # Its rows are the ones to keep: they join the cache before its next
        # read, as the rows of work nobody waits for do (see submit).
        self.counts["again"] += 1
        self.pending_bytes = txn.pending_bytes()
        self.cache.apply_later(child.writes, spec.seq)
        return True, None, None

    def _abort_batch(self, cause: BaseException) -> None:
        """Drop the open batch unstored and stop taking changes (error mode),
        as after a failed commit: it holds part of an operation."""
        log.critical("a change answered ahead could not be applied whole, volume is now "
                     "read-only until remounted: %s", cause)
        if self.broken is None:
            self.broken = cause if isinstance(cause, Exception) else FusevolError(str(cause))
        txn, self._txn = self._txn, None
        self._pending.clear()
        self._written.clear()
        self._batch_dirty = False
        self.store.abort(txn)
        self._nudge("batch", False)

    def _write_pending(self) -> None:
        """Write the rows of changes answered ahead into the open batch."""
        if self._pending:
            try:
                speculate.write_rows(self._txn, self._pending, self._written)
            except BaseException as e:  # part of them is in the batch: drop the batch
                self._abort_batch(e)
                raise

    def _wrote(self, writes) -> None:
        """Rows an operation recorded, (table, key, value or None), now in the batch."""
        written = self._written
        for table, key, value in writes:
            written[table, key] = (value, 0)

    async def read(self, fn, *args):
        """fn(txn, *args) for an fn that only reads: on this thread from the
        cache when it can, else on the store thread. After a failed commit
        (see _commit) this still answers from what is committed and what the
        worker holds: what the disk can still give is served, only writes fail."""
        txn = self._reader  # one for the trio thread: fn cannot await
        try:
            return fn(txn, *args)
        except NeedsStore:
            pass
        finally:
            txn.close()
        return await self.run(fn, *args, loggable=True)

    async def sync(self) -> None:
        """Make every operation run so far durable (one commit, fsync'ed)."""
        await self.run(_SYNC, durable=True, foreseen=True, loggable=True)

    async def run_unrecorded(self, fn, *args, durable: bool = False):
        """run() of an operation whose rows are neither recorded nor kept in
        the worker's copy (a snapshot's tree ids and cleared change notes: a
        row per inode changed since the last one, a million for a first
        snapshot of a million files). The worker's copies of those rows are
        then stale, as after a snapshot by another process: a change worked
        out from one runs again (speculate.py). The batch's record of the
        rows it holds is dropped, so those checks read the batch itself."""
        return await self.run(self._unrecorded, fn, args, durable=durable, foreseen=True)

    def _unrecorded(self, txn, fn, args):
        txn.writes = None
        self._written.clear()
        return fn(txn, *args)

    def run_sync(self, fn, *args, durable: bool = False):
        """The same from a thread that is not trio's (shutdown paths)."""
        event = threading.Event()
        box = []

        def reply(outcome):
            box.append(outcome)
            event.set()

        self._seq += 1
        self.last_unloggable = self._seq
        self._put((self._seq, fn, args, durable, reply))
        event.wait()
        ok, value, writes = box[0]
        if ok and writes:
            self.cache.apply(writes, self._seq)
        if ok:
            return value
        raise value

    def _nudge(self, who: str, on: bool) -> None:
        if not self._nudge_reads:
            return
        with self._nudge_lock:
            was = bool(self._nudgers)
            if on:
                self._nudgers.add(who)
            else:
                self._nudgers.discard(who)
            if on or was != bool(self._nudgers):
                signal.setitimer(signal.ITIMER_REAL, *((NUDGE_EVERY, NUDGE_EVERY)
                                                       if self._nudgers else (0,)))

    @contextlib.contextmanager
    def nudging(self, who: str):
        """For a thread of the worker other than the store thread that takes
        the store's write lock (the idle upkeep): a FUSE read blocked with the
        GIL is ended meanwhile, as while a batch is open (see __init__). The
        thread blocks the timer's signal itself."""
        self._nudge(who, True)
        try:
            yield
        finally:
            self._nudge(who, False)

    # -- the store thread ---------------------------------------------------

    def _loop(self) -> None:
        if self._nudge_reads:  # the timer's signal is for the FUSE thread
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            self._serve()
        except BaseException as e:  # a bug: every caller would wait forever
            log.critical("the store thread failed, volume is now read-only until remounted",
                         exc_info=True)
            if self.broken is None:
                self.broken = FsError(errno.EIO, f"store thread failed: {e!r}")
            self._answer_failed()

    def _answer_failed(self) -> None:
        """After the thread failed: drop the open batch and answer what waits and
        whatever comes with the error, until stopped."""
        if self._txn is not None:
            txn, self._txn = self._txn, None
            self._pending.clear()
            self._written.clear()
            with contextlib.suppress(Exception):
                self.store.abort(txn)
        self._nudge("batch", False)
        failed = (False, _error_mode(self.broken), None)
        waiting = [reply for reply, _ in self._held]
        if self._running is not None:
            waiting.append(self._running[-1])
        self._held, self._running = [], None
        for reply in waiting:
            reply(failed)
        while True:
            while self._work:
                item = self._work.popleft()
                if item is _STOP:
                    return
                item[-1](failed)
            self._wakeups.get()

    def _serve(self) -> None:
        work = self._work
        while True:
            while work:
                item = work.popleft()
                if item is _STOP:
                    self._commit(durable=True)
                    return
                self._running = item
                if item[1] is _REPLAY and self._txn is not None and self.broken is None:
                    self._run_replay(item[0], *item[2])
                else:
                    self._run_item(*item)
                item = self._running = None  # a flush's buffers go now, not with the next item
            if self._held:  # durable operations that waited for the queue to empty
                self._commit(durable=True)
            timeout = self._wait_time()
            self._idle = timeout is None
            give_back = timeout is None and self._committed_bytes >= GIVE_BACK_BYTES
            if give_back:  # idle (every item wakes it), until the heap is trimmed
                timeout = GIVE_BACK_AFTER
            if work:  # queued after the check above, perhaps without a wakeup
                self._idle = False
                continue
            try:
                self._wakeups.get(timeout=timeout)
            except queue.Empty:
                if work:
                    pass
                elif give_back:
                    heap.give_back()
                    writer = self.store.data_writer()
                    if writer is not None:
                        writer.give_back()
                    self._committed_bytes = 0
                else:  # nothing came for `linger`
                    self._commit()
            # Wakeups for items run already: left queued, each would cut a
            # later wait short and hold the batch open past `linger`.
            while not self._wakeups.empty():
                self._wakeups.get_nowait()
            self._idle = False

    def _run_item(self, seq, fn, args, durable, reply) -> None:
        outcome = self._apply(fn, args)
        self._batch_last = self.applied = seq
        if durable:
            self._held.append((reply, outcome))
            self._running = None  # answered with the held ones
            if not self._work or len(self._held) >= GROUP_COMMIT_MAX:
                self._commit(durable=True)
            return  # else answered by the commit once the queued work ran
        self._running = None
        reply(outcome)
        # The batch's commit after the answer: an operation that is not durable
        # waits for no commit (a flush of a streaming write waited for a sync
        # of the whole batch here, 30-250 ms, while the writes behind it
        # stopped). A commit that fails fails every operation after it.
        if self._txn and (self.pending_bytes >= BATCH_BYTES_MAX
                          or time.monotonic() - self._started > self.max_age):
            self._commit()

    def _run_replay(self, seq, spec: SpecTxn, fn, args) -> None:
        """_run_item for a change answered ahead while a batch is open: most
        items, in fewer steps (nobody waits for its answer, and a change that
        deferred no chunk reference stores no bytes)."""
        self._batch_dirty = True
        try:
            self._replay(spec, fn, args)
        except FusevolError as e:
            self._replay_done((False, e, None))
        except Exception as e:  # a bug (as in _apply)
            log.exception("store operation %s failed", getattr(fn, "__name__", fn))
            self._replay_done((False, FsError(errno.EIO, f"internal error: {e}"), None))
        self._batch_last = self.applied = seq
        self._running = None
        txn = self._txn
        if txn is None:  # dropped (error mode)
            return
        if spec.deferred:
            self.pending_bytes = txn.pending_bytes()
        if self.pending_bytes >= BATCH_BYTES_MAX or time.monotonic() - self._started > self.max_age:
            self._commit()

    def _wait_time(self) -> float | None:
        if self._txn is None:
            return None
        linger = self.linger
        if self.loggable_linger is not None and self.last_unloggable < self._batch_first:
            linger = self.loggable_linger
        return max(0.0, min(linger, self._started + self.max_age - time.monotonic()))

    def _apply(self, fn, args):
        """(ok, result or error, rows written)"""
        if self.broken is not None:
            return False, _error_mode(self.broken), None
        try:
            if fn is _SYNC:
                return True, None, None
            if self._txn is None:
                self._txn = self.store.begin_write()
                self._txn.data = self.store.data_writer()  # large chunks to a data file
                self._started = time.monotonic()
                self._batch_first = self.applied + 1
                self._nudge("batch", True)
            if fn is _REPLAY:
                self._batch_dirty = True
                outcome = self._replay(*args)
                self.pending_bytes = self._txn.pending_bytes()
                return outcome
            self._write_pending()
            with self.store.nested(self._txn) as child:
                child.writes, child.recorded = [], WORKER_TABLES
                result = fn(child, *args)
            if child.writes:
                self._wrote(child.writes)
            self.pending_bytes = self._txn.pending_bytes()
            if child.writes or self.pending_bytes:
                self._batch_dirty = True
            return True, result, child.writes
        except FusevolError as e:
            return False, e, None
        except Exception as e:  # a bug: keep serving, answer EIO
            log.exception("store operation %s failed", getattr(fn, "__name__", fn))
            return False, FsError(errno.EIO, f"internal error: {e}"), None

    def _commit(self, durable: bool = False) -> Exception | None:
        """Commit the open batch (durably if an operation waits for that) and
        answer the operations that waited for a durable commit."""
        held, self._held = self._held, []
        try:
            err = self._commit_batch(durable or bool(held))
        except BaseException:
            self._held = held + self._held  # still to answer (see _answer_failed)
            raise
        for reply, outcome in held:
            if err is not None and outcome[0]:
                outcome = (False, err, None)
            reply(outcome)
        return err

    def _commit_batch(self, durable: bool) -> Exception | None:
        if self._txn is None:
            # Nothing open: a sync needs only the last commit on disk, which
            # takes no write lock (its meta page is the one not synced yet).
            if durable and not self._synced:
                try:
                    self.store.sync()
                except Exception as e:
                    log.critical("sync failed, volume is now read-only until remounted: %s", e)
                    self.broken = FsError(errno.EIO, f"store sync failed: {e}")
                    return self.broken
                self._synced = True
            if durable:  # every operation applied is in a commit, now on disk
                self.durable_seq = self.applied
            return None
        try:
            self._write_pending()
        except Exception:  # the batch was dropped (error mode)
            return self.broken
        txn, self._txn = self._txn, None
        self._written.clear()  # the write lock goes: others may write
        try:
            self.store.commit(txn, durable=durable)
            self._synced = durable
            if durable:
                self.durable_seq = self._batch_last
            self._committed_bytes += self.pending_bytes
            self.pending_bytes = 0
            self.cache.committed = self._batch_last
            if self._batch_dirty:
                self.changes += 1
                hook, self._on_change = self._on_change, None
                if hook is not None:
                    hook()
            return None
        except FusevolError as e:
            # Operations of this batch were answered already: stop taking
            # more rather than let the kernel's view and the store drift.
            log.critical("commit failed, volume is now read-only until remounted: %s", e)
            self.broken = e
            return e
        finally:  # the write lock is let go
            self._batch_dirty = False
            self._nudge("batch", False)


def _error_mode(cause: Exception) -> FsError:
    return FsError(errno.EIO, "store is in error mode: " + str(cause))
