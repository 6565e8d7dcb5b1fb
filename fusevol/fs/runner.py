"""Runs a worker's store operations on one thread, batching them into few commits.

Every operation runs in a nested transaction of a shared write transaction, so
each one is atomic while a batch of them costs one commit (one fsync). The
batch is committed once no operation came for `linger` seconds, once it is
`max_age` old, or at once for an operation that asks to be durable (fsync).
An LMDB write transaction must end on the thread that began it, hence the
dedicated thread; trio waits for each answer without blocking its loop.

Operations that return before the commit are as durable as a write(2) that
has not been fsync'ed: a crash may undo them, never half of one of them.

The rows each operation writes reach the worker's RowCache before its caller
resumes, so that `read` can answer from the trio thread (see cache.py).
"""

import errno
import logging
import queue
import threading
import time

import trio

from ..errors import FsError, FusevolError
from ..store import Store, Txn
from .cache import CACHED_TABLES, NeedsStore, RowCache

log = logging.getLogger(__name__)

_STOP = object()


class TxnRunner:
    def __init__(self, store: Store, linger: float = 0.005, max_age: float = 0.2):
        self.store = store
        self.linger = linger
        self.max_age = max_age
        self.broken: Exception | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="fusevol-store", daemon=True)
        self._txn: Txn | None = None
        # Threads that read committed chunks beside the store thread.
        self.read_limiter = trio.CapacityLimiter(4)
        self._started = 0.0
        self.cache = RowCache(store)
        self._batch = 0  # number of the open (or last) batch
        # Chunk bytes stored by the open batch and not on disk yet (read by
        # the trio thread to count free space; a stale value is close enough).
        self.pending_bytes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Commit what is pending and end the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    async def run(self, fn, *args, durable: bool = False):
        """Run fn(txn, *args) on the store thread and return its result."""
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
            ok, value, writes, batch = box[0]
            if ok and writes:
                cache.apply(writes, batch)
            done.set()

        self._queue.put((fn, args, durable, reply))
        await done.wait()
        ok, value, _, _ = box[0]
        if ok:
            return value
        raise value

    async def read(self, fn, *args):
        """fn(txn, *args) for an fn that only reads: on this thread from the
        cache when it can, else on the store thread. After a failed commit
        (see _commit) this still answers from what is committed and what the
        worker holds: what the disk can still give is served, only writes fail."""
        with self.cache.reader() as txn:
            try:
                return fn(txn, *args)
            except NeedsStore:
                pass
        return await self.run(fn, *args)

    async def sync(self) -> None:
        """Make every operation run so far durable (one commit, fsync'ed)."""
        await self.run(_noop, durable=True)

    def run_sync(self, fn, *args, durable: bool = False):
        """The same from a thread that is not trio's (shutdown paths)."""
        event = threading.Event()
        box = []

        def reply(outcome):
            box.append(outcome)
            event.set()

        self._queue.put((fn, args, durable, reply))
        event.wait()
        ok, value, writes, batch = box[0]
        if ok and writes:
            self.cache.apply(writes, batch)
        if ok:
            return value
        raise value

    # -- the store thread ---------------------------------------------------

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._wait_time())
            except queue.Empty:
                self._commit()
                continue
            if item is _STOP:
                self._commit(durable=True)
                return
            fn, args, durable, reply = item
            outcome = self._apply(fn, args)
            if durable or (self._txn and time.monotonic() - self._started > self.max_age):
                err = self._commit(durable)
                if err is not None and outcome[0]:
                    outcome = (False, err, None, 0)
            reply(outcome)

    def _wait_time(self) -> float | None:
        if self._txn is None:
            return None
        return max(0.0, min(self.linger, self._started + self.max_age - time.monotonic()))

    def _apply(self, fn, args):
        """(ok, result or error, rows written, batch number)"""
        if self.broken is not None:
            return False, FsError(errno.EIO, "store is in error mode: " + str(self.broken)), None, 0
        try:
            if self._txn is None:
                self._txn = self.store.begin_write()
                self._started = time.monotonic()
                self._batch += 1
            with self.store.nested(self._txn) as child:
                child.writes, child.recorded = [], CACHED_TABLES
                result = fn(child, *args)
            self.pending_bytes = self._txn.pending_bytes()
            return True, result, child.writes, self._batch
        except FusevolError as e:
            return False, e, None, 0
        except Exception as e:  # a bug: keep serving, answer EIO
            log.exception("store operation %s failed", getattr(fn, "__name__", fn))
            return False, FsError(errno.EIO, f"internal error: {e}"), None, 0

    def _commit(self, durable: bool = False) -> Exception | None:
        if self._txn is None:
            return None
        txn, self._txn = self._txn, None
        try:
            self.store.commit(txn, durable=durable)
            self.pending_bytes = 0
            self.cache.committed = self._batch
            return None
        except FusevolError as e:
            # Operations of this batch were answered already: stop taking
            # more rather than let the kernel's view and the store drift.
            log.critical("commit failed, volume is now read-only until remounted: %s", e)
            self.broken = e
            return e


def _noop(txn):
    return None
