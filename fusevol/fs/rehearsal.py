"""A worker's life rehearsed in the forkserver, before and between its first forks.

A forked worker shares the forkserver's pages until it writes to them.
CPython 3.11 writes to a function's code object as it warms up (a counter
bumped at each call and loop turn) and, after eight, rewrites its bytecode
whole (specialised instructions and their caches); on the way it also stamps
the versions of the dicts and types that code reads. A worker that did all
of that itself after the fork copied those pages into its own memory, the
same pages in every worker. Rehearsed here on a scratch volume, the code a
worker runs again and again (the handlers of the kernel's requests, the
store thread, the flushes, trio's loop, the idle tasks) is specialised
before the fork, and its pages stay shared; so is code a worker runs once
(its start, the idle upkeep), and what that imports or caches on first use
is the forkserver's.

Everything a worker would do short of the kernel's part: no FUSE session
(pyfuse3 holds one per process, and a worker needs its own), no mount, no
registry entry. What it opens is closed again between two lives, its
threads have ended, and its scratch folder goes after the last one (a
forkserver killed before that leaves it to the next one, which removes the
folders of forkservers no longer alive): the forkserver forks with no
thread, store, loop or file of its own.
"""

import contextlib
import os
import shutil
import stat
import tempfile
import threading
import time

import pyfuse3
import trio

from ..store import Store, volumes
from . import metrics, upkeep
from . import mount as mounting
from .mountopts import DEFAULT_ATIME
from .registry import is_mountpoint, pid_alive, worker_of
from .runner import tune_interpreter

# CPython 3.11 specialises a function after 8 calls or loop turns: the whole
# life is lived that many times (what a worker runs once is then specialised
# too), each with a few requests of each kind.
LIVES = 8
ROUNDS = 3
VOLUME = "rehearsal"
SCRATCH = "fusevol-forkserver-"  # then the forkserver's pid: its scratch folder
ROOT = pyfuse3.ROOT_INODE


class RequestContext:
    """A request's context as pyfuse3 hands it to the handlers."""
    uid = gid = pid = 0
    umask = 0o022


class TimesFields:
    """A SETATTR of a file's times, as the kernel's writeback cache sends it
    (pyfuse3's own SetattrFields is read-only)."""
    update_mode = update_uid = update_gid = update_size = update_atime = False
    update_mtime = update_ctime = True


def rehearse(lives: int = LIVES) -> None:
    """A scratch volume served, written, read and kept, `lives` times over, all
    in this process."""
    for _ in lives_lived(lives):
        pass


def lives_lived(lives: int = LIVES):
    """The rehearsal one life at a time (a generator: the forkserver forks a
    worker asked for between two lives). Nothing of the rehearsal is left
    between two lives but the scratch folder, which goes after the last one
    (or once the generator is closed)."""
    _sweep(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH}{os.getpid()}-") as path:
        for life in range(lives):
            try:
                _live(path, f"{VOLUME}{life}")
            finally:
                _threads_ended()
            if life < lives - 1:
                yield life


def _sweep(top: str) -> None:
    """Remove the scratch folders of forkservers killed in their rehearsal."""
    try:
        entries = list(os.scandir(top))
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(SCRATCH):].partition("-")[0]
        if entry.name.startswith(SCRATCH) and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)


def _live(path: str, name: str) -> None:
    """One worker's life on the scratch store at `path`, short of the kernel's part."""
    store = Store.open(path)  # as a worker opens its store, dropped below
    try:
        with store.write() as txn:
            volumes.create(txn, name)
        with store.read() as txn:
            spec = volumes.mount_spec(txn, name)
        worker_of(store.path, volume=name)
        is_mountpoint(path)
        tune_interpreter()
        with contextlib.ExitStack() as stack:
            ops = mounting.open_volume(stack, store, spec.data, readonly=False,
                                       atime=DEFAULT_ATIME)
            published = metrics.metrics_path(store.path, name)
            stack.callback(metrics.withdraw, published)
            trio.run(_life, ops, store, name, published)
    finally:
        store.close()
        Store._instances.pop(store.path, None)


async def _life(ops, store: Store, name: str, published: str) -> None:
    """What a worker's loop runs: the kernel's requests for files written,
    read back and removed (not READDIR: its reply needs the kernel's buffer),
    the flushes, a snapshot, the metrics, one idle upkeep."""
    ctx, figures = RequestContext(), None
    random, zeros = os.urandom(4096), bytes(8192)
    folder = (await ops.mkdir(ROOT, b"d", stat.S_IFDIR | 0o755, ctx)).st_ino
    for i in range(ROUNDS):
        file = b"f%d" % i
        with contextlib.suppress(pyfuse3.FUSEError):
            await ops.lookup(folder, file, ctx)  # not there yet
        info, entry = await ops.create(folder, file, stat.S_IFREG | 0o644, os.O_WRONLY, ctx)
        ino, fh = entry.st_ino, info.fh
        with contextlib.suppress(pyfuse3.FUSEError):
            await ops.getxattr(ino, b"security.capability", ctx)
        await ops.write(fh, 0, random if i % 2 else zeros)
        attr = await ops.getattr(ino, ctx)
        attr.st_mtime_ns = attr.st_ctime_ns = time.time_ns()
        await ops.setattr(ino, attr, TimesFields(), fh, ctx)
        await ops.flush(fh)
        await ops.release(fh)
        await ops.getattr(ino, ctx)
        await ops.lookup(folder, file, ctx)
        await ops.statfs(ctx)
        figures = mounting.publish_changed(ops, published, figures)
        await trio.sleep(0)
    await ops.flush_all(durable=True)
    await ops.take_snapshot(None)  # the CLI's, of a mounted volume: the tree writer loaded here
    for i in range(ROUNDS):  # read back, then the files go (after the snapshot: tree ids released)
        file = b"f%d" % i
        entry = await ops.lookup(folder, file, ctx)
        info = await ops.open(entry.st_ino, os.O_RDONLY, ctx)
        await ops.read(info.fh, 0, 65536)
        await ops.release(info.fh)
        await ops.unlink(folder, file, ctx)
        await ops.forget([(entry.st_ino, 2)])
        dh = await ops.opendir(folder, ctx)
        await ops.releasedir(dh)
        figures = mounting.publish_changed(ops, published, figures)
    await ops.flush_all(durable=True)
    await upkeep.run_once(ops.runner, store, name, ops.runner.changes)


def _threads_ended(timeout: float = 2.0) -> None:
    """Wait for the threads the rehearsal started to end, so that none runs at
    the fork. trio's cached threads end after 10 s idle: its limit is made 0
    meanwhile, and each one waiting is handed an empty job, after which it
    finds the limit passed and ends."""
    try:
        from trio._core import _thread_cache as cache
        saved = cache.IDLE_TIMEOUT
    except (ImportError, AttributeError):  # another trio: its threads end in their time
        cache = saved = None
    deadline = time.monotonic() + timeout
    try:
        if cache is not None:
            cache.IDLE_TIMEOUT = 0
        while threading.active_count() > 1 and time.monotonic() < deadline:
            if cache is not None and cache.THREAD_CACHE._idle_workers:
                trio.lowlevel.start_thread_soon(_nothing, _nothing)
            time.sleep(0.01)
    finally:
        if cache is not None:
            cache.IDLE_TIMEOUT = saved


def _nothing(*_) -> None:
    pass
