"""Volumes that follow their service between hosts (`-o remote=NAME`).

Create: when the remote holds snapshots of the volume, the new volume starts
as the newest, pulled in the background (incoming.py). First mount on a host: take the volume's lease on the
remote (lease.py; held elsewhere, the mount fails naming that host), and pull
the remote's newest snapshot if it is newer than this host's (receive refuses
when the local volume changed since its own last snapshot: the copies
diverged). While mounted: renew the lease. After the last unmount: snapshot
(unless nothing changed) and push in a thread, then release the lease; a push
that fails keeps the lease and is tried again, so no other host mounts an
older copy meanwhile.

From its first mount until that push has landed, the store notes that this
host owes the remote the volume's data (store/remotes.owe). A daemon killed
meanwhile (mounted, or in the middle of the push) finds the note when it
starts again (`resume`, from the supervisor's reconcile): a volume still
mounted gets its lease back and renewed, one no longer mounted is pushed.
"""

import concurrent.futures
import logging
import threading
from dataclasses import dataclass, field

from ..errors import Busy, FusevolError
from ..records import Volume
from ..store import remotes, snapshots, volumes
from ..store.env import Store
from . import manifests, pull, push
from .lease import Lease, Lost
from .s3 import Bucket

log = logging.getLogger(__name__)
RETRY_PUSH = 60.0


def store_id(store: Store) -> str:
    """This store's lasting id: a lease taken by it is its own after a restart."""
    with store.read() as txn:
        known = remotes.known_store_id(txn)
    if known is not None:
        return known
    with store.write() as txn:
        return remotes.store_id(txn)


def _remote_of(store: Store, record: Volume) -> dict | None:
    name = record.options.get("remote")
    if not name:
        return None
    with store.read() as txn:
        return remotes.get(txn, name)


def newest_on_remote(bucket: Bucket, volume: str) -> dict | None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        snaps = manifests.list_all(bucket, pool, volume)
    return max(snaps, key=lambda s: s.get("created_ns", 0)) if snaps else None


@dataclass
class _Held:
    lease: Lease
    mounted: bool = True
    stop: threading.Event = field(default_factory=threading.Event)
    renewer: threading.Thread | None = None
    pusher: threading.Thread | None = None
    unmounts: int = 0  # last unmounts seen: a push started before the latest pushes again


