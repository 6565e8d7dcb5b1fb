"""Running workers, found without talking to them: the registry, mount checks,
starting, flushing and stopping workers from outside.

Workers register themselves in ``STORE/run/workers/*.json`` and hold a lock
on their entry while they live: an entry whose lock is free is stale. The lock
is what every process sharing the store folder sees alike, whatever its pid
namespace: a managed plugin's workers have pids of the plugin's namespace,
which mean nothing (or another process) to the host's CLI. This module
imports neither pyfuse3 nor trio, so the CLI and the daemon stay quick; what
only starting or stopping a worker needs (subprocess, select, signal, the
start-up protocol) is imported by the functions that do it, so that commands
which only list volumes do not load it. Its own lookups read entries as their
JSON objects: the CLI's snapshot of a mounted volume loads no records.
"""

from __future__ import annotations  # (Worker and MountSpec: loaded where they are made)

import errno
import fcntl
import json
import os
import sys
import time

from ..errors import Busy, FusevolError, InvalidArgument
from ..logs import logger

log = logger(__name__)

FLUSH_XATTR = b"trusted.fusevol.flush"
# + a snapshot's name (or nothing: named after the time), see snapshot_by_worker.
SNAPSHOT_XATTR = b"trusted.fusevol.snapshot."


def mount_dir(store_path: str) -> str:
    """Where the driver mounts its volumes: STORE/mnt, or $FUSEVOL_MOUNT_DIR (`serve
    --mount-dir`: a managed plugin mounts them in its propagated mount; the daemon's
    workers inherit the variable)."""
    return os.environ.get("FUSEVOL_MOUNT_DIR") or os.path.join(store_path, "mnt")


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


def workers(store_path: str) -> list[Worker]:
    """Live workers of this store (entries of dead ones are removed)."""
    from ..records import Worker

    return [Worker.from_dict(info) for info in _live_entries(store_path)]


# What every entry holds (Worker's fields without a default).
_REQUIRED = ("pid", "volume", "mountpoint")


def _live_entries(store_path: str) -> list[dict]:
    """workers(), as the entries' JSON objects."""
    found = []
    wdir = _workers_dir(store_path)
    for entry in sorted(os.listdir(wdir)) if os.path.isdir(wdir) else []:
        path = os.path.join(wdir, entry)
        info = None
        try:
            with open(path) as f:
                if entry.endswith(".json"):
                    info = json.load(f)
                    if not isinstance(info, dict) or any(k not in info for k in _REQUIRED):
                        raise ValueError(f"not a worker's entry: {path}")
                if entry.startswith("w-"):
                    # In our pid namespace, a process whose pid is gone may still hold
                    # the lock for a moment (its other threads are still ending).
                    alive = _locked(f) and (info is None or info.get("pidns") != _pidns()
                                            or pid_alive(info["pid"]))
                else:  # an entry of a worker from before the locks, named PID.json
                    alive = info is not None and pid_alive(info["pid"])
        except (OSError, ValueError, TypeError):
            continue
        if not alive and (info is not None or _age(path) > STALE_TMP_AGE):
            try:  # stale, or the unnamed entry of a worker that died registering
                os.unlink(path)
            except FileNotFoundError:
                pass
        elif info is not None:
            found.append(info)
    return found


STALE_TMP_AGE = 60.0  # seconds: an entry not named yet may be one being locked right now


def _age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return 0.0


def _pidns() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _locked(f) -> bool:
    """Whether a live worker holds the lock on its entry (open as `f`)."""
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def worker_of(store_path: str, *, volume: str | None = None,
              mountpoint: str | None = None) -> Worker | None:
    info = _entry_of(store_path, volume=volume, mountpoint=mountpoint)
    if info is None:
        return None
    from ..records import Worker

    return Worker.from_dict(info)


def _entry_of(store_path: str, *, volume: str | None = None,
              mountpoint: str | None = None) -> dict | None:
    """worker_of(), as its entry's JSON object."""
    for info in _live_entries(store_path):
        if volume is not None and info["volume"] == volume:
            return info
        if mountpoint is not None and info["mountpoint"] == os.path.abspath(mountpoint):
            return info
    return None


# -- idle workers --------------------------------------------------------------
# The driver keeps a worker a few seconds after the last container using its
# volume stopped, so that the next one does not wait for a new worker. It
# leaves a note with the time it will stop it (wall clock), so that a command
# that needs the volume unmounted waits for that instead of refusing.

def _idle_note(store_path: str, name: str) -> str:
    return os.path.join(store_path, "run", "idle", name)


def note_idle(store_path: str, name: str, until: float) -> None:
    path = _idle_note(store_path, name)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "w") as f:
        f.write(repr(until))


def clear_idle(store_path: str, name: str) -> None:
    try:
        os.unlink(_idle_note(store_path, name))
    except FileNotFoundError:
        pass


