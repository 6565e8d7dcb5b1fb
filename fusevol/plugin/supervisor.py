"""FUSE workers for the driver: start, adopt and stop them, and count mounts per ID.

A data volume is served by one worker at ``STORE/mnt/NAME``. A view volume
(source + subpath) is a bind mount at ``STORE/mnt/VIEW`` of a folder of its
source's mountpoint (the service's `bind_view`, as for a view the CLI mounts),
so one worker (one kernel cache) serves the source and all its views; it runs
while the source or any of its views is mounted.

Mount counts live in the store, in each volume record's ``mounts`` map (mount ID
-> count; Docker may mount one ID twice), written in one transaction per change.
Workers run in their own sessions and outlive the daemon; a new daemon finds
them in the worker registry, so the store and the registry are all the state
there is.

The rules (what holds a volume, when it may go, which worker the driver may
adopt, what a view serves and whether read-only) are the volume service's
(fusevol/service/); this class adds what only Docker has.

When the last container using a family is gone, its worker stores what it
holds (durably, as before it stopped) and is kept `idle_time` seconds: a Mount
within that time adopts it, else the daemon stops it (`stop_idle`). A worker
kept so leaves a note in the registry (registry.note_idle) so that the CLI
waits for it to go rather than refusing to touch the volume. Volumes that
follow a remote are never kept: their lease goes with their last mount.

Every method blocks (store writes, starting and stopping workers): call them
from threads, at most one at a time per family (a data volume and its views).
"""

import logging
import time
from collections import Counter

from ..errors import Busy, FusevolError, InvalidArgument
from ..fs import registry
from ..records import Volume
from ..service import VolumeService
from ..store import Store, volumes

log = logging.getLogger(__name__)

# How long a new worker may take to serve before the Mount fails (a stuck store or disk).
WORKER_START_TIMEOUT = 60.0
MOUNT_ID_MAX = 256
# How long the daemon keeps a worker no container uses any more (`serve
# --idle-worker-time`): `docker run --rm` unmounts at every container's end,
# and a worker kept a few seconds serves the next container at once.
IDLE_WORKER_TIME = 3.0


