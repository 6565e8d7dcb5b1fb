"""`fusevol remote prune`: delete what no manifest reaches, and
`fusevol remote forget`: delete a snapshot's manifest (prune frees its data).

Under a prune lock (locks.py: never beside a push), prune reads every
manifest and walks every tree (tree objects only, checked by hash). Each
reachable blob gets one home pack (the pack with the most reachable bytes
first, so a blob in two packs, left by an interrupted prune or push, keeps
one). A pack that is home to nothing goes. A kept pack more than REPACK_DEAD
unreachable is rewritten: its reachable blobs are downloaded (checked) and
uploaded in new packs. Then one new index for the packs kept and made, the
old indexes deleted, and only then the packs that go. A prune that stops
half way leaves packs no index lists; the next push or prune reads them by
their headers, and the next prune deletes whichever copy it does not need.

A reader that loaded the old indexes finds every pack of a snapshot that
still has its manifest, except a pack rewritten meanwhile: a pull that meets
such a missing pack reads the indexes again and goes on (pull.py).
"""

import concurrent.futures

from ..errors import RemoteDamaged
from ..store import chunks, trees
from . import catalog, layout, manifests
from .fetch import Fetcher
from .locks import PruneLock
from .s3 import Bucket
from .upload import Uploader

THREADS = 8
REPACK_DEAD = 0.5  # a kept pack more than this unreachable (by bytes) is rewritten


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
                                "nothing", reason="remote_damaged", remote=bucket.name)
        packs: dict[bytes, list] = {}
        for packs_of_index in cat.indexes.values():
            packs.update(packs_of_index)
        packs.update(cat.unindexed)
        packs = {pid: entries for pid, entries in packs.items() if pid in cat.packs}
        live = _homes(packs, reachable)
        homeless = reachable.difference(*live.values())
        if homeless:
            raise RemoteDamaged(f"remote {bucket.name}: blob {next(iter(homeless)).hex()} that a "
                                "snapshot reaches is only in packs that are missing; prune "
                                "changes nothing", reason="remote_damaged", remote=bucket.name)
        keep = {pid: entries for pid, entries in packs.items() if live.get(pid)}
        repack = {pid: entries for pid, entries in keep.items()
                  if _dead_bytes(entries, live[pid]) > REPACK_DEAD * _bytes(entries)}
        drop = [pid for pid in cat.packs if pid not in keep]
        moved = [(e[0], e[1]) for pid in repack for e in keep[pid] if e[1] in live[pid]]
        unused = sum(_dead_bytes(entries, live[pid]) for pid, entries in keep.items()
                     if pid not in repack)
        report = {"snapshots": len(snaps), "packs_kept": len(keep) - len(repack),
                  "packs_deleted": len(drop) + len(repack),
                  "bytes_deleted": sum(cat.packs[p] for p in [*drop, *repack]),
                  "packs_repacked": len(repack),
                  "bytes_rewritten": sum(e[3] for p in repack for e in keep[p] if e[1] in live[p]),
                  "indexes_replaced": len(cat.indexes) + len(cat.damaged),
                  "unused_bytes_kept": unused, "dry_run": dry_run}
        if dry_run:
            return report
        final = {pid: entries for pid, entries in keep.items() if pid not in repack}
        if moved:
            final.update(_rewrite(bucket, cat, pool, moved))
        new_index = None
        if final:
            index_id, data = layout.encode_index(final)
            new_index = layout.index_name(index_id)
            bucket.put(new_index, data)
        bucket.delete([name for name in [*cat.indexes, *cat.damaged] if name != new_index])
        bucket.delete([layout.pack_name(pid) for pid in [*drop, *repack]])
        report["packs_made"] = len(final) - report["packs_kept"]
    return report


def _bytes(entries: list) -> int:
    return sum(e[3] for e in entries)


def _dead_bytes(entries: list, homed: set[bytes]) -> int:
    return sum(e[3] for e in entries if e[1] not in homed)


def _homes(packs: dict[bytes, list], reachable: set[bytes]) -> dict[bytes, set[bytes]]:
    """pack id -> the reachable blobs it is home to: each blob one home, the
    packs with the most reachable bytes chosen first."""
    def reachable_bytes(pid):
        return sum(e[3] for e in packs[pid] if e[1] in reachable)

    homed: set[bytes] = set()
    out: dict[bytes, set[bytes]] = {}
    for pid in sorted(packs, key=lambda p: (-reachable_bytes(p), p)):
        mine = {e[1] for e in packs[pid] if e[1] in reachable and e[1] not in homed}
        if mine:
            out[pid] = mine
            homed |= mine
    return out


def _rewrite(bucket: Bucket, cat: catalog.Catalog, pool, moved: list) -> dict[bytes, list]:
    """Download (checked) and upload again, in new packs, the blobs (kind, id)
    of packs being rewritten; {new pack id: entries}. Every blob is on the
    remote already, so the order of the new packs does not matter."""
    uploader = Uploader(bucket, pool, None)
    fetcher = Fetcher(bucket, cat, pool)
    kinds = {bid: kind for kind, bid in moved}
    try:
        for batch in fetcher.stream([bid for _, bid in moved]):
            for bid, stored, _ in batch:
                uploader.add(kinds[bid], bid, bytes(stored))
        uploader.finish()
    finally:
        try:
            uploader.wait()
        except BaseException:
            pass
    return uploader.packs


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