class Follower:
    def __init__(self, store: Store, renew_every: float | None = None):
        self.store = store
        self.renew_every = renew_every
        self.held: dict[str, _Held] = {}
        self.lock = threading.Lock()

    def before_first_mount(self, record: Volume) -> None:
        remote = _remote_of(self.store, record)
        if remote is None:
            return
        volume = record.name
        with self.lock:
            held = self.held.get(volume)
            if held is not None:  # still held from the last mount (its push may run)
                held.mounted = True
                return
        bucket = Bucket(remote)
        lease = Lease(bucket, volume, store_id(self.store))
        lease.take()
        try:
            self._catch_up(remote, bucket, volume)
            with self.store.write() as txn:
                remotes.owe(txn, volume)  # from now on the remote may lack what is written
        except BaseException:
            lease.release()
            raise
        self._hold(volume, lease, mounted=True)

    def _hold(self, volume: str, lease: Lease, mounted: bool) -> _Held:
        held = _Held(lease, mounted=mounted)
        held.renewer = threading.Thread(target=self._renew, args=(volume, held), daemon=True,
                                        name=f"lease-{volume}")
        held.renewer.start()
        with self.lock:
            self.held[volume] = held
        return held

    def resume(self, record: Volume, mounted: bool) -> None:
        """After a daemon restart: hold the lease of a volume still mounted,
        and push one this host still owes the remote (its push was cut short)."""
        volume = record.name
        with self.lock:
            if volume in self.held:
                return
        with self.store.read() as txn:
            owed = remotes.owes(txn, volume)
        if not owed and not mounted:
            return
        remote = _remote_of(self.store, record)
        if remote is None:
            return
        lease = Lease(Bucket(remote), volume, store_id(self.store))
        try:
            lease.take()
        except Busy as e:
            raise Busy(f"{volume}: this host has data that remote {remote['name']} may lack "
                       f"(its push after the last unmount did not finish), but {e}") from None
        if mounted and not owed:
            with self.store.write() as txn:
                remotes.owe(txn, volume)
        if owed and not mounted:
            log.info("%s: pushing what the last unmount did not finish pushing", volume)
        held = self._hold(volume, lease, mounted=mounted)
        if not mounted:
            self.after_last_unmount(record, held)

    def _catch_up(self, remote: dict, bucket: Bucket, volume: str) -> None:
        newest = newest_on_remote(bucket, volume)
        if newest is None:
            return
        with self.store.read() as txn:
            local = snapshots.list_all(txn, volume)
        if any(s.root == newest["root"] for s in local):
            return  # this host has it (and maybe newer, pushed after the last unmount)
        if local and local[-1].created_ns >= newest.get("created_ns", 0):
            return
        log.info("%s: pulling %s@%s from %s before mounting", volume, volume, newest["name"],
                 remote["name"])
        placeholder = None
        if not local:
            # Made here before the remote had it: a base to roll forward from,
            # if nothing was written to it (else the two copies diverged).
            with self.store.write() as txn:
                usage = volumes.stats(txn, volumes.get(txn, volume))
                if usage.logical_bytes or usage.inodes > 1:
                    raise Busy(f"volume {volume} holds data here that was never pushed, and "
                               f"remote {remote['name']} has {volume}@{newest['name']}: the "
                               "copies diverged", reason="diverged", volume=volume,
                               remote=remote["name"], snapshot=newest["name"])
                placeholder = snapshots.create(txn, volume).name
        try:
            pull.pull(self.store, remote, volume, newest["name"])
        finally:
            if placeholder is not None:
                with self.store.write() as txn:
                    snapshots.remove(txn, volume, placeholder)

    def _renew(self, volume: str, held: _Held) -> None:
        every = self.renew_every or held.lease.ttl / 3
        while not held.stop.wait(every):
            try:
                held.lease.renew()
            except Lost as e:
                log.error("%s", e)
                return
            except Exception as e:  # the server away for a while: try again
                log.warning("%s: renewing its lease: %s", volume, e)

    def after_last_unmount(self, record: Volume, held: _Held | None = None) -> None:
        volume = record.name
        if held is None:
            with self.lock:
                held = self.held.get(volume)
            if held is None:
                # Not held by this daemon: mounted before it started. A push
                # owed still goes out (resume takes the lease first); if it
                # cannot now, the next reconcile tries again.
                try:
                    self.resume(record, mounted=False)
                except FusevolError as e:
                    log.error("%s: %s", volume, e)
                return
        with self.lock:
            held.mounted = False
            held.unmounts += 1
            if held.pusher is not None and held.pusher.is_alive():
                return  # that push goes round once more for this unmount
            held.pusher = threading.Thread(target=self._push, args=(record, held), daemon=True,
                                           name=f"push-{volume}")
            held.pusher.start()

    def _push(self, record: Volume, held: _Held) -> None:
        volume = record.name
        while True:
            with self.lock:
                round_of = held.unmounts
            try:
                remote = _remote_of(self.store, record)
                with self.store.write() as txn:
                    vrecord = volumes.get(txn, volume)
                    root = snapshots.write_tree(txn, snapshots.inodes_of(txn, vrecord))
                    local = snapshots.list_all(txn, volume)
                    if local and bytes.fromhex(local[-1].root) == root:
                        snap = local[-1]
                    else:
                        snap = snapshots.create(txn, volume)
                push.push(self.store, remote, volume, snap.name)
                log.info("%s: pushed %s@%s to %s", volume, volume, snap.name, remote["name"])
                with self.lock:
                    if held.mounted:
                        return  # mounted again meanwhile: keep holding; its unmount pushes
                    if held.unmounts == round_of:
                        with self.store.write() as txn:
                            remotes.settle(txn, volume)  # the remote has it all
                        del self.held[volume]
                        break
                continue  # unmounted again while this push ran: push that too
            except Exception as e:
                log.error("%s: push after the last unmount failed (%s); the lease stays held, "
                          "trying again in %.0f s", volume, e, RETRY_PUSH)
                if held.stop.wait(RETRY_PUSH):
                    return
        held.stop.set()
        held.lease.release()

    def wait(self, volume: str) -> None:
        """Until the push after the last unmount of VOLUME is done (tests)."""
        held = self.held.get(volume)
        if held is not None and held.pusher is not None:
            held.pusher.join()

    def close(self) -> None:
        for held in list(self.held.values()):
            held.stop.set()
