"""The life of volumes, for the CLI and the plugin alike.

`VolumeService` gathers what holds a volume (the store's records, the worker
registry, the mount table) and applies the rules of `rules.py`: removal,
rollback (with force), receiving into a volume, flushing a worker before its
volume is read, starting and stopping workers; where volumes are shown (the
data volume's one worker, views bound from it) is `mounts.py`'s part of it.
The plugin's supervisor adds what only Docker has (mount IDs, idle workers,
remotes) on top; the CLI adds its words.

Every method blocks (store transactions, workers starting and stopping).
"""

import os
import time

from ..fs import registry
from ..logs import logger
from ..records import MountSpec, Snapshot, Volume, Worker
from ..store import datafiles, volumes
from . import rules
from .mounts import Mounts

log = logger(__name__)

# How long past its time a worker the driver keeps idle may take to go.
IDLE_STOP_MARGIN = 10.0


class VolumeService(Mounts):
    def __init__(self, store):
        """On an open Store, or on a store's path: opened when first needed
        (`fusevol umount` needs only the registry)."""
        self._store = None if isinstance(store, str) else store
        self.store_path = store if isinstance(store, str) else store.path
        self.mnt_dir = registry.mount_dir(self.store_path)

    @classmethod
    def open(cls, store_path: str) -> "VolumeService":
        """A service on the store at `store_path` (an absolute, resolved path)."""
        return cls(store_path)

    @property
    def store(self):
        if self._store is None:
            from ..store import Store

            self._store = Store.open(self.store_path)
        return self._store

    def driver_path(self, name: str) -> str:
        """Where the driver mounts volume `name` (STORE/mnt/NAME or --mount-dir)."""
        return os.path.join(self.mnt_dir, name)

    # -- records ----------------------------------------------------------------

    def volume(self, name: str, missing_ok: bool = False) -> Volume | None:
        with self.store.read() as txn:
            return volumes.get(txn, name, missing_ok=missing_ok)

    def all_volumes(self, removed: bool = False) -> list[Volume]:
        with self.store.read() as txn:
            return volumes.list_all(txn, removed=removed)

    def family(self, data_name: str) -> list[Volume]:
        """A data volume and its views (a source removed for its views included)."""
        return [v for v in self.all_volumes(removed=True) if v.family == data_name]

    def family_count(self, data_name: str) -> int:
        """Mounts Docker counts on a data volume and all its views."""
        return sum(v.mount_count for v in self.family(data_name))

    def create(self, name: str, opts: dict | None = None) -> Volume:
        """A new volume (a clone when the options say from-snapshot=VOLUME@SNAPSHOT)."""
        from ..store import snapshots

        with self.store.write() as txn:
            return snapshots.create_volume(txn, name, opts)

    # -- what holds a volume ------------------------------------------------------

    def serving_worker(self, name: str) -> Worker | None:
        """The worker serving data volume `name`, wherever it is mounted."""
        return registry.worker_of(self.store_path, volume=name)

    def holders(self, name: str, volume: Volume | None = None) -> rules.Holders:
        volume = volume or self.volume(name)
        family = self.family(volume.family)
        place = self.driver_path(volume.name)
        mounts = {v.name: v.mount_count for v in family if v.mount_count}
        worker = self.serving_worker(volume.family)
        # A view's removal deletes its source when that was removed for its views.
        goes_with_source = volume.is_view and any(v.removed for v in family)
        if not mounts and (not volume.is_view or goes_with_source):
            worker = self._after_idle(volume.family, worker)
        return rules.Holders(
            volume=volume,
            family_mounts=mounts,
            worker=worker,
            mounted_at_driver=place if registry.is_mountpoint(place) else None)

    def receive_target_served(self, name: str) -> bool:
        """Whether receiving a stream (or a pull) into `name` must be refused
        for a worker serving it (the store refuses; rules.receive_blocked)."""
        return rules.receive_blocked(self._after_idle(name, self.serving_worker(name)))

    def _after_idle(self, name: str, worker: Worker | None) -> Worker | None:
        """A worker the driver keeps idle after its last container (it left a
        note: registry.note_idle) is on its way out: wait for it to go rather
        than refuse; the worker serving `name` after that, if any."""
        if worker is None or worker.mountpoint != self.driver_path(name):
            return worker
        until = registry.idle_until(self.store_path, name)
        left = None if until is None else until + IDLE_STOP_MARGIN - time.time()
        if left is None or left <= 0:  # none, or left by a daemon that is gone
            return worker
        registry.wait_unregistered(self.store_path, worker, left)
        return self.serving_worker(name)

    # -- changes ----------------------------------------------------------------

    def remove(self, name: str) -> list[str]:
        """Delete a volume nothing holds (rules.check_remove); returns the
        volumes deleted (a source removed for its views goes with its last
        view; one with views stays, marked removed)."""
        rules.check_remove(self.holders(name))
        with self.store.write() as txn:
            deleted = volumes.remove(txn, name)
        # Its large chunks' ranges back to the disk now, not at some later commit.
        datafiles.reclaim_all(self.store)
        for gone in deleted:
            registry.remove_worker_log(self.store_path, gone)
            try:
                os.rmdir(self.driver_path(gone))  # an empty directory only: never a recursive delete
            except OSError:
                pass
        return deleted

    def flush_for_read(self, name: str, missing_ok: bool = True) -> None:
        """Data written before a read of volume `name` began (a snapshot, an
        export, a diff against the live volume) must be in what it reads: the
        worker serving it stores what it holds first. A volume that does not
        exist is left to the read to report, unless not `missing_ok`."""
        with self.store.read() as txn:
            volume = volumes.get(txn, name, missing_ok=missing_ok)
        if not registry.flush_worker(self.store_path, rules.flush_target(volume, name)):
            # No worker serves it: one killed since this process opened the
            # store may have left an intent log to apply first.
            from ..store import intentlog
            intentlog.replay_unserved(self.store)

    def snapshot(self, volume: str, name: str | None = None) -> Snapshot:
        """snapshotting.take_snapshot, and the snapshot's record."""
        made = registry.snapshot_by_worker(self.store_path, volume, name)
        if made is None:
            return self.snapshot_here(volume, name)
        from ..store import snapshots

        with self.store.read() as txn:
            return snapshots.get(txn, volume, made)

    def snapshot_here(self, volume: str, name: str | None) -> Snapshot:
        """The snapshot taken by this process, after the worker serving the
        volume (if any) stored what it holds."""
        from ..store import snapshots

        self.flush_for_read(volume)
        with self.store.write() as txn:
            return snapshots.create(txn, volume, name)

    def snapshots(self, volume: str | None = None) -> list[tuple[Snapshot, int, int]]:
        """Snapshots (of `volume`, or all), each with what deleting it alone
        frees: stored bytes, and bytes of the store's file (snapshots.held_alone)."""
        from ..store import snapshots

        with self.store.read() as txn:
            return [(s, *snapshots.held_alone(txn, s))
                    for s in snapshots.list_all(txn, volume)]

    def clone(self, volume: str, name: str, new_volume: str, opts: dict | None = None) -> Volume:
        """A new volume starting as snapshot `volume`@`name` (nothing copied)."""
        from ..store import snapshots

        with self.store.write() as txn:
            return snapshots.clone(txn, volume, name, new_volume, opts)

    def rollback(self, volume: str, name: str, force: bool = False) -> None:
        """Return `volume` to snapshot `name`. Refused while containers use it
        or a worker serves it; with `force`, that worker stores what it holds,
        is stopped (refused while files are open on it), and is started again
        on the rolled-back volume at the same place."""
        from ..store import snapshots

        with self.store.read() as txn:
            snapshots.get(txn, volume, name)
        worker = rules.check_rollback(self.holders(volume), force)
        if worker is not None:
            registry.flush_worker(self.store_path, volume)
            self.stop_worker(worker.mountpoint)
        with self.store.write() as txn:
            snapshots.rollback(txn, volume, name)
        if worker is not None:
            self.start_worker(self.mount_spec(volume, readonly=worker.readonly),
                              worker.mountpoint, options=worker.options)

    def gc(self, progress=None) -> dict:
        """The store's gc; volumes a worker serves keep their orphan files. No
        worker's idle upkeep runs meanwhile (a running one stops after its step)."""
        from ..fs import upkeepstate

        with upkeepstate.held_for_gc(self.store_path):
            return self._gc(progress)

    def _gc(self, progress) -> dict:
        from ..store import check, chunks, densify, recompress

        workers = registry.workers(self.store_path)
        with self.store.write() as txn:
            busy = rules.served_vids(volumes.list_all(txn, removed=True), workers)
            report = check.gc(txn, busy, progress)
        # Then, in transactions of their own: chunks compressed again, the file
        # written again.
        report["recompressed"] = recompress.recompress(self.store, progress)
        report["densified"] = densify.densify(self.store, progress)
        # The data files: dead ranges punched out, what no commit names cut off.
        punched = datafiles.reclaim_all(self.store)
        report["data_files"] = {**punched, **datafiles.tidy(self.store, chunks.data_files_in_use)}
        report["file"] = self.rewrite_file()
        if not report["file"]["rewritten"]:
            # Held open elsewhere (or not worth a copy): tables of random keys
            # written again in key order, and what the file holds free given
            # back to the disk, in place.
            from ..store import freepages, repack
            report["file"]["tables"] = repack.repack(self.store)
            report["file"]["holes"] = freepages.punch(self.store)
        return report

    def rewrite_file(self) -> dict:
        """The store file written again without its free pages, when no other
        process has the store open and that frees enough (store/compaction.py);
        this service's store is closed first and opened again when next needed."""
        from ..store import compaction

        if self._store is not None:
            self._store.close()
            self._store = None
        return compaction.rewrite_file(self.store_path)

    # -- workers ------------------------------------------------------------------

    def mount_spec(self, name: str, *, subpath: str | None = None, readonly: bool = False,
                   removed_ok: bool = False) -> MountSpec:
        """What mounting volume `name` serves (store/volumes.mount_spec): the
        data volume, the folder of it shown, read-only or not."""
        with self.store.read() as txn:
            return volumes.mount_spec(txn, name, subpath=subpath, readonly=readonly,
                                      removed_ok=removed_ok)

    def start_worker(self, spec: MountSpec, mountpoint: str, *, options: str | None = None,
                     fsname: str | None = None, timeout: float = 60.0,
                     forkserver=None) -> int:
        """Start a worker serving the data volume of `spec` at `mountpoint`; its
        pid once it serves, or the error it met (the one it would raise in the
        foreground). A worker serves a volume's root: a folder is shown by
        `mount_view`."""
        return registry.start_worker(self.store_path, spec, mountpoint, options=options,
                                     fsname=fsname, timeout=timeout, forkserver=forkserver)

    def stop_worker(self, mountpoint: str, lazy: bool = False, timeout: float = 60.0) -> None:
        """Unmount and wait until the worker has stored everything and exited
        (a view mounted by `mount_view`: unbound, its worker stopped when
        nothing else counts on it)."""
        if registry.worker_of(self.store_path, mountpoint=mountpoint) is None \
                and self.unmount_view(mountpoint, lazy=lazy):
            return
        registry.unmount(self.store_path, mountpoint, timeout=timeout, lazy=lazy)
