"""Blobs downloaded from packs by ranged GETs in threads, each checked against
its id (in the downloading thread) before anything uses it: damage is named by
pack and blob."""

import collections
import concurrent.futures
import threading

from ..errors import RemoteDamaged
from ..store import chunks, trees
from . import layout
from .catalog import Catalog
from .pace import pace_for
from .s3 import Bucket

MAX_GAP = 1 << 20     # blobs this close in a pack are read by one GET (the gap is thrown away)
MAX_RANGE = 16 << 20  # and no GET reads more than this (measured: 16 MiB x 8 beat 32 x 6 by 1.3x)
IN_FLIGHT = 8


def check_blob(kind: bytes, bid: bytes, stored) -> bytes | memoryview | None:
    """The content stored bytes decode to, if its id is bid; else None. A raw
    chunk is hashed where it lies (a view of it is returned, not a copy)."""
    try:
        if kind == layout.CHUNK and stored[0] == chunks.RAW:
            data = memoryview(stored)[1:]
            return data if chunks.chunk_id(data) == bid else None
        data = chunks.decode(stored)
        if kind == layout.CHUNK:
            return data if chunks.chunk_id(data) == bid else None
        return data if trees.object_id(data) == bid else None
    except Exception:  # a flipped byte can break zstd or the object layout in many ways
        return None


class PackMissing(RemoteDamaged):
    """A pack an index lists is not there (damage, or rewritten by a prune
    since the indexes were read)."""


def _what(kind: bytes) -> str:
    return "chunk" if kind == layout.CHUNK else "tree object"


class Fetcher:
    def __init__(self, bucket: Bucket, cat: Catalog, pool: concurrent.futures.Executor):
        self.bucket = bucket
        self.cat = cat
        self.pool = pool
        self.downloaded_bytes = 0
        self._lock = threading.Lock()
        self._pace = pace_for("FUSEVOL_PULL_LIMIT")

    def _ranges(self, ids) -> list[tuple[bytes, int, int, list]]:
        """(pack id, start, length, [(kind, id, offset, length)]) covering ids."""
        by_pack = collections.defaultdict(list)
        for bid in ids:
            where = self.cat.where(bid)
            if where is None:
                raise RemoteDamaged(f"remote {self.bucket.name}: blob {bid.hex()} is in no index "
                                    "(the remote lost data: push the snapshot again from a host that has it)")
            kind, pid, offset, length = where
            by_pack[pid].append((kind, bid, offset, length))
        out = []
        for pid, entries in by_pack.items():
            entries.sort(key=lambda e: e[2])
            group = [entries[0]]
            for e in entries[1:]:
                start, end = group[0][2], group[-1][2] + group[-1][3]
                if e[2] - end <= MAX_GAP and e[2] + e[3] - start <= MAX_RANGE:
                    group.append(e)
                else:
                    out.append(self._range(pid, group))
                    group = [e]
            out.append(self._range(pid, group))
        return out

    @staticmethod
    def _range(pid: bytes, group: list) -> tuple:
        start = group[0][2]
        return pid, start, group[-1][2] + group[-1][3] - start, group

    def _get(self, pid: bytes, start: int, length: int, group: list) -> list[tuple]:
        name = layout.pack_name(pid)
        if self._pace is not None:
            self._pace.take(length)
        data = self.bucket.get(name, start, length)
        if data is None:
            raise PackMissing(f"remote {self.bucket.name}: pack {name} is missing "
                                f"(it holds {_what(group[0][0])} {group[0][1].hex()})")
        if len(data) != length:
            raise RemoteDamaged(f"remote {self.bucket.name}: pack {name} is damaged (shorter than "
                                "its index says)")
        view, out = memoryview(data), []
        for kind, bid, offset, blen in group:
            stored = view[offset - start: offset - start + blen]  # no copy of the range
            content = check_blob(kind, bid, stored)
            if content is None:
                raise RemoteDamaged(f"remote {self.bucket.name}: pack {name} is damaged: {_what(kind)} "
                                    f"{bid.hex()} does not match its content")
            out.append((bid, stored, content))
        with self._lock:
            self.downloaded_bytes += length
        return out

    def fetch(self, ids) -> dict[bytes, bytes]:
        """{id: stored bytes} of every id, all checked."""
        return {bid: bytes(stored) for batch in self.stream(ids) for bid, stored, _ in batch}

    def stream(self, ids):
        """Batches of (id, stored bytes, content), each checked against its id
        in the downloading thread, in order as they arrive, with a few ranges
        downloading ahead. Stored bytes and content may be views of a range."""
        ranges = self._ranges(ids)
        pending = collections.deque()
        try:
            for r in ranges:
                pending.append(self.pool.submit(self._get, *r))
                if len(pending) >= IN_FLIGHT:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
            concurrent.futures.wait(pending)
