"""Where volumes are shown: the driver's place, and views bound from it.

A view (and a mount of one folder of a volume, `fusevol mount --subpath`,
mount(8)'s subpath=) is never a worker of its own: two workers on one
volume's rows would keep two kernel caches of them. The data volume's one
worker serves at the driver's place (STORE/mnt/NAME, registry.mount_dir); the
folder is bound from there (fs/bind.py: reached by fd, never by a path a
writer could swap for a symlink), read-only at the bind itself when the view
is, and `..` at its root is the kernel's: a bind's root leads up to its
mountpoint's parent, never into the rest of the volume. Docker's views
(plugin/supervisor.py) and the CLI's are mounted by the same code here.

A view mounted on the host is counted on its volume as Docker's mounts are,
under the ID `host:MOUNTPOINT`, so the driver keeps the worker while it is
shown. Whoever unmounts it (`fusevol umount`, or umount(8), which never asks
fusevol about a bind), a keeper process started with it (`keeper.py`) sees it
go and takes the count back; the worker stops once nothing counts on its
volume. Taking a count back is done under one lock per store, once.

`Mounts` is a part of VolumeService (service/volumes.py); its methods block.
"""

import errno
import fcntl
import os
import sys

from ..errors import Busy, FusevolError, NotFound
from ..fs import registry
from ..logs import logger
from ..records import MountSpec, Volume
from ..store import volumes
from .rules import HOST_MOUNT

log = logger(__name__)

# How long a worker whose mount vanished may take to exit before we give up on it.
WORKER_EXIT_WAIT = 10.0


def serves(path: str) -> bool:
    """Whether a mount sits at `path` and answers (a dead FUSE mount raises ENOTCONN)."""
    if not registry.is_mountpoint(path):
        return False
    try:
        os.statvfs(path)  # never answered from the kernel's caches
    except OSError:
        return False
    return True


