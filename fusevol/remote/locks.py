"""Locks that keep a prune and a push from running at the same time on a remote.

A push relies on blobs it found in the remote's indexes (it skips them); a
prune deletes blobs no manifest reaches. Both leave a lock object under
`locks/` and then look for the other kind, in that order:

    push:   PUT locks/push-ID, then LIST locks/: a fresh locks/prune -> give up
    prune:  PUT locks/prune (conditional: one prune at a time), then LIST
            locks/: a fresh locks/push-* -> give up

With a server whose listings show every PUT that completed before them (AWS
S3 since 2020, Ceph's radosgw), one of the two always sees the other's lock:
whichever wrote its lock second lists after the first one's PUT. A push
rewrites its lock every few minutes; a lock not rewritten for STALE seconds
(its holder died) is ignored. Ages are measured on the server's clock: the
LastModified of one's own lock, just written, is "now".
"""

import datetime
import json
import socket
import threading
import uuid

from ..errors import Busy
from .s3 import Bucket

LOCKS = "locks/"
PRUNE = "locks/prune"
STALE = 30 * 60
REFRESH = 5 * 60


def _body(kind: str) -> bytes:
    return json.dumps({"kind": kind, "host": socket.gethostname(),
                       "time": datetime.datetime.now(datetime.timezone.utc).isoformat()}).encode()


def _listing(bucket: Bucket) -> dict[str, datetime.datetime]:
    return {name: modified for name, _, modified in bucket.list_objects(LOCKS)}


def _holder(bucket: Bucket, name: str) -> str:
    data = bucket.get(name)
    try:
        info = json.loads(data or b"{}")
        return f"{info.get('host', '?')} since {info.get('time', '?')}"
    except ValueError:
        return "an unknown holder"


class PushLock:
    """Held while a push runs: refreshed in a thread, deleted at the end."""

    def __init__(self, bucket: Bucket):
        self.bucket = bucket
        self.name = f"{LOCKS}push-{uuid.uuid4().hex}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="push-lock", daemon=True)

    def __enter__(self) -> "PushLock":
        self.bucket.put(self.name, _body("push"))
        try:
            locks = _listing(self.bucket)
            now = locks.get(self.name)
            modified = locks.get(PRUNE)
            if modified is not None and now is not None and (now - modified).total_seconds() < STALE:
                raise Busy(f"remote {self.bucket.name} is being pruned (by "
                           f"{_holder(self.bucket, PRUNE)}); push again when it is done")
        except BaseException:
            self._delete()
            raise
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH):
            try:
                self.bucket.put(self.name, _body("push"))
            except Exception:
                pass  # the push itself will meet the same trouble and say so

    def _delete(self) -> None:
        try:
            self.bucket.delete([self.name])
        except Exception:
            pass  # left behind, it goes stale; prune --break-locks removes it

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._delete()


class PruneLock:
    """Held while a prune runs: one prune at a time, and none beside a push."""

    def __init__(self, bucket: Bucket, break_locks: bool = False):
        self.bucket = bucket
        self.break_locks = break_locks

    def __enter__(self) -> "PruneLock":
        if not self.bucket.put_new(PRUNE, _body("prune")):
            locks = _listing(self.bucket)
            # Our own PUT failed, so measure "now" with a probe lock of ours.
            probe = f"{LOCKS}probe-{uuid.uuid4().hex}"
            self.bucket.put(probe, b"")
            now = _listing(self.bucket).get(probe)
            self.bucket.delete([probe])
            modified = locks.get(PRUNE)
            if (not self.break_locks and modified is not None and now is not None
                    and (now - modified).total_seconds() < STALE):
                raise Busy(f"remote {self.bucket.name} is being pruned already (by "
                           f"{_holder(self.bucket, PRUNE)})")
            self.bucket.put(PRUNE, _body("prune"))
        try:
            locks = _listing(self.bucket)
            now = locks.get(PRUNE)
            pushes = [n for n, m in locks.items() if n.startswith(f"{LOCKS}push-")
                      and (now is None or (now - m).total_seconds() < STALE)]
            if pushes and not self.break_locks:
                raise Busy(f"remote {self.bucket.name} has a push running (by "
                           f"{_holder(self.bucket, pushes[0])})", reason="push_running",
                           remote=self.bucket.name)
            stale = [n for n, m in locks.items() if n.startswith(f"{LOCKS}push-") and n not in pushes]
            if self.break_locks:
                stale = [n for n in locks if n.startswith(f"{LOCKS}push-")]
            if stale:
                self.bucket.delete(stale)
        except BaseException:
            self.bucket.delete([PRUNE])
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.bucket.delete([PRUNE])
        except Exception:
            pass  # goes stale