def idle_until(store_path: str, name: str) -> float | None:
    """When the driver stops the idle worker of volume `name` (wall clock), or None."""
    try:
        with open(_idle_note(store_path, name)) as f:
            return float(f.read())
    except (OSError, ValueError):
        return None


class Registration:
    """A worker's entry in the registry, locked for as long as the worker lives
    (the kernel lets go of the lock when the process ends, however it ends)."""

    def __init__(self, store_path: str, info: Worker):
        wdir = _workers_dir(store_path)
        os.makedirs(wdir, mode=0o700, exist_ok=True)
        name = f"w-{os.urandom(12).hex()}"  # unique across pid namespaces
        tmp = os.path.join(wdir, name + ".tmp")
        self.path = os.path.join(wdir, name + ".json")
        self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # before the name is seen: never stale when listed
        info = info.replace(pidns=_pidns())
        os.write(self._fd, json.dumps(info.to_dict()).encode())
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None


def register(store_path: str, info: Worker) -> Registration:
    return Registration(store_path, info)


def wait_unregistered(store_path: str, worker: Worker, timeout: float) -> bool:
    """Wait until `worker` (as the registry listed it) has ended; False after
    `timeout` seconds. Unlike wait_exit, this holds for a worker of another pid
    namespace (a managed plugin's, seen from the host)."""
    deadline = time.monotonic() + timeout
    while any(w == worker for w in workers(store_path)):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


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
        # statfs always reaches the filesystem; stat may be answered from the
        # kernel's attribute cache long after the worker died.
        os.statvfs(path)
        return False
    except OSError as e:
        if e.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
            return False
    log.warning("detaching dead mount at %s", path)
    import subprocess

    subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
    return True


def _mangle(path: str) -> str:
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


# -- starting and stopping workers (outside them) -----------------------------

def worker_log(store_path: str, name: str) -> str:
    """Where the workers of volume `name` write their log."""
    return os.path.join(store_path, "run", "log", f"{name}.log")


def remove_worker_log(store_path: str, name: str) -> None:
    """A removed volume's log goes with it (a new volume of that name starts afresh)."""
    try:
        os.unlink(worker_log(store_path, name))
    except FileNotFoundError:
        pass

def start_worker(store_path: str, spec: MountSpec, mountpoint: str, *,
                 options: str | None = None, fsname: str | None = None,
                 log_path: str | None = None, timeout: float = 60.0, forkserver=None) -> int:
    """Start a worker serving `spec` (resolved by the caller) at `mountpoint`
    in the background; return its pid once the mount serves, or raise the
    error the worker reported (startup.py).

    The worker is forked by `forkserver` (forkserver.py) when one is given,
    else started as `python -m fusevol.fs.worker`. A worker not ready within
    `timeout` seconds (stuck on a store lock, a hung disk, ...) is killed and
    its mount detached, so the caller gets an error instead of waiting for ever.
    `options` are mount(8)-style options (mountopts.py) beyond read-only."""
    from .startup import WorkerRequest, decode as decode_report

    if log_path is None:
        log_path = worker_log(store_path, spec.data.name)
        os.makedirs(os.path.dirname(log_path), mode=0o700, exist_ok=True)
    request = WorkerRequest(store=store_path, spec=spec, mountpoint=os.path.abspath(mountpoint),
                            options=options, fsname=fsname, log_path=log_path).to_dict()
    read_fd, write_fd = os.pipe()
    try:
        pid = None
        if forkserver is not None:
            try:
                pid = forkserver.spawn(request, write_fd)
            except OSError as e:
                log.warning("forkserver failed (%s); starting the worker as a process", e)
        if pid is None:
            pid = _popen_worker(request, log_path, write_fd)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        message = _read_report(read_fd, timeout)  # ends when the worker reports or exits
    finally:
        os.close(read_fd)
    if message is None:
        _give_up(pid, mountpoint)
        raise FusevolError(f"the worker for volume {spec.name} was not ready after {timeout:g} s "
                           f"and was stopped (a stuck store or disk?); see {log_path}")
    error = decode_report(message, log_path)
    if error is None:
        return pid
    wait_exit(pid, timeout)
    raise error


