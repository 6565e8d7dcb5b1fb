"""`fusevol remote prune`: delete what no manifest reaches, and
`fusevol remote forget`: delete a snapshot's manifest (prune frees its data).

Under a prune lock (locks.py: never beside a push), prune reads every
manifest and walks every tree (tree objects only, checked by hash), then:
writes one new index for the packs it keeps, deletes the old indexes, and
only then the packs that hold nothing reachable. A pack that holds some
reachable blob is kept whole (no repacking: its unreachable part is counted
in the report). A reader that loaded the old indexes finds every pack of a
snapshot that still has its manifest.
"""

import concurrent.futures

from ..errors import RemoteDamaged
from ..store import chunks, trees
from . import catalog, layout, manifests
from .fetch import Fetcher
from .locks import PruneLock
from .s3 import Bucket

THREADS = 8


def forget(remote: dict, volume: str, name: str) -> None:
    bucket = Bucket(remote)
    manifests.read(bucket, volume, name)  # NotFound, or damage, said here
    bucket.delete([layout.manifest_name(volume, name)])


def prune(remote: dict, *, break_locks: bool = False, dry_run: bool = False) -> dict:
    bucket = Bucket(remote, max_pool=THREADS)
    with concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="prune") as pool, \
            PruneLock(bucket, break_locks):
        cat = catalog.load(bucket, pool, recover=True, strict=False)  # damaged indexes: replaced
        snaps = manifests.list_all(bucket, pool)
        reachable = _reachable(Fetcher(bucket, cat, pool), cat,
                               [bytes.fromhex(s["root"]) for s in snaps])
        lost = next((bid for bid in reachable if not cat.has(bid)), None)
        if lost is not None:
            # Its pack may be one whose header is unreadable: deleting packs
            # now could delete it for good.
            raise RemoteDamaged(f"remote {bucket.name}: chunk {lost.hex()} that a snapshot "
                                "reaches is in no pack this prune can read; prune changes "
                                "nothing (fusevol remote verify names what is wrong)")
        packs: dict[bytes, list] = {}
        for packs_of_index in cat.indexes.values():
            packs.update(packs_of_index)
        packs.update(cat.unindexed)
        keep = {pid: entries for pid, entries in packs.items()
                if any(e[1] in reachable for e in entries)}
        drop = [pid for pid in cat.packs if pid not in keep]
        unused = sum(e[3] for entries in keep.values() for e in entries if e[1] not in reachable)
        report = {"snapshots": len(snaps), "packs_kept": len(keep), "packs_deleted": len(drop),
                  "bytes_deleted": sum(cat.packs[p] for p in drop),
                  "indexes_replaced": len(cat.indexes) + len(cat.damaged), "unused_bytes_kept": unused,
                  "dry_run": dry_run}
        if dry_run:
            return report
        new_index = None
        if keep:
            index_id, data = layout.encode_index(keep)
            new_index = layout.index_name(index_id)
            bucket.put(new_index, data)
        bucket.delete([name for name in [*cat.indexes, *cat.damaged] if name != new_index])
        bucket.delete([layout.pack_name(pid) for pid in drop])
    return report


def _reachable(fetcher: Fetcher, cat: catalog.Catalog, roots: list[bytes]) -> set[bytes]:
    """Every blob id the trees of these roots reach (tree objects are
    downloaded and checked; chunks are only named)."""
    seen: set[bytes] = set()
    level = list(dict.fromkeys(roots))
    while level:
        wanted = [oid for oid in dict.fromkeys(level) if oid not in seen]
        missing = [oid for oid in wanted if not cat.has(oid)]
        if missing:
            # Deleting data while a snapshot lacks part of its tree could make
            # things worse: say so and change nothing.
            raise RemoteDamaged(f"remote {fetcher.bucket.name}: tree object {missing[0].hex()} "
                                "that a manifest reaches is in no pack; prune changes nothing")
        got = fetcher.fetch(wanted)
        seen.update(wanted)
        level = []
        for oid in wanted:
            obj = trees.decode(chunks.decode(got[oid]))
            kids, chunk_ids = obj.children()
            level.extend(kids)
            seen.update(chunk_ids)
    return seen
