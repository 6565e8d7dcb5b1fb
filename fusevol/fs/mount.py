"""The life of one mounted volume: a worker process serving a FUSE session.

pyfuse3 holds one FUSE session per process, so every mounted volume has its
own worker. Workers register themselves in ``STORE/run/workers/PID.json`` so
that `fusevol umount`, the driver daemon and a second mount of the same volume
can find them; one volume is served by at most one worker, which keeps the
kernel's caches the only copy of its state.
"""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pyfuse3
import trio

from ..errors import Busy, FusevolError, InvalidArgument, NotFound
from ..store import Inodes, Store
from ..store import volumes
from .operations import VolumeOperations
from .runner import TxnRunner

log = logging.getLogger(__name__)


# -- the registry of running workers ----------------------------------------

def _workers_dir(store_path: str) -> str:
    return os.path.join(store_path, "run", "workers")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; it only waits to be reaped.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def workers(store_path: str) -> list[dict]:
    """Live workers of this store (entries of dead ones are removed)."""
    found = []
    wdir = _workers_dir(store_path)
    for entry in sorted(os.listdir(wdir)) if os.path.isdir(wdir) else []:
        path = os.path.join(wdir, entry)
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if pid_alive(info.get("pid", -1)):
            found.append(info)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return found


def worker_of(store_path: str, *, volume: str | None = None, mountpoint: str | None = None) -> dict | None:
    for info in workers(store_path):
        if volume is not None and info["volume"] == volume:
            return info
        if mountpoint is not None and info["mountpoint"] == os.path.abspath(mountpoint):
            return info
    return None


def _register(store_path: str, info: dict) -> str:
    wdir = _workers_dir(store_path)
    os.makedirs(wdir, mode=0o700, exist_ok=True)
    path = os.path.join(wdir, f"{info['pid']}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)
    return path


def is_mountpoint(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            target = os.path.abspath(path)
            return any(line.split()[4] == _mangle(target) for line in f)
    except OSError:
        return False


def clear_dead_mount(path: str) -> bool:
    """Detach a FUSE mount whose worker died ("Transport endpoint is not connected")."""
    try:
        os.stat(path)
        return False
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return False
    log.warning("detaching dead mount at %s", path)
    subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
    return True


def _mangle(path: str) -> str:
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


# -- serving a volume (inside the worker) -------------------------------------

def serve(store_path: str, name: str, mountpoint: str, *, readonly: bool = False,
          subpath: str | None = None, on_ready=None) -> None:
    """Mount volume `name` at `mountpoint` and serve it until it is unmounted."""
    store = Store.open(store_path)
    mountpoint = os.path.abspath(mountpoint)
    with store.read() as txn:
        record = volumes.get(txn, name)
        data_volume = record
        if record.get("source"):
            data_volume = volumes.get(txn, record["source"])
            subpath = "/".join(p for p in (record["subpath"], subpath) if p)
    if subpath is not None:
        subpath = volumes.normalize_subpath(subpath)
    readonly = readonly or record["readonly"] or data_volume["readonly"]
    other = worker_of(store.path, volume=data_volume["name"])
    clear_dead_mount(mountpoint)
    if not os.path.isdir(mountpoint):
        raise NotFound(f"mountpoint {mountpoint} is not a directory")
    if is_mountpoint(mountpoint):
        raise Busy(f"{mountpoint} is already a mountpoint")
    if other is not None:
        raise Busy(f"volume {data_volume['name']} is already served at {other['mountpoint']} "
                   f"(pid {other['pid']}); bind-mount that instead")

    inodes = Inodes(data_volume["vid"], store.block_size, data_volume["compression"])
    runner = TxnRunner(store)
    runner.start()
    registration = None
    try:
        root_ino = _view_root(runner, inodes, data_volume["name"], subpath) if subpath else 1
        if not readonly:
            runner.run_sync(_purge_orphans, inodes)
        ops = VolumeOperations(runner, inodes, readonly=readonly, root_ino=root_ino,
                               quota=data_volume.get("quota"))
        options = {"default_permissions", "allow_other", "noatime", "subtype=fusevol",
                   f"fsname=fusevol:{name}"}
        if readonly:
            options.add("ro")
        pyfuse3.init(ops, mountpoint, options)
        registration = _register(store.path, {
            "pid": os.getpid(), "volume": data_volume["name"], "mounted_as": name,
            "mountpoint": mountpoint, "readonly": readonly, "subpath": subpath,
        })
        try:
            trio.run(_main, ops, mountpoint, on_ready)
        finally:
            pyfuse3.close(unmount=True)
    finally:
        runner.stop()
        if registration:
            try:
                os.unlink(registration)
            except FileNotFoundError:
                pass


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


async def _main(ops: VolumeOperations, mountpoint: str, on_ready) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        nursery.start_soon(ops.run_flusher)
        nursery.start_soon(_unmount_on_signal, mountpoint)
        if on_ready is not None:
            nursery.start_soon(_report_ready, mountpoint, on_ready)
        await pyfuse3.main()
        await ops.flush_all(durable=True)
        nursery.cancel_scope.cancel()


async def _report_ready(mountpoint: str, on_ready) -> None:
    # The stat goes through the kernel to this very loop: once it answers, the mount serves.
    await trio.to_thread.run_sync(os.stat, mountpoint)
    on_ready()


async def _unmount_on_signal(mountpoint: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            log.info("signal received: unmounting %s", mountpoint)
            # Lazily: open files keep being served until closed, then the session ends.
            await trio.run_process(["fusermount3", "-u", "-z", mountpoint], check=False)


# -- starting and stopping workers (outside them) -----------------------------

def start_worker(store_path: str, name: str, mountpoint: str, *, readonly: bool = False,
                 subpath: str | None = None, log_path: str | None = None,
                 timeout: float = 60.0) -> int:
    """Start `fusevol mount` in the background; return its pid once the mount serves."""
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "fusevol", "--store", store_path, "mount", name, mountpoint,
           "--ready-fd", str(write_fd)]
    if readonly:
        cmd.append("--read-only")
    if subpath:
        cmd += ["--subpath", subpath]
    if log_path is None:
        log_dir = os.path.join(store_path, "run", "log")
        os.makedirs(log_dir, mode=0o700, exist_ok=True)
        log_path = os.path.join(log_dir, f"{name}.log")
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                pass_fds=(write_fd,), start_new_session=True)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        message = ready.read()  # ends when the worker reports or exits
    if message.startswith(b"ok"):
        return proc.pid
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
    text = message.decode(errors="replace").strip()
    raise FusevolError(text or f"mount worker exited with status {proc.returncode}; see {log_path}")


def unmount(store_path: str, mountpoint: str, timeout: float = 60.0, lazy: bool = False) -> None:
    """Unmount and wait until the worker has stored everything and exited."""
    mountpoint = os.path.abspath(mountpoint)
    info = worker_of(store_path, mountpoint=mountpoint)
    if not is_mountpoint(mountpoint):
        if info is None:
            raise InvalidArgument(f"{mountpoint} is not mounted")
    else:
        cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            msg = res.stderr.strip().replace("fusermount3: ", "")
            raise Busy(f"cannot unmount {mountpoint}: {msg}")
    if info is not None:
        deadline = time.monotonic() + timeout
        while pid_alive(info["pid"]):
            if time.monotonic() > deadline:
                raise Busy(f"worker {info['pid']} of {mountpoint} did not exit in {timeout:.0f}s")
            time.sleep(0.05)