class Supervisor:
    def __init__(self, store_path: str, worker_start_timeout: float = WORKER_START_TIMEOUT,
                 forkserver=None, idle_time: float = 0.0):
        self.worker_start_timeout = worker_start_timeout
        self.idle_time = idle_time  # seconds a worker no one uses is kept (0: stopped at once)
        self._idle: dict[str, float] = {}  # family -> when to stop its worker (monotonic)
        self.forkserver = forkserver  # starts workers fast (fs/forkserver.py); None: as processes
        self.store = Store.open(store_path)
        self.store_path = self.store.path
        self.service = VolumeService(self.store)  # the rules; this class adds Docker's side
        self.mnt_dir = self.service.mnt_dir
        self.worker_starts: Counter[str] = Counter()  # per volume, for the metrics
        self._follower = None

    @property
    def follower(self):
        """Volumes with -o remote=NAME (fusevol/remote/follow.py), loaded on first use."""
        if self._follower is None:
            from ..remote.follow import Follower

            self._follower = Follower(self.store)
        return self._follower

    @staticmethod
    def _follows(volume: Volume) -> bool:
        return bool(volume.options.get("remote"))

    def mountpoint(self, name: str) -> str:
        return self.service.driver_path(name)

    # -- reading state --------------------------------------------------------

    def record(self, name: str, missing_ok: bool = False) -> Volume | None:
        return self.service.volume(volumes.check_name(name), missing_ok=missing_ok)

    def family_count(self, data_name: str) -> int:
        """Mounts of a data volume and of all its views."""
        return self.service.family_count(data_name)

    def families(self) -> list[str]:
        return sorted({v.family for v in self.service.all_volumes(removed=True)})

    def served_path(self, volume: Volume) -> str | None:
        """Where a mounted volume is, or None while no one mounts it."""
        return self.mountpoint(volume.name) if volume.mount_count > 0 else None

    # -- mount and unmount ----------------------------------------------------

    def mount(self, name: str, mount_id: str, pull_newer=None) -> str:
        """Serve the volume (starting its worker on first use) and count this
        mount. pull_newer: how a volume that follows a remote is brought up to
        the remote's newest snapshot (remote/follow.py; None: pulled here)."""
        volume = self.record(name)
        if self._follows(volume) and self.family_count(name) == 0:
            self.follower.before_first_mount(volume, pull_newer)  # the lease; newer data first
        try:
            path = self._serve(volume)
        except BaseException:
            if self._follows(volume) and self.family_count(name) == 0:
                self.follower.after_last_unmount(volume)
            raise
        self._count(name, mount_id, +1)
        log.info("mounted %s for %s at %s", name, mount_id[:12], path)
        return path

    def unmount(self, name: str, mount_id: str) -> None:
        """Count one mount of this ID less; release the volume once no one mounts it.

        The count drops even if unmounting fails, so it never drifts above
        Docker's own view. An unknown volume or ID is no error.
        """
        try:
            stored = self._store_if_last(name, mount_id)
        except Exception as e:  # the count drops all the same; _release meets it again
            log.info("storing what the worker of %s holds: %s", name, e)
            stored = None
        volume = self._count(name, mount_id, -1)
        if volume is None or volume.mount_count > 0:
            return
        log.info("last mount of %s gone", name)
        self._release(volume, stored)  # a worker still busy keeps the lease held (and the data here)
        if self._follows(volume) and self.family_count(name) == 0:
            self.follower.after_last_unmount(volume)  # snapshot, push, release the lease

    def _count(self, name: str, mount_id: str, delta: int) -> Volume | None:
        # Not synced (one sync less on every Mount and Unmount): a system crash
        # ends every container, so the counts it would keep are stale anyway.
        with self.store.write(durable=False) as txn:
            return volumes.count_mount(txn, name, mount_id, delta)

    def _serve(self, volume: Volume) -> str:
        if volume.is_view:
            spec = self.service.mount_spec(volume.name)
            base = self._serve_data(spec.data)
            try:
                return self.service.bind_view(spec, base, self.mountpoint(volume.name))
            except FusevolError:
                if self.family_count(spec.data.name) == 0:  # started for this view alone
                    self._stop(spec.data.name)
                raise
        return self._serve_data(volume)

    def _serve_data(self, volume: Volume, probe: bool = True) -> str:
        """Make sure the data volume's worker serves at its mountpoint (adopt or start one)."""
        path, started = self.service.serve_data(volume, timeout=self.worker_start_timeout,
                                                forkserver=self.forkserver, probe=probe)
        self._keep(volume.name)  # no longer idle (one kept idle here before died)
        if started:
            self.worker_starts[volume.name] += 1
            log.info("worker serves %s at %s", volume.name, path)
        return path

    def _store_if_last(self, name: str, mount_id: str) -> bool | None:
        """Before the count of a family's last mount drops, have its worker
        store what it holds if it may be kept idle (see _keep_idle): True if it
        did, False if it could not (stop it then), None if not asked.

        Before the count's commit, not after it: the worker's open batch holds
        the store's write lock until it commits (Docker sets the mode, owner
        and times of a volume's root at a container's creation), and the count
        waited for that batch; stored first, the batch is committed."""
        volume = self.service.volume(name, missing_ok=True)
        if (volume is None or volume.mounts.get(mount_id, 0) == 0 or volume.mount_count != 1
                or self.family_count(volume.family) != 1 or not self._may_keep_idle(volume.family)):
            return None
        return self._store_held(volume.family)

    def _release(self, volume: Volume, stored: bool | None = None) -> None:
        """Unmount a volume no one mounts; stop its family's worker when all are
        released. stored: what _store_if_last did, None if it asked nothing."""
        if volume.is_view:
            self.service.unbind(self.mountpoint(volume.name))
        data_name = volume.family
        if self.family_count(data_name) == 0 and not self._keep_idle(data_name, stored):
            self._stop(data_name)

    def _may_keep_idle(self, data_name: str) -> bool:
        if self.idle_time <= 0 or any(self._follows(v) for v in self.service.family(data_name)):
            return False
        info = registry.worker_of(self.store_path, mountpoint=self.mountpoint(data_name))
        return info is not None and info.volume == data_name

    def _store_held(self, data_name: str) -> bool:
        """Have the family's worker store everything; False if its mount is gone or dead."""
        try:
            registry.flush_worker(self.store_path, data_name)  # as durable as its stop
        except OSError as e:
            log.info("flushing the worker of %s: %s", data_name, e)
            return False
        return True

    def _keep_idle(self, data_name: str, stored: bool | None = None) -> bool:
        """Have the family's worker store everything (unless `stored` says it
        did already), and keep it `idle_time` seconds for the next Mount;
        False where it cannot be kept."""
        if stored is None:
            if not self._may_keep_idle(data_name):
                return False
            stored = self._store_held(data_name)
        if not stored:
            return False
        self._idle[data_name] = time.monotonic() + self.idle_time
        registry.note_idle(self.store_path, data_name, time.time() + self.idle_time)
        log.info("worker of %s kept %g s for the next mount", data_name, self.idle_time)
        return True

    def _keep(self, data_name: str) -> None:
        """The family's worker serves again: it is no longer idle."""
        self._idle.pop(data_name, None)
        registry.clear_idle(self.store_path, data_name)  # also one a killed daemon left

    def idle_due(self, now: float | None = None) -> list[str]:
        """Families whose idle worker's time is up (for `stop_idle`)."""
        now = time.monotonic() if now is None else now
        return [name for name, until in list(self._idle.items()) if until <= now]

    def idle_families(self) -> list[str]:
        return list(self._idle)

    def stop_idle(self, data_name: str, force: bool = False) -> None:
        """Stop the idle worker of a family once its time is up (at once with
        `force`) and if still no one mounts the family."""
        until = self._idle.get(data_name)
        if until is None or (not force and until > time.monotonic()):
            return
        self._keep(data_name)
        if self.family_count(data_name) == 0:
            try:
                self._stop(data_name)
            except Busy as e:
                log.warning("%s", e)

    def _stop(self, data_name: str) -> None:
        self._keep(data_name)
        if self.service.stop_data(data_name):
            log.info("stopped the worker of %s", data_name)

    # -- removal and recovery ---------------------------------------------------

    def remove(self, name: str) -> None:
        """Delete a volume that no one mounts (the service's rule); never touches a live mount."""
        volume = self.record(name)
        # A view's removal may delete its source too (removed, kept for its views).
        data_name = volume.family
        if volume.mount_count == 0 and self.family_count(data_name) == 0:
            info = self.service.serving_worker(data_name)
            if info is not None and info.mountpoint == self.mountpoint(data_name):
                self._stop(data_name)  # ours, and no one counts on it: idle or on its way out
        self.service.remove(name)

    def reconcile(self, data_name: str) -> None:
        """Bring a family's mounts in line with its counts: restart a worker that died,
        re-bind its views, stop a worker no one counts on."""
        family = self.service.family(data_name)
        data = next((v for v in family if v.name == data_name), None)
        if data is None:
            return
        mounted = [v for v in family if v.mount_count > 0]
        try:
            self._restore(data, family, mounted)
        finally:
            if self._follows(data) and not data.removed:  # a lease to hold, a push owed
                self.follower.resume(data, mounted=bool(mounted))

    def _restore(self, data: Volume, family: list[Volume], mounted: list[Volume]) -> None:
        data_name = data.name
        if not mounted:
            for view in family:
                if view is not data:
                    self.service.unbind(self.mountpoint(view.name))
            if data_name in self._idle:
                return  # kept for the next Mount: stop_idle stops it in time
            path = self.mountpoint(data_name)
            info = registry.worker_of(self.store_path, mountpoint=path)
            if info is not None or registry.is_mountpoint(path):
                log.info("stopping the worker of %s: no container mounts it", data_name)
                self._stop(data_name)
            return
        base = self._serve_data(data, probe=False)  # every mounted volume: no request to each
        for view in mounted:
            if view is not data:
                spec = self.service.mount_spec(view.name, removed_ok=True)
                self.service.bind_view(spec, base, self.mountpoint(view.name))


def check_mount_id(mount_id) -> str:
    # Docker's IDs are 64 hex digits; the ID is kept in the store and written to the log.
    if (not isinstance(mount_id, str) or not mount_id or len(mount_id) > MOUNT_ID_MAX
            or not mount_id.isprintable()):
        raise InvalidArgument(f"ID must be a non-empty string of at most {MOUNT_ID_MAX} printable "
                              "characters (the ID of the mount request)")
    return mount_id
