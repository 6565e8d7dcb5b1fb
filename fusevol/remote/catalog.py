"""What a remote holds: every blob's pack, offset and length, from its indexes
(and, for a push, from packs no index lists yet: an interrupted push's)."""

import concurrent.futures
import logging
from dataclasses import dataclass, field

from ..errors import RemoteDamaged
from . import layout
from .s3 import Bucket

log = logging.getLogger(__name__)
TAIL_GUESS = 64 << 10  # one ranged GET reads most pack headers whole


@dataclass
class Catalog:
    # blob id -> (kind, pack id, offset, length)
    blobs: dict[bytes, tuple[bytes, bytes, int, int]] = field(default_factory=dict)
    indexes: dict[str, dict[bytes, list]] = field(default_factory=dict)  # index name -> packs
    packs: dict[bytes, int] = field(default_factory=dict)  # listed packs -> size
    unindexed: dict[bytes, list] = field(default_factory=dict)  # recovered packs -> entries
    damaged: list[str] = field(default_factory=list)  # what could not be read, for a report

    def has(self, bid: bytes) -> bool:
        return bid in self.blobs

    def where(self, bid: bytes) -> tuple[bytes, bytes, int, int] | None:
        return self.blobs.get(bid)

    def _add(self, pid: bytes, entries: list) -> None:
        for kind, bid, offset, length in entries:
            self.blobs.setdefault(bid, (kind, pid, offset, length))


def load(bucket: Bucket, pool: concurrent.futures.Executor, *, recover: bool = False,
         list_packs: bool = False, strict: bool = True) -> Catalog:
    """Read every index. recover: also list the packs and read the header of
    each pack no index names (for a push that resumes). strict: a damaged
    index is an error; else it is skipped and noted in `damaged`."""
    cat = Catalog()
    names = [name for name, _, _ in bucket.list_objects("index/")]
    for name, data in zip(names, pool.map(bucket.get, names)):
        if data is None:
            continue  # deleted by a prune since the listing
        try:
            cat.indexes[name] = layout.decode_index(name, data)
        except RemoteDamaged:
            if strict:
                raise
            cat.damaged.append(name)
            continue
        for pid, entries in cat.indexes[name].items():
            cat._add(pid, entries)
    indexed = {pid for packs in cat.indexes.values() for pid in packs}
    if recover or list_packs:
        for name, size, _ in bucket.list_objects("data/"):
            pid = layout.pack_id_of(name)
            if pid is not None:
                cat.packs[pid] = size
    if recover:
        lost = [pid for pid in cat.packs if pid not in indexed]
        for pid, entries in zip(lost, pool.map(lambda p: read_header(bucket, p, cat.packs[p]), lost)):
            if entries is None:
                continue
            cat.unindexed[pid] = entries
            cat._add(pid, entries)
        if cat.unindexed:
            log.info("%d packs no index lists (an interrupted push): reused", len(cat.unindexed))
    return cat


def read_header(bucket: Bucket, pid: bytes, size: int) -> list | None:
    """The blobs a pack lists in its header; None for a pack that is gone or
    whose header is damaged (its blobs are then sent again)."""
    name = layout.pack_name(pid)
    try:
        tail = bucket.get(name, suffix=min(size, TAIL_GUESS))
        if tail is None:
            return None
        need, entries = layout.read_pack_header(name, tail, size)
        if entries is None:
            tail = bucket.get(name, suffix=need + layout.pack_tail_size())
            if tail is None:
                return None
            _, entries = layout.read_pack_header(name, tail, size)
        return entries
    except RemoteDamaged as e:
        log.warning("%s; its blobs will be sent again", e)
        return None
