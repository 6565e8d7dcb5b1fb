"""A worker's idle upkeep: the store made as dense as `fusevol gc` makes it, unasked.

A worker compresses whole blocks at zstd level 1 (its write rate), and LMDB
keeps the pages a commit frees in the file for later commits. `fusevol gc`
compresses again (store/recompress.py), lays packs out again to fill their
pages (store/densify.py), writes small tables again in key order
(store/repack.py) and punches the free pages out of the file
(store/freepages.py); nobody has to run it for the store to be dense: once a
worker's volume has had no change for QUIET seconds, the worker does the same
(not gc's recount) in a thread of its own, once, then waits for the next
change. An idle worker does nothing (it sleeps on the store thread's next
change).

Small steps: each step of the recompression compresses a few packs with no
lock held and swaps them in with one short write transaction, the layout
goes DENSIFY_PACKS packs to a transaction, and the
upkeep pauses after each step as long as the step held LMDB's write lock, so
a writer of any volume (every worker of a store shares that one lock) waits
one step at most. A change of its own volume, an unmount or a `fusevol gc`
that wants to run stops it between two steps; the pass goes on from where it
stopped at the next quiet period (recompress.py's watermark).

One at a time per store, never beside a `fusevol gc` (upkeepstate.py's
locks). A worker that finds the lock taken tries again a little later; its
run then has little left to do.

FUSEVOL_IDLE_UPKEEP=0 turns it off; FUSEVOL_IDLE_UPKEEP_AFTER sets QUIET.
What each run did goes to `run/upkeep/VOLUME.json` and the worker's log.
"""

import fcntl
import logging
import os
import signal
import threading
import time

import trio

from ..store import Store, datafiles, densify, freepages, recompress, repack
from . import heap, upkeepstate

log = logging.getLogger(__name__)

# Seconds without a change before the upkeep runs. A volume that is written
# again stops it (one step lost at most), so the figure weighs how soon the
# store is dense against upkeeps started and stopped by pauses in a workload:
# see the README (the store, at rest, denser) for the measurement.
QUIET = float(os.environ.get("FUSEVOL_IDLE_UPKEEP_AFTER", "5"))
# Seconds between tries for the lock while another upkeep or a gc holds it.
LOCK_RETRY = 1.0
# Packs compressed again per step (each up to 128 KiB of stored chunks).
STEP_PACKS = 4
# Sparse packs laid out again per transaction (store/densify.py; gc's 32 held
# the write lock up to 75 ms on the evolve bench's store, 16 up to 40 ms and
# freed 44 pages of gc's 50, 8 up to 48 ms and 37 pages).
DENSIFY_PACKS = 16
# Tables written again in key order only up to this size: one transaction
# each, writers wait for it (store/repack.py).
REPACK_MAX_BYTES = 2 << 20


def enabled() -> bool:
    return os.environ.get("FUSEVOL_IDLE_UPKEEP", "1") != "0"


class Stopped(Exception):
    """The upkeep gave way (a change of its volume, a gc, an unmount)."""