class Mounts:
    """The mounting half of VolumeService (it provides store, store_path,
    driver_path, serving_worker, mount_spec, start_worker and family)."""

    # -- the data volume's one worker, at the driver's place ----------------------

    def serve_data(self, volume: Volume, *, timeout: float = 60.0,
                   forkserver=None, probe: bool = True) -> tuple[str, bool]:
        """Make sure data volume `volume`'s worker serves at the driver's place:
        adopt the one there, or start one. Its path, and whether it was started.
        `probe`: a mount found is asked to answer (statfs) before it is
        adopted; False where every mounted volume is gone through (the
        daemon's start), which a hung worker must not hang."""
        from . import rules

        name = volume.name
        path = self.driver_path(name)
        info = self.serving_worker(name)
        if info is not None:
            rules.check_adoptable(name, info, path)
            # A registered worker is alive (it holds its entry's lock) and a mount sits at
            # its mountpoint: it serves. A worker killed a moment ago may still look so
            # (its last threads ending hold the lock): a Mount asks the mount to answer,
            # and a dead one is detached here instead of handed to a container.
            if registry.is_mountpoint(path) and not (probe and registry.clear_dead_mount(path)):
                return path, False
            # Its mount is gone or dead: the worker is ending; let it go.
            registry.clear_dead_mount(path)
            if not registry.wait_exit(info.pid, WORKER_EXIT_WAIT):
                raise Busy(f"the worker of volume {name} (pid {info.pid}) lost its mount but "
                           "does not exit (files still open?); try again later")
        registry.clear_dead_mount(path)
        if registry.is_mountpoint(path):
            raise Busy(f"{path} is mounted by something else; unmount it first")
        os.makedirs(path, mode=0o755, exist_ok=True)
        spec = self.mount_spec(name, removed_ok=True)  # served for its views, if removed
        self.start_worker(spec, path, timeout=timeout, forkserver=forkserver)
        return path, True

    def stop_data(self, name: str) -> bool:
        """Stop the worker serving data volume `name` at the driver's place;
        False if none was there. Busy (detached lazily) while files are open on it."""
        path = self.driver_path(name)
        registry.clear_dead_mount(path)
        info = registry.worker_of(self.store_path, mountpoint=path)
        if info is None and not registry.is_mountpoint(path):
            return False
        try:
            registry.unmount(self.store_path, path)
            return True
        except Busy:
            # Someone on the host still uses it: detach now, the worker ends when they close.
            import subprocess

            subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
            raise Busy(f"volume {name} was busy: detached lazily; its worker stops "
                       "once the last open file closes") from None

    # -- binding a folder ----------------------------------------------------------

    def bind_view(self, spec: MountSpec, base: str, target: str, noexec: bool = False) -> str:
        """Bind folder `spec.subpath` of the data volume served at `base` at
        `target` (read-only if `spec` says so); `target` if something serves there."""
        import subprocess

        from ..fs import bind  # ctypes: not for commands that bind nothing

        if serves(target):
            return target
        if registry.is_mountpoint(target):  # bound to a worker that died
            subprocess.run(["umount", "-i", "-l", target], capture_output=True)
        source = spec.data.name
        missing = NotFound(f"folder {spec.subpath} does not exist in volume {source}",
                           reason="no_folder", volume=source, folder=spec.subpath)
        try:
            fd = bind.open_folder(base, spec.subpath)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise missing from None
            # A symlink could point anywhere on the host: a view shows real folders only.
            raise NotFound(f"folder {spec.subpath} of volume {source} is not a plain "
                           "folder (a symlink, a file or a mount on the way?); a view shows "
                           "real folders of its source only") from None
        try:
            os.makedirs(target, mode=0o755, exist_ok=True)
            bind.bind_fd(fd, target, readonly=spec.readonly, noexec=noexec)
        except OSError as e:
            if e.errno == errno.ENOENT:  # removed since it was opened
                raise missing from None
            raise FusevolError(f"cannot mount {spec.name} at {target}: "
                               f"{e.strerror or e}") from None
        finally:
            os.close(fd)
        return target

    def unbind(self, target: str, lazy: bool = True) -> None:
        """Undo a view's bind mount; one still in use is detached lazily (or,
        unless `lazy`, refused)."""
        import subprocess

        if not registry.is_mountpoint(target):
            return
        res = subprocess.run(["umount", "-i", target], capture_output=True, text=True)
        if res.returncode == 0:
            return
        if not lazy:
            raise Busy(f"cannot unmount {target}: {res.stderr.strip() or 'busy'}")
        log.warning("%s busy: detaching it lazily", target)
        res = subprocess.run(["umount", "-i", "-l", target], capture_output=True, text=True)
        if res.returncode != 0:
            raise FusevolError(f"cannot unmount {target}: {res.stderr.strip()}")

    # -- views mounted on the host -------------------------------------------------

    def mount_view(self, spec: MountSpec, mountpoint: str, *, noexec: bool = False,
                   timeout: float = 60.0, keeper: bool = True) -> None:
        """Show folder `spec.subpath` of `spec.data` at `mountpoint`, counted
        (see above); it has its volume's atime, dev and suid, as the worker serves them. With `keeper`, a process of its own takes the count back
        when the mount goes, however it goes; without, the caller waits
        (`wait_unmounted`) and calls `unmount_view`."""
        mountpoint = os.path.abspath(mountpoint)
        registry.clear_dead_mount(mountpoint)
        if not os.path.isdir(mountpoint):
            raise NotFound(f"mountpoint {mountpoint} is not a directory")
        if registry.is_mountpoint(mountpoint):
            raise Busy(f"{mountpoint} is already a mountpoint")
        with self._host_lock(), self.store.write() as txn:
            volumes.count_mount(txn, spec.name, HOST_MOUNT + mountpoint, +1)
        try:
            base, _ = self.serve_data(spec.data, timeout=timeout)
            self.bind_view(spec, base, mountpoint, noexec=noexec)
            if keeper:
                self._start_keeper(mountpoint)
        except BaseException:
            self.unmount_view(mountpoint, lazy=True)
            raise

    def unmount_view(self, mountpoint: str, lazy: bool = False) -> bool:
        """Unmount a view mounted on the host at `mountpoint` and take its count
        back (the worker stops once nothing counts on its volume); False if
        no view of this store was mounted there."""
        mountpoint = os.path.abspath(mountpoint)
        if not os.path.isdir(os.path.join(self.store_path, "db")):
            return False  # no store here: nothing of it is mounted
        if self._host_holder(mountpoint) is None:
            return False
        self.unbind(mountpoint, lazy=lazy)
        self.release_view(mountpoint)
        return True

    def release_view(self, mountpoint: str) -> None:
        """Take back the count of a view no longer mounted at `mountpoint` (once,
        whoever asks first: the keeper, `fusevol umount`)."""
        with self._host_lock():
            holder = self._host_holder(mountpoint)
            if holder is None:
                return
            with self.store.write() as txn:
                volumes.count_mount(txn, holder.name, HOST_MOUNT + mountpoint, -1)
            self._release_data(holder.family)

    def _host_holder(self, mountpoint: str) -> Volume | None:
        mount_id = HOST_MOUNT + mountpoint
        return next((v for v in self.all_volumes(removed=True) if mount_id in v.mounts), None)

    def _release_data(self, data_name: str) -> None:
        """Once nothing counts on a family, its views' binds at the driver's
        place and its worker there go."""
        family = self.family(data_name)
        if sum(v.mount_count for v in family):
            return
        for view in family:
            if view.is_view:
                self.unbind(self.driver_path(view.name))
        self.stop_data(data_name)

    def _host_lock(self):
        return _FileLock(os.path.join(self.store_path, "run", "host-views.lock"))

    def _start_keeper(self, mountpoint: str) -> None:
        import subprocess

        log_path = os.path.join(self.store_path, "run", "keeper.log")  # beside no volume's log
        with open(log_path, "ab") as logf:
            subprocess.Popen([sys.executable, "-m", "fusevol.service.keeper", self.store_path,
                              mountpoint], stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                             start_new_session=True)


class _FileLock:
    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # and with it the lock
