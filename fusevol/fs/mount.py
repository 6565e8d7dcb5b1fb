"""The life of one mounted volume: a worker process serving a FUSE session.

pyfuse3 holds one FUSE session per process, so every mounted volume has its
own worker. Workers register themselves (see registry.py) so that `fusevol
umount`, the driver daemon and a second mount of the same volume can find
them; one volume is served by at most one worker, which keeps the kernel's
caches the only copy of its state.
"""

import dataclasses
import errno
import logging
import os
import signal

import pyfuse3
import trio

from ..errors import Busy, FusevolError, InvalidArgument, NotFound
from ..records import Worker
from ..store import Inodes, Store
from ..store import volumes
from . import metrics
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

def serve(store_path: str, name: str, mountpoint: str, *, readonly: bool = False,
          subpath: str | None = None, options: MountOptions | None = None,
          fsname: str | None = None, on_ready=None) -> None:
    """Mount volume `name` at `mountpoint` and serve it until it is unmounted.
    `options` adds atime, dev, suid and noexec choices to the volume's own."""
    options = options or MountOptions()
    store = Store.open(store_path)
    mountpoint = os.path.abspath(mountpoint)
    # At the driver's own mountpoint, a source removed while it has views is
    # still served, for them (store/volumes.py); by name, it is gone.
    for_views = mountpoint == os.path.join(mount_dir(store.path), name)
    with store.read() as txn:
        spec = volumes.mount_spec(txn, name, subpath=subpath, readonly=readonly,
                                  removed_ok=for_views)
    data_volume, subpath, readonly = spec.data, spec.subpath, spec.readonly
    # Settings the volume was created with, unless the mount asks otherwise.
    options = dataclasses.replace(
        options, readonly=readonly,
        atime=options.atime or data_volume.atime or DEFAULT_ATIME,
        dev=bool(data_volume.dev) if options.dev is None else options.dev,
        suid=bool(data_volume.suid) if options.suid is None else options.suid)
    if (options.dev or options.suid) and os.geteuid() != 0:
        raise InvalidArgument("dev and suid are for mounts by root only")
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
    inodes = Inodes(data_volume.vid, store.block_size, data_volume.compression)
    # Interrupts system calls (no SA_RESTART): see TxnRunner's nudge_reads.
    signal.signal(signal.SIGALRM, lambda *_: None)
    runner = TxnRunner(store, nudge_reads=True)
    runner.start()
    registration = None
    intent = None
    try:
        # What fsyncs logged before a crash goes into the store before anything reads.
        if not readonly and os.environ.get("FUSEVOL_INTENT_LOG", "1") != "0":
            intent = IntentLog.open(store.path, inodes, runner)
        root_ino = _view_root(runner, inodes, data_volume.name, subpath) if subpath else 1
        if not readonly:
            runner.run_sync(_purge_orphans, inodes)
        used = runner.run_sync(inodes.usage).logical_bytes
        space = SpaceBudget(store, data_volume.quota, used,
                            pending=lambda: runner.unstored_bytes)
        ops = VolumeOperations(runner, inodes, space, readonly=readonly, root_ino=root_ino,
                               atime=options.atime, intent=intent)
        fuse_options = {"default_permissions", "allow_other", "subtype=fusevol",
                        f"fsname={fsname or 'fusevol:' + name}"}
        ops.metrics.time_commits(store)
        pyfuse3.init(ops, mountpoint, fuse_options | kernel_options(options))
        registration = register(store.path, Worker(
            pid=os.getpid(), volume=data_volume.name, mounted_as=name, mountpoint=mountpoint,
            readonly=readonly, subpath=subpath, options=options.to_text()))
        published = metrics.metrics_path(store.path, data_volume.name)
        try:
            trio.run(_main, ops, mountpoint, on_ready, published)
        finally:
            pyfuse3.close(unmount=True)
            metrics.withdraw(published)
    finally:
        runner.stop()
        if intent is not None:
            intent.close()
        if registration:
            registration.close()


def _view_root(runner: TxnRunner, inodes: Inodes, volume: str, subpath: str) -> int:
    """The ino of the folder a subpath view serves, or an error that names it."""
    try:
        return runner.run_sync(inodes.resolve, subpath)
    except FusevolError as e:
        if e.errno == errno.ENOENT:
            raise NotFound(f"no folder {subpath} in volume {volume}") from None
        if e.errno == errno.ENOTDIR:
            raise InvalidArgument(f"{subpath} in volume {volume} is not a folder") from None
        raise


def _purge_orphans(txn, inodes: Inodes) -> None:
    for ino in inodes.orphans(txn):
        inodes.purge(txn, ino)


async def _main(ops: VolumeOperations, mountpoint: str, on_ready, published: str) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        nursery.start_soon(ops.run_flusher)
        if ops.intent is not None:
            nursery.start_soon(ops.intent.run_checkpoints, ops.files)
        nursery.start_soon(_publish_metrics, ops, published)
        nursery.start_soon(_unmount_on_signal, mountpoint)
        nursery.start_soon(_report_ready, mountpoint, on_ready or (lambda: None))
        await pyfuse3.main()
        await ops.flush_all(durable=True)
        nursery.cancel_scope.cancel()


async def _publish_metrics(ops: VolumeOperations, path: str) -> None:
    """Counters for the daemon's metrics endpoint, every few seconds (see metrics.py)."""
    published = None
    while True:
        # dirty: written and held in memory; unstored: handed to the store thread, not on disk.
        figures = (ops.metrics.snapshot(), ops._buffered(), ops.runner.unstored_bytes,
                   len(ops.handles))
        if figures != published:  # an idle worker writes nothing (no disk write, no CPU)
            metrics.publish(path, figures[0], dirty_bytes=figures[1],
                            unstored_bytes=figures[2], open_files=figures[3])
            published = figures
        await trio.sleep(metrics.PUBLISH_INTERVAL)


async def _report_ready(mountpoint: str, on_ready) -> None:
    # The stat goes through the kernel to this very loop: once it answers, the mount serves.
    st = await trio.to_thread.run_sync(os.stat, mountpoint)
    _set_read_ahead(st.st_dev)
    on_ready()


def _set_read_ahead(dev: int) -> None:
    """Let the kernel read ahead far: with its default (128 KiB) a sequential
    read waits on one request at a time; 4 MiB keeps several in flight (on
    this project's benchmark machine: 55 -> 275 MB/s cold)."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(os.environ.get("FUSEVOL_READ_AHEAD_KB", "4096"))
    except OSError as e:
        log.warning("cannot set read-ahead in %s: %s", path, e)


async def _unmount_on_signal(mountpoint: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            log.info("signal received: unmounting %s", mountpoint)
            # Lazily: open files keep being served until closed, then the session ends.
            await trio.run_process(["fusermount3", "-u", "-z", mountpoint], check=False)