class Upkeep:
    """One upkeep, run on a thread of its own with the upkeep lock held."""

    def __init__(self, store: Store, runner, seen: int):
        self.store, self.runner, self.seen = store, runner, seen
        self.stop = threading.Event()  # set by the worker on its way out
        # longest_step_ms: per phase, the longest step that held the write lock
        self.report: dict = {"outcome": "done"}

    def _may_go_on(self) -> None:
        if self.stop.is_set():
            raise Stopped("the worker stops")
        if self.runner.wrote_since(self.seen):
            raise Stopped("the volume is written again")
        if upkeepstate.gc_waiting(self.store.path):
            raise Stopped("fusevol gc runs")

    def _pause(self, phase: str, held: float) -> None:
        """After a step that held the write lock that long: as long a pause,
        in which writers take the lock."""
        longest = self.report["longest_step_ms"]
        longest[phase] = max(longest.get(phase, 0.0), round(held * 1000, 1))
        self.stop.wait(held)

    def _step(self, phase: str, fn, *args, held=None):
        """One step, when the upkeep may go on; the worker's FUSE reads are
        nudged meanwhile (runner.nudging). held(): how long it held the write
        lock (else the step's whole time)."""
        self._may_go_on()
        t = time.monotonic()
        with self.runner.nudging("upkeep"):
            result = fn(*args)
        self._pause(phase, time.monotonic() - t if held is None else held())
        return result

    def _densify(self) -> None:
        """Packs laid out again as gc does, the upkeep's pause and checks
        between its transactions."""
        self._may_go_on()
        last = time.monotonic()

        def between():
            nonlocal last
            self._pause("densify", time.monotonic() - last)
            self._may_go_on()
            last = time.monotonic()

        with self.runner.nudging("upkeep"):
            self.report["densified"] = densify.densify(
                self.store, batch=DENSIFY_PACKS, between=between)

    def run(self) -> dict:
        start = time.monotonic()
        self.report["longest_step_ms"] = {}
        # The timer's signal is for the FUSE thread (runner.nudging).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            passing = recompress.Pass(self.store, STEP_PACKS)
            self.report["recompressed"] = passing.report
            more = passing.todo > 0
            while more:
                more = self._step("recompress", passing.step,
                                  held=lambda: passing.last_write_seconds)
            self._densify()
            # Each table in a transaction of its own, the upkeep's checks between.
            self.report["tables"] = {}
            for name in repack.TABLES:
                self.report["tables"].update(
                    self._step("repack", repack.repack, self.store, REPACK_MAX_BYTES, (name,)))
            self.report["holes"] = self._step("punch", freepages.punch, self.store)
            self.report["data_holes"] = self._step("punch", datafiles.reclaim_all, self.store)
        except Stopped as e:
            self.report["outcome"] = f"stopped: {e}"
        except Exception as e:  # never the worker's end: its volume is served on
            log.exception("idle upkeep failed")
            self.report["outcome"] = f"failed: {e}"
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
        self.report["seconds"] = round(time.monotonic() - start, 3)
        return self.report


async def idle_upkeep(runner, store: Store, volume: str) -> None:
    """The worker's upkeep task: after each quiet period that follows a change,
    one upkeep; in between, asleep."""
    seen = runner.changes
    while True:
        await runner.wait_changed(seen)
        while True:  # until a QUIET span passes without a change
            seen = runner.changes
            await trio.sleep(QUIET)
            if runner.changes == seen:
                break
        try:
            await run_once(runner, store, volume, seen)
        except Exception:  # never the worker's end: its volume is served on
            log.exception("idle upkeep failed")


async def run_once(runner, store: Store, volume: str, seen: int) -> None:
    """One upkeep, once the upkeep lock is had (unless the volume changes meanwhile)."""
    fd = upkeepstate.upkeep_lock(store.path)
    try:
        while not upkeepstate.try_flock(fd, fcntl.LOCK_EX):
            await trio.sleep(LOCK_RETRY)  # another worker's upkeep, or a gc
            if runner.changes != seen:
                return  # written again: the next quiet period tries again
        job = Upkeep(store, runner, seen)
        upkeepstate.record_start(store.path, volume, time.time())
        done = threading.Event()

        def work():
            try:
                job.run()
                # The volume is quiet: the free pages of the heap (what its
                # writes and this run used) go back, as a worker stays idle.
                heap.give_back()
            finally:
                done.set()

        try:
            await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        except trio.Cancelled:  # the worker stops: the thread ends after its step
            job.stop.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(done.wait)
            raise
        finally:
            if done.is_set():
                _log(job.report)
                upkeepstate.record(store.path, volume, job.report)
    finally:
        os.close(fd)


def _log(report: dict) -> None:
    rec = report.get("recompressed") or {}
    holes = report.get("holes") or {}
    log.info("idle upkeep %s in %.2f s: %d chunks compressed again (%d bytes fewer), "
             "packs %d pages fewer, %d tables written again, %d free pages punched; "
             "longest step %.1f ms",
             report["outcome"], report["seconds"], rec.get("chunks_recompressed", 0),
             rec.get("stored_bytes_saved", 0),
             (report.get("densified") or {}).get("pages_freed", 0), len(report.get("tables") or {}),
             holes.get("free_pages", 0) if holes.get("punched") else 0,
             max(report["longest_step_ms"].values(), default=0.0))
