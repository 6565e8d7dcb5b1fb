"""The idle upkeep seen from outside its worker: who may run it, and what it did.

One upkeep at a time per store: a worker's upkeep (upkeep.py) holds
`run/upkeep.lock` (flock) while it runs, and `fusevol gc` holds it too (gc
does the same work, and more). gc first takes `run/gc.lock`, which a
running upkeep looks at between its steps and gives way to, so a gc waits
for one step, not for a whole upkeep. What each upkeep did is kept in
`run/upkeep/VOLUME.json` (read by tests and bench/evolve.py).
"""

import contextlib
import errno
import fcntl
import json
import os
import time


def _run_dir(store_path: str) -> str:
    path = os.path.join(store_path, "run")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def lock_fd(store_path: str, name: str) -> int:
    return os.open(os.path.join(_run_dir(store_path), name),
                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def try_flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


def upkeep_lock(store_path: str) -> int:
    """The descriptor an upkeep holds its lock on (try_flock LOCK_EX)."""
    return lock_fd(store_path, "upkeep.lock")


@contextlib.contextmanager
def held_for_gc(store_path: str):
    """For `fusevol gc`: no upkeep runs while the block runs (a running one
    stops after its step)."""
    gc_fd = lock_fd(store_path, "gc.lock")
    try:
        fcntl.flock(gc_fd, fcntl.LOCK_EX)  # seen by a running upkeep: it stops
        fd = upkeep_lock(store_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
    finally:
        os.close(gc_fd)


def gc_waiting(store_path: str) -> bool:
    """Whether a `fusevol gc` runs or waits to."""
    fd = lock_fd(store_path, "gc.lock")
    try:
        return not try_flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)  # the shared lock, if taken, goes with it


def status_path(store_path: str, volume: str) -> str:
    return os.path.join(store_path, "run", "upkeep", f"{volume}.json")


def read_status(store_path: str, volume: str) -> dict | None:
    """What the upkeep of a volume's worker did so far, or None before its
    first run: runs started, `running` (one is under way), `completed` (runs
    that went through) and `stopped` (runs that gave way), totals of chunks
    compressed again and pages punched, and the last run's times
    (time.time()) and report."""
    try:
        with open(status_path(store_path, volume)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write(store_path: str, volume: str, status: dict) -> None:
    path = status_path(store_path, volume)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, path)


def record_start(store_path: str, volume: str, started: float) -> None:
    status = read_status(store_path, volume) or {}
    status.update(runs=status.get("runs", 0) + 1, running=True, pid=os.getpid(), started=started)
    _write(store_path, volume, status)


def record(store_path: str, volume: str, report: dict) -> None:
    status = read_status(store_path, volume) or {}
    holes = report.get("holes") or {}
    status.update(
        running=False, finished=time.time(), last=report,
        completed=status.get("completed", 0) + (report["outcome"] == "done"),
        stopped=status.get("stopped", 0) + report["outcome"].startswith("stopped"),
        chunks_recompressed=status.get("chunks_recompressed", 0)
        + (report.get("recompressed") or {}).get("chunks_recompressed", 0),
        pages_punched=status.get("pages_punched", 0)
        + (holes.get("free_pages", 0) if holes.get("punched") else 0))
    _write(store_path, volume, status)
