"""Blobs gathered into packs and uploaded by a few threads.

Order is what keeps a remote whole at any moment: a tree object is uploaded
only once every blob below it is (a tree pack waits until every data pack
before it has landed), so a tree object the remote holds always comes with
its whole subtree, and a push may skip a subtree the remote has by its root.
"""

import concurrent.futures
import os
import threading

from ..store.stream import NoProgress
from . import layout
from .pace import pace_for
from .s3 import Bucket

PACK_SIZE = 32 << 20
IN_FLIGHT = 4  # packs uploading at once (each is held in memory until it lands)


def pack_size() -> int:
    """Bytes per pack; FUSEVOL_PACK_SIZE makes many small packs in tests."""
    return int(os.environ.get("FUSEVOL_PACK_SIZE", PACK_SIZE))


class Uploader:
    def __init__(self, bucket: Bucket, pool: concurrent.futures.Executor, progress):
        self.bucket = bucket
        self.pool = pool
        self.progress = progress or NoProgress()
        self.limit = pack_size()
        self.open: dict[bytes, list] = {layout.CHUNK: [], layout.OBJECT: []}
        self.open_bytes = {layout.CHUNK: 0, layout.OBJECT: 0}
        self.pending: list[concurrent.futures.Future] = []
        self.slots = threading.Semaphore(IN_FLIGHT)
        self.packs: dict[bytes, list] = {}  # uploaded: pack id -> entries
        self.sent_bytes = 0
        self.lock = threading.Lock()
        self._pace = pace_for("FUSEVOL_PUSH_LIMIT")

    def add(self, kind: bytes, bid: bytes, stored: bytes) -> None:
        self.open[kind].append((kind, bid, stored))
        self.open_bytes[kind] += len(stored)
        if self.open_bytes[kind] >= self.limit:
            if kind == layout.OBJECT:
                self.seal(layout.CHUNK)
                self.wait()  # every blob below these objects has landed
            self.seal(kind)

    def seal(self, kind: bytes) -> None:
        blobs = self.open[kind]
        if not blobs:
            return
        self.open[kind], self.open_bytes[kind] = [], 0
        if any(f.done() and f.exception() is not None for f in self.pending):
            self.wait()  # a pack failed: stop here, not after uploading the rest
        self.slots.acquire()  # bounds the memory that packs in flight hold
        try:
            self.pending.append(self.pool.submit(self._upload, blobs))
        except BaseException:
            self.slots.release()
            raise

    def _upload(self, blobs: list) -> None:
        try:
            pid, data, entries = layout.seal_pack(blobs)
            if self._pace is not None:
                self._pace.take(len(data))
            self.bucket.put(layout.pack_name(pid), data)
            with self.lock:
                self.packs[pid] = entries
                self.sent_bytes += len(data)
            self.progress.advance(sum(len(b[2]) for b in blobs))
        finally:
            self.slots.release()

    def wait(self) -> None:
        """Until every pack sealed so far has landed; the first failure is raised."""
        pending, self.pending = self.pending, []
        error = None
        for future in pending:
            try:
                future.result()
            except BaseException as e:  # let the rest finish: no upload outlives the push
                error = error or e
        if error is not None:
            raise error

    def finish(self) -> None:
        """Upload what is left: data first, then the tree objects above it."""
        self.seal(layout.CHUNK)
        self.wait()
        self.seal(layout.OBJECT)
        self.wait()
