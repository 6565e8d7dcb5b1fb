"""Volumes that follow their service between hosts (`-o remote=NAME`).

Create: when the remote holds snapshots of the volume, the new volume starts
as the newest, pulled in the background (incoming.py). First mount on a host:
take the volume's lease on the remote (lease.py; held elsewhere, the mount
fails naming that host), and if the remote's newest snapshot is newer than
this host's copy (and the local volume did not change since its own last
snapshot: else the copies diverged and the mount says so), let go of the
lease and pull it in the daemon as after a Create: the Mount waits for it up
to a bound, then answers how far it is (a pull of many GiB outlasts dockerd's
two minutes); once pulled, take the lease again and look again. While
mounted: renew the lease. After the last unmount: snapshot (unless nothing
changed) and push in a thread, then release the lease; a push that fails
keeps the lease and is tried again, so no other host mounts an older copy
meanwhile.

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
from ..store import remotes, snapshots, stream, volumes
from ..store.env import Store
from . import manifests, pull, push
from .lease import Lease, Lost
from .s3 import Bucket

log = logging.getLogger(__name__)
RETRY_PUSH = 60.0
PLACEHOLDER = "pull-base"  # an empty volume's snapshot that a pull rolls forward from


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


def newer_on_remote(store: Store, remote: dict, bucket: Bucket, volume: str) -> str | None:
    """The name of the remote's newest snapshot of VOLUME if this host's copy
    is older, else None. Raises Busy (reason "diverged") if both changed: the
    local volume holds data no snapshot the remote has knows of."""
    newest = newest_on_remote(bucket, volume)
    if newest is None:
        return None
    with store.read() as txn:
        local = [s for s in snapshots.list_all(txn, volume) if s.name != PLACEHOLDER]
        record = volumes.get(txn, volume)
        if any(s.root == newest["root"] for s in local):
            return None  # this host has it (and maybe newer, pushed after the last unmount)
        if local and local[-1].created_ns >= newest.get("created_ns", 0):
            return None
        if local:
            unchanged = stream.unchanged_since_snapshot(txn, record)
        else:  # made here before the remote had it: fine to roll forward while empty
            usage = volumes.stats(txn, record)
            unchanged = not (usage.logical_bytes or usage.inodes > 1)
    if not unchanged:
        raise Busy(f"volume {volume} holds data here that was never pushed, and remote "
                   f"{remote['name']} has {volume}@{newest['name']}: the copies diverged",
                   reason="diverged", volume=volume, remote=remote["name"],
                   snapshot=newest["name"])
    return newest["name"]


def catch_up(store: Store, remote: dict, volume: str, snapshot: str, *, progress=None,
             stop: threading.Event | None = None) -> None:
    """Roll the existing, unmounted VOLUME forward to SNAPSHOT of the remote
    (receive refuses if it changed since its last snapshot). A volume with no
    snapshot yet (made here before the remote had one, and still empty) gets
    an empty placeholder, PLACEHOLDER, to roll forward from; it goes once the
    pull is over, or with the next one if a daemon stopped in between."""
    with store.write() as txn:
        if snapshots.exists(txn, volume, snapshot):
            return  # pulled already (a daemon stopped after installing it)
        if not snapshots.list_all(txn, volume):
            snapshots.create(txn, volume, PLACEHOLDER)
    try:
        pull.pull(store, remote, volume, snapshot, progress=progress, stop=stop)
    finally:
        with store.write() as txn:
            if snapshots.exists(txn, volume, PLACEHOLDER):
                base = snapshots.get(txn, volume, PLACEHOLDER)
                if not base.logical_bytes and base.inodes <= 1:
                    snapshots.remove(txn, volume, PLACEHOLDER)


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

    def before_first_mount(self, record: Volume, pull_newer=None) -> None:
        """Take the volume's lease (Busy naming the host that holds it) and
        bring the volume up to the remote's newest snapshot. `pull_newer(volume,
        remote, snapshot)` pulls it and returns once done, or raises (Busy when
        it runs on past what a Mount may wait); the lease is not held meanwhile,
        so a pull of any length never outlives it. None: pull here and now."""
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
        while True:
            lease.take()
            try:
                newer = newer_on_remote(self.store, remote, bucket, volume)
                if newer is not None and pull_newer is None:
                    catch_up(self.store, remote, volume, newer)  # no other host pushes meanwhile
                    newer = None
                if newer is None:
                    with self.store.write() as txn:
                        remotes.owe(txn, volume)  # from now on the remote may lack what is written
                    break
            except BaseException:
                lease.release()
                raise
            lease.release()
            pull_newer(volume, remote, newer)  # then the lease again: it may have moved on
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
