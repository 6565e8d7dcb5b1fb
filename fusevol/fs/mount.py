"""The life of one mounted volume: a worker process serving a FUSE session.

pyfuse3 holds one FUSE session per process, so every mounted volume has its
own worker. Workers register themselves (see registry.py) so that `fusevol
umount`, the driver daemon and a second mount of the same volume can find
them; one volume is served by at most one worker, which keeps the kernel's
caches the only copy of its state.
"""

import contextlib
import dataclasses
import logging
import os
import signal

import pyfuse3
import trio

from ..errors import Busy, InvalidArgument, NotFound
from ..records import MountSpec, Worker
from ..store import Inodes, Store
from . import metrics, upkeep
from .mountopts import DEFAULT_ATIME, MountOptions, kernel_options
from .intent import IntentLog
from .operations import VolumeOperations
from .registry import (  # noqa: F401  (the outside view, re-exported)
    clear_dead_mount, flush_worker, is_mountpoint, mount_dir, pid_alive, register, start_worker,
    unmount, worker_of, workers)
from .runner import TxnRunner, tune_interpreter
from .space import SpaceBudget

log = logging.getLogger(__name__)


# -- serving a volume (inside the worker) -------------------------------------

def serve(store_path: str, spec: MountSpec, mountpoint: str, *,
          options: MountOptions | None = None, fsname: str | None = None,
          on_ready=None) -> None:
    """Mount what `spec` says (resolved by the caller: store/volumes.mount_spec)
    at `mountpoint` and serve it until it is unmounted. `options` adds atime,
    dev, suid and noexec choices to the volume's own. `on_ready()` is called
    once the mount answers; an error before that is raised, and nothing is
    left behind (one ExitStack holds every resource, undone in reverse)."""
    data_volume, readonly = spec.data, spec.readonly
    mountpoint = os.path.abspath(mountpoint)
    # Settings the volume was created with, unless the mount asks otherwise.
    options = options or MountOptions()
    options = dataclasses.replace(
        options, readonly=readonly,
        atime=options.atime or data_volume.atime or DEFAULT_ATIME,
        dev=bool(data_volume.dev) if options.dev is None else options.dev,
        suid=bool(data_volume.suid) if options.suid is None else options.suid)
    if (options.dev or options.suid) and os.geteuid() != 0:
        raise InvalidArgument("dev and suid are for mounts by root only")
    if spec.subpath:
        raise InvalidArgument(f"a worker serves a volume's root; {spec.name} shows folder "
                              f"{spec.subpath} of {data_volume.name} through a bind mount")
    store = Store.open(store_path)
    other = worker_of(store.path, volume=data_volume.name)
    clear_dead_mount(mountpoint)
    if not os.path.isdir(mountpoint):
        raise NotFound(f"mountpoint {mountpoint} is not a directory")
    if is_mountpoint(mountpoint):
        raise Busy(f"{mountpoint} is already a mountpoint")
    if other is not None:
        raise Busy(f"volume {data_volume.name} is already served at {other.mountpoint} "
                   f"(pid {other.pid}); bind-mount that instead")

    tune_interpreter()
    with contextlib.ExitStack() as stack:
        registered: list = []
        stack.callback(_close, registered)  # last: gone from the registry once all is stored
        ops = open_volume(stack, store, data_volume, readonly=readonly, atime=options.atime)
        fuse_options = {"default_permissions", "allow_other", "subtype=fusevol",
                        f"fsname={fsname or 'fusevol:' + spec.name}"}
        pyfuse3.init(ops, mountpoint, fuse_options | kernel_options(options))
        stack.callback(pyfuse3.close, unmount=True)
        if ops.intent is not None:
            ops.intent.requests_from(_fuse_fd())
        registered.append(register(store.path, Worker(
            pid=os.getpid(), volume=data_volume.name, mounted_as=spec.name,
            mountpoint=mountpoint, readonly=readonly, options=options.to_text(),
            takes_snapshots=not readonly and data_volume.xattr)))
        published = metrics.metrics_path(store.path, data_volume.name)
        stack.callback(metrics.withdraw, published)
        # The store made dense once the volume is quiet (upkeep.py); a
        # read-only mount changes nothing, so it would never run.
        upkeeping = None
        if not readonly and upkeep.enabled():
            upkeeping = (upkeep.idle_upkeep, ops.runner, store, data_volume.name)
        trio.run(_main, ops, mountpoint, on_ready or (lambda: None), published, upkeeping)


def open_volume(stack: contextlib.ExitStack, store: Store, data_volume, *, readonly: bool,
                atime: str) -> VolumeOperations:
    """A volume's handlers, ready for a FUSE session: its store thread started
    (its timer's signal handled: call from the main thread), what its intent
    log holds replayed, its orphans purged. `stack` undoes it all (the store
    thread stops once everything handed to it is stored)."""
    inodes = Inodes(data_volume.vid, store.block_size, data_volume.compression)
    # Interrupts system calls (no SA_RESTART): see TxnRunner's nudge_reads.
    signal.signal(signal.SIGALRM, _interrupt)
    intents: list = []
    stack.callback(_close, intents)  # after the store thread stopped: all it covers is in
    runner = TxnRunner(store, nudge_reads=True)
    runner.start()
    stack.callback(runner.stop)  # after the session: everything handed to it is stored
    # What fsyncs logged before a crash goes into the store before anything reads.
    intent = None
    if not readonly and os.environ.get("FUSEVOL_INTENT_LOG", "1") != "0":
        intent = IntentLog.open(store.path, inodes, runner)
        intents.append(intent)
    if not readonly:
        runner.run_sync(_purge_orphans, inodes)
    used = runner.run_sync(inodes.usage).logical_bytes
    space = SpaceBudget(store, data_volume.quota, used, pending=lambda: runner.unstored_bytes)
    ops = VolumeOperations(runner, inodes, space, readonly=readonly, atime=atime,
                           intent=intent, xattrs=data_volume.xattr, volume=data_volume.name)
    ops.metrics.time_commits(store)
    return ops