def _popen_worker(request: dict, log_path: str, write_fd: int) -> int:
    import subprocess

    cmd = [sys.executable, "-m", "fusevol.fs.worker", str(write_fd)]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=logf, stderr=logf,
                                pass_fds=(write_fd,), start_new_session=True)
    try:  # a few hundred bytes: the pipe takes them before the worker reads
        proc.stdin.write(json.dumps(request).encode())
    finally:
        proc.stdin.close()
    return proc.pid  # once unreferenced, subprocess reaps it when it ends


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until process pid has ended (a zombie counts as ended); False
    after `timeout` seconds. A pidfd wakes us the moment it ends: a worker's
    exit is on the path of every Docker Unmount."""
    import select

    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):  # ended meanwhile, or no pidfd here
            time.sleep(min(left, 0.02))
            continue
        try:
            select.select([fd], [], [], min(left, 1.0))
        finally:
            os.close(fd)
    return True


def _read_report(fd: int, timeout: float) -> bytes | None:
    """Everything written to `fd` until its writers close it; None if that takes over `timeout`."""
    import select

    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    message = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return None
        data = os.read(fd, 4096)
        if not data:
            return message
        message += data


def _give_up(pid: int, mountpoint: str) -> None:
    """Kill a worker that never got ready, and whatever it started; detach its mount."""
    import signal

    try:
        os.killpg(pid, signal.SIGKILL)  # its own session: pgid == pid
    except ProcessLookupError:
        pass
    if not wait_exit(pid, 10):  # in uninterruptible sleep: it ends when the kernel lets it
        log.warning("worker %d does not end after SIGKILL", pid)
    clear_dead_mount(mountpoint)


def flush_worker(store_path: str, volume: str) -> bool:
    """Make the worker serving `volume` (if any) store everything written so
    far: the kernel's dirty pages first (syncfs), then the worker's buffers.
    False when no worker serves it, including one that stopped meanwhile (an
    idle worker's unmount stores everything before it ends)."""
    info = worker_of(store_path, volume=volume)
    if info is None:
        return False
    fd = _synced_mount(info.mountpoint)
    if fd is None:
        return False
    try:
        _ask_flush(fd)
    except OSError as e:
        # ENOTCONN: the worker ended under a lazy unmount; it stored all
        # it held at its end only if it is gone from the registry too.
        if e.errno == errno.ENOTCONN and worker_of(store_path, volume=volume) is None:
            return False
        raise
    finally:
        os.close(fd)
    return True


def snapshot_by_worker(store_path: str, volume: str, name: str | None) -> str | None:
    """Have the worker serving data volume `volume` take snapshot `name` (None:
    named after the time) in the commit that stores what it holds, after the
    kernel's dirty pages (syncfs): one durable commit, where a flush and then
    the caller's own snapshot make two. The snapshot's name; None when no
    worker took it: none serves the volume, it takes none (read-only,
    xattr=off, or of a version that did not), it went meanwhile, or it
    refused (a snapshot of that name exists, its store failed...). The
    caller then flushes and takes it itself, which says why it cannot.
    (Only a short answer: os.getxattr asks again, with a larger buffer, for
    one of more than 128 bytes; the worker would take a second snapshot.)"""
    info = _entry_of(store_path, volume=volume)
    if info is None or not info.get("takes_snapshots"):
        return None
    fd = _synced_mount(info["mountpoint"])
    if fd is None:
        return None
    try:
        made = os.getxattr(fd, (SNAPSHOT_XATTR + (name or "").encode()).decode())
    except OSError:
        return None
    finally:
        os.close(fd)
    return name or made.decode()


def _synced_mount(mountpoint: str) -> int | None:
    """The root of a worker's mount at `mountpoint`, open, once the kernel's
    dirty pages of it reached the worker (syncfs); None when the mount went
    (the worker unmounted before the open)."""
    import ctypes  # for syncfs: only here (the CLI's other commands start quicker)

    libc = ctypes.CDLL(None, use_errno=True)
    try:
        # One descriptor for every call: it holds the mount while they run, or
        # names the bare folder when the worker unmounted before the open.
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        if not _is_mount_root(fd, mountpoint):
            os.close(fd)
            return None
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), mountpoint)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ask_flush(fd: int) -> None:
    """The worker's flush: a getxattr of FLUSH_XATTR, answered once it stored
    all it held. A volume with xattr=off answers no getxattr (the kernel says
    EOPNOTSUPP itself): there the removal of that name does the same, answered
    with ENODATA; a read-only mount refuses it (EROFS) and holds nothing."""
    try:
        os.getxattr(fd, FLUSH_XATTR.decode())
        return
    except OSError as e:
        if e.errno != errno.EOPNOTSUPP:
            raise
    try:
        os.removexattr(fd, FLUSH_XATTR.decode())
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.EROFS):
            raise


def _is_mount_root(fd: int, path: str) -> bool:
    """Whether fd (opened at `path`) is the root of a filesystem mounted there,
    not the folder left under it."""
    return os.fstat(fd).st_dev != os.stat(os.path.dirname(path.rstrip("/")) or "/").st_dev


def unmount(store_path: str, mountpoint: str, timeout: float = 60.0, lazy: bool = False) -> None:
    """Unmount and wait until the worker has stored everything and exited."""
    mountpoint = os.path.abspath(mountpoint)
    info = worker_of(store_path, mountpoint=mountpoint)
    if not is_mountpoint(mountpoint):
        if info is None:
            raise InvalidArgument(f"{mountpoint} is not mounted")
    else:
        import subprocess

        cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            msg = res.stderr.strip().replace("fusermount3: ", "")
            raise Busy(f"cannot unmount {mountpoint}: {msg}")
    if info is not None and not wait_exit(info.pid, timeout):
        raise Busy(f"worker {info.pid} of {mountpoint} did not exit in {timeout:.0f}s")