def _interrupt(*_) -> None:
    pass


def _close(held: list) -> None:
    """Let go of the registry entry (its lock goes with it: the worker is gone from
    the registry) or of the intent log."""
    for thing in held:
        thing.close()


def _purge_orphans(txn, inodes: Inodes) -> None:
    for ino in inodes.orphans(txn):
        inodes.purge(txn, ino)


async def _main(ops: VolumeOperations, mountpoint: str, on_ready, published: str,
                upkeeping: tuple | None) -> None:
    """The worker's one nursery: every task it runs belongs here and ends with it."""
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        nursery.start_soon(_unmount_on_signal, mountpoint)
        nursery.start_soon(_serve_fuse, ops, nursery.cancel_scope)
        # The Mount waits for this answer: nothing else runs before it (the
        # periodic tasks below have nothing to do yet; their first rounds took
        # the loop for several ms ahead of the kernel's first requests).
        await nursery.start(_answering, mountpoint)
        on_ready()
        nursery.start_soon(ops.run_flusher)
        if ops.intent is not None:
            nursery.start_soon(ops.intent.run_checkpoints, ops.files)
        nursery.start_soon(_publish_metrics, ops, published)
        if upkeeping is not None:
            nursery.start_soon(*upkeeping)


async def _serve_fuse(ops: VolumeOperations, everything: trio.CancelScope) -> None:
    await pyfuse3.main()  # returns once the kernel ends the session (unmounted)
    await ops.flush_all(durable=True)
    everything.cancel()


async def _publish_metrics(ops: VolumeOperations, path: str) -> None:
    """Counters for the daemon's metrics endpoint, every few seconds (see metrics.py)."""
    published = None
    while True:
        published = publish_changed(ops, path, published)
        await trio.sleep(metrics.PUBLISH_INTERVAL)


def publish_changed(ops: VolumeOperations, path: str, published: tuple | None) -> tuple:
    """Publish the worker's figures if they changed since `published`; the figures."""
    # dirty: written and held in memory; unstored: handed to the store thread, not on disk.
    figures = (ops.metrics.snapshot(), ops.buffered_bytes, ops.runner.unstored_bytes,
               len(ops.handles), dict(ops.intent.counts) if ops.intent else None)
    if figures != published:  # an idle worker writes nothing (no disk write, no CPU)
        metrics.publish(path, figures[0], dirty_bytes=figures[1],
                        unstored_bytes=figures[2], open_files=figures[3],
                        intent_log=figures[4])
    return figures


async def _answering(mountpoint: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Started once the mount answers: the stat goes through the kernel to this
    very loop, so its answer means the mount serves."""
    st = await trio.to_thread.run_sync(os.stat, mountpoint)
    _set_read_ahead(st.st_dev)
    _set_dirty_share(st.st_dev)
    task_status.started()


def _set_read_ahead(dev: int) -> None:
    """Let the kernel read ahead far: with its default (128 KiB) a sequential
    read waits on one request at a time; 4 MiB keeps several in flight (on
    this project's benchmark machine: 55 -> 275 MB/s cold)."""
    _set_bdi(dev, "read_ahead_kb", os.environ.get("FUSEVOL_READ_AHEAD_KB", "4096"))


def _set_dirty_share(dev: int) -> None:
    """Let the kernel hold more of the volume's written pages before it writes
    them back. FUSE caps a mount at 1% of the system's dirty page limit (40 MiB
    here) and starts writing back at half of it, so random 4 KiB writes over a
    larger file came to the worker one or two pages at a time, each costing it
    a whole block loaded, hashed and stored again; held until the fsync they
    come in runs of whole blocks. 10% (strict still: a worker that hangs pins
    at most that): the worker's CPU for random writes over 128 MiB and their
    fsync fell by 6-63% in three alternated pairs (README, the filesystem)."""
    _set_bdi(dev, "max_ratio", os.environ.get("FUSEVOL_DIRTY_RATIO", "10"))


def _set_bdi(dev: int, setting: str, value: str) -> None:
    """Write one of the kernel's settings of the volume's device (its backing
    device info); a kernel that refuses leaves the volume working, slower."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/{setting}"
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        log.warning("cannot set %s: %s", path, e)


async def _unmount_on_signal(mountpoint: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            log.info("signal received: unmounting %s", mountpoint)
            # Lazily: open files keep being served until closed, then the session ends.
            await trio.run_process(["fusermount3", "-u", "-z", mountpoint], check=False)


def _fuse_fd() -> int | None:
    """The session's /dev/fuse descriptor (pyfuse3 does not say it), if it is
    the process's only one."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:
            pass
    return found[0] if len(found) == 1 else None
