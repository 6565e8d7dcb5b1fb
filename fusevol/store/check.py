"""Whole-store checks: what is reachable and what every reference count must
be (for gc), and whether every chunk and object hashes right and every
reference resolves (for verify).

Holders of references, as the rest of the store counts them:
- a chunk: each block-map row naming it, and each reachable file object listing it;
- a tree object: each snapshot record (its root), each inode row whose
  ``tree_id`` names it, each folder's base in dirchanges (the object a folder
  in pieces was last written as), and each reachable object listing it (a
  directory its entries, a folder in pieces its top piece, a piece its items).
"""

import stat
from collections import Counter
from dataclasses import dataclass, field

from ..errors import StoreDamaged
from ..records import Volume
from . import chunks, packs, snapshots, trees, volumes
from .env import Txn
from .inodes import Inodes
from .schema import LAZY, NO_TREE, ROOT_INO, Inode, VolumeStats, read_u64, u64, vkey
from ..progress import NoProgress


def entries(txn: Txn, table: str) -> int:
    return txn.txn.stat(txn.store.dbs[table])["entries"]


def short(oid: bytes) -> str:
    return oid.hex()[:16] + "..."


@dataclass
class Census:
    chunk_refs: Counter = field(default_factory=Counter)
    object_refs: Counter = field(default_factory=Counter)
    reachable_objects: set = field(default_factory=set)
    missing_objects: set = field(default_factory=set)
    bad_objects: set = field(default_factory=set)   # undecodable, or not matching their id
    vids: set = field(default_factory=set)          # volumes that own inode rows


def census(txn: Txn, progress: NoProgress) -> Census:
    """Count what every chunk's and object's reference count must be, from
    the holders that exist (volumes' rows and snapshots), walking every
    object they reach once."""
    c = Census()
    work = []
    progress.start("counting references", entries(txn, "inodes") + entries(txn, "blocks"))
    for snap in snapshots.list_all(txn):
        root = bytes.fromhex(snap.root)
        c.object_refs[root] += 1
        work.append(root)
    for key, raw in txn.scan("dirchanges", b""):
        if len(key) == 16:  # vid|ino -> a folder's base object (longer keys are names)
            c.object_refs[bytes(raw)] += 1
            work.append(bytes(raw))
    for key, raw in txn.scan("inodes", b""):
        c.vids.add(read_u64(key))
        tree_id = Inode.unpack(raw).tree_id
        if tree_id != NO_TREE:
            c.object_refs[tree_id] += 1
            work.append(tree_id)
        progress.advance(1)
    for _, cid in txn.scan("blocks", b""):
        c.chunk_refs[bytes(cid)] += 1
        progress.advance(1)
    progress.start("walking tree objects", trees.counted(txn))
    while work:
        oid = work.pop()
        if oid in c.reachable_objects:
            continue
        c.reachable_objects.add(oid)
        progress.advance(1)
        raw = trees.stored(txn, oid)
        if raw is None:
            c.missing_objects.add(oid)
            continue
        try:
            data = chunks.decode(raw)
            obj = trees.decode(data)
            if trees.object_id(data) != oid:
                raise ValueError
        except Exception:  # any damage: its children cannot be trusted
            c.bad_objects.add(oid)
            continue
        children, chunk_ids = obj.children()
        for child in children:
            c.object_refs[child] += 1
            work.append(child)
        c.chunk_refs.update(chunk_ids)
    return c


# -- gc ----------------------------------------------------------------------------

def gc(txn: Txn, busy_vids: set[int], progress: NoProgress | None = None) -> dict:
    """Purge orphan inodes of volumes no worker serves, then delete every
    chunk and object nothing reaches and set every count to what its holders
    make it. Refuses to sweep a store whose reachable objects are damaged:
    their children are unknown, and deleting them could lose data."""
    progress = progress or NoProgress()
    report = {"orphans_purged": 0, "chunks_freed": 0, "objects_freed": 0, "stored_bytes_freed": 0,
              "unique_bytes_freed": 0, "counts_fixed": [], "totals_fixed": None, "usage_fixed": [],
              "missing": []}
    for record in volumes.list_all(txn, removed=True):
        if record.vid is None or record.vid in busy_vids:
            continue
        inodes = Inodes(record.vid, txn.store.block_size, record.compression)
        for ino in inodes.orphans(txn):
            inodes.purge(txn, ino)
            report["orphans_purged"] += 1
    report["stored_bytes_freed"] -= txn.chunk_delta[2]
    report["unique_bytes_freed"] -= txn.chunk_delta[1]
    report["chunks_freed"] -= txn.chunk_delta[0]

    c = census(txn, progress)
    damaged = c.missing_objects | c.bad_objects
    if damaged:
        raise StoreDamaged(f"{len(damaged)} reachable tree object(s) are missing or damaged "
                           f"(first {short(next(iter(damaged)))}); gc deletes nothing",
                           reason="damaged")
    progress.start("sweeping", chunks.counted(txn) + trees.counted(txn))
    _sweep_chunks(txn, c, report, progress)
    _sweep_objects(txn, c, report, progress)
    report["packs"] = packs.compact(txn)
    report["totals_fixed"] = _fix_totals(txn)
    for record in volumes.list_all(txn, removed=True):
        if record.vid is not None and record.vid not in busy_vids:
            fixed = _fix_usage(txn, record)
            if fixed:
                report["usage_fixed"].append(fixed)
    return report


def volume_usage(txn: Txn, vid: int) -> VolumeStats:
    """A volume's counters as its rows make them: every inode row, and what
    lazily cloned folders hold that has no row yet (read from their objects)."""
    usage = VolumeStats()
    rows: set[int] = set()
    lazy: list[bytes] = []
    for key, raw in txn.scan("inodes", u64(vid)):
        inode = Inode.unpack(raw)
        rows.add(read_u64(key, 8))
        usage.inodes += 1
        usage.logical_bytes += inode.data_bytes
        if inode.flags & LAZY and stat.S_ISDIR(inode.mode):
            lazy.append(inode.tree_id)
    while lazy:
        for _, child_id in trees.entries(txn, trees.get(txn, lazy.pop())):
            child = trees.get(txn, child_id)
            if child.ino in rows:
                continue  # counted by its row (a lazy folder among them is walked as such)
            rows.add(child.ino)  # a file with several names counts once
            usage.inodes += 1
            usage.logical_bytes += child.inode.data_bytes
            if child.kind == trees.DIR:
                lazy.append(child_id)
    return usage


def _fix_usage(txn: Txn, record: Volume) -> dict | None:
    """Set a volume's counters (df, quota) to what its rows make them."""
    vid = record.vid
    kept, actual = txn.vstats(vid), volume_usage(txn, vid)
    if kept == actual:
        return None
    txn.add_vstats(vid, actual.logical_bytes - kept.logical_bytes, actual.inodes - kept.inodes)
    names = ("logical_bytes", "inodes")
    return {"volume": record.name, "was": dict(zip(names, (kept.logical_bytes, kept.inodes))),
            "now": dict(zip(names, (actual.logical_bytes, actual.inodes)))}


def _sweep_chunks(txn: Txn, c: Census, report: dict, progress: NoProgress) -> None:
    for cid, count, raw_len, stored_len in list(chunks.count_rows(txn)):
        expected = c.chunk_refs.pop(cid, 0)
        progress.advance(1)
        if expected == 0:
            chunks.forget(txn, cid)
            report["chunks_freed"] += 1
            report["stored_bytes_freed"] += stored_len
            report["unique_bytes_freed"] += raw_len
        elif count != expected:
            chunks.set_count(txn, cid, expected)
            report["counts_fixed"].append({"chunk": cid.hex(), "was": count, "now": expected})
    # Chunks held with no count row: leaked, or reachable and needing one back.
    for cid, payload in list(chunks.uncounted(txn)):
        expected = c.chunk_refs.pop(cid, 0)
        if expected == 0:
            chunks.forget(txn, cid)
            report["chunks_freed"] += 1
            report["stored_bytes_freed"] += len(payload)
            continue
        try:
            raw_len = len(chunks.decode(payload))
        except Exception:
            report["missing"].append({"chunk": cid.hex(), "state": "damaged, no count"})
            continue
        chunks.recount(txn, cid, expected, raw_len, payload)
        report["counts_fixed"].append({"chunk": cid.hex(), "was": 0, "now": expected})
    for cid in c.chunk_refs:  # referenced, but in neither table: gc cannot bring data back
        report["missing"].append({"chunk": cid.hex(), "state": "missing"})


def _sweep_objects(txn: Txn, c: Census, report: dict, progress: NoProgress) -> None:
    for oid, count in list(trees.count_rows(txn)):
        expected = c.object_refs.get(oid, 0)
        progress.advance(1)
        if expected == 0:
            trees.forget(txn, oid)
            report["objects_freed"] += 1
        elif count != expected:
            trees.set_count(txn, oid, expected)
            report["counts_fixed"].append({"object": oid.hex(), "was": count, "now": expected})
    for oid in list(trees.uncounted(txn)):
        expected = c.object_refs.get(oid, 0)
        if expected == 0:
            trees.forget(txn, oid)
            report["objects_freed"] += 1
        else:
            trees.recount(txn, oid, expected)
            report["counts_fixed"].append({"object": oid.hex(), "was": 0, "now": expected})
    trees.drop_stray_counts(txn)  # counts by place whose object went without them


def _fix_totals(txn: Txn) -> dict | None:
    """Store-wide chunk totals (what df shows), recounted from the count rows."""
    actual = [0, 0, 0]
    for _, _, raw_len, stored_len in chunks.count_rows(txn):
        actual[0] += 1
        actual[1] += raw_len
        actual[2] += stored_len
    # As committed, with what this transaction changed (chunks compressed
    # again, orphans purged): only a difference beyond that is a repair.
    kept = [t + d for t, d in zip(txn.chunk_totals(), txn.chunk_delta)]
    txn.set_chunk_totals(actual)  # written whole here, not as a delta
    if kept == actual:
        return None
    names = ("chunks", "unique_bytes", "stored_bytes")
    return {"was": dict(zip(names, kept)), "now": dict(zip(names, actual))}


# -- verify --------------------------------------------------------------------------

class _Verifier:
    def __init__(self, txn: Txn, progress: NoProgress):
        self.txn = txn
        self.progress = progress
        self.problems: list[dict] = []
        self.bad_chunks: dict[bytes, str] = {}
        self.bad_objects: dict[bytes, str] = {}
        self.seen_problems: set = set()

    def problem(self, where: str, path: bytes | None, message: str, **ids) -> None:
        """Note a problem once; `ids` name what it is about, and `repair="gc"`
        says gc mends it (the CLI words that)."""
        key = (where, path, message)
        if key in self.seen_problems:
            return
        self.seen_problems.add(key)
        entry = {"where": where, "path": path.decode(errors="surrogateescape") if path is not None else None,
                 "message": message, **ids}
        self.problems.append(entry)

    # -- content -----------------------------------------------------------------

    def hash_chunks(self) -> int:
        txn = self.txn
        self.progress.start("re-hashing chunks", chunks.counted(txn))
        n = 0
        for cid, payload in chunks.stored_rows(txn):
            n += 1
            self.progress.advance(1)
            try:
                data = chunks.decode(payload)
                ok = chunks.chunk_id(data) == cid
            except Exception:
                data, ok = None, False
            if not ok:
                self.bad_chunks[cid] = "damaged"
            if not chunks.has(txn, cid):
                self.problem("store", None, f"chunk {short(cid)} has no reference count", chunk=cid.hex())
            elif data is not None and chunks.raw_length(txn, cid) != len(data):
                self.problem("store", None, f"chunk {short(cid)} is recorded with a wrong length",
                             chunk=cid.hex())
        for cid, *_ in chunks.count_rows(txn):
            if chunks.stored(txn, cid) is None:
                self.bad_chunks[cid] = "missing"
        return n

    def hash_objects(self) -> int:
        txn = self.txn
        self.progress.start("re-hashing tree objects", trees.counted(txn))
        n = 0
        for oid, payload in trees.stored_rows(txn):
            n += 1
            self.progress.advance(1)
            try:
                data = chunks.decode(payload)
                trees.decode(data)
                ok = trees.object_id(data) == oid
            except Exception:
                ok = False
            if not ok:
                self.bad_objects[oid] = "damaged"
            if not trees.has(txn, oid):
                self.problem("store", None, f"tree object {short(oid)} has no reference count",
                             object=oid.hex())
        for oid, _ in trees.count_rows(txn):
            if trees.stored(txn, oid) is None:
                self.bad_objects[oid] = "missing"
        return n

    def counts(self, c: Census, vids: set[int]) -> None:
        txn = self.txn
        for oid in c.missing_objects:
            self.bad_objects[oid] = "missing"
        for cid in c.chunk_refs:
            if chunks.stored(txn, cid) is None:
                self.bad_chunks[cid] = "missing"
        for cid, count, *_ in chunks.count_rows(txn):
            expected = c.chunk_refs.get(cid, 0)
            if count != expected:
                self.problem("store", None, f"chunk {short(cid)} counts {count} reference(s), "
                             f"{expected} found", chunk=cid.hex(), repair="gc")
        for oid, count in trees.count_rows(txn):
            expected = c.object_refs.get(oid, 0)
            if count != expected:
                self.problem("store", None, f"tree object {short(oid)} counts {count} reference(s), "
                             f"{expected} found", object=oid.hex(), repair="gc")
        for key in trees.stray_counts(txn):
            self.problem("store", None, f"a tree object count at pack place {key.hex()} belongs to "
                         "no object", repair="gc")
        for vid in c.vids - vids:
            self.problem("store", None, f"inode rows of volume id {vid} belong to no volume")

    # -- by path -----------------------------------------------------------------

    def walk_tree(self, where: str, path: bytes, oid: bytes) -> None:
        """Name every file of a tree that reaches a bad object or chunk."""
        stack = [(path, oid)]
        while stack:
            path, oid = stack.pop()
            state = self.bad_objects.get(oid)
            if state:
                self.problem(where, path, f"tree object {short(oid)} {state}", object=oid.hex())
                continue
            obj = trees.get(self.txn, oid)
            self._blocks(where, path, (cid for _, cid in obj.blocks))
            stack.extend((_join(path, name), child) for name, child in self._entries(where, path, obj))

    def _entries(self, where: str, path: bytes, obj: trees.TreeObject) -> list:
        """A folder's entries; a damaged piece is named as the folder's damage."""
        if obj.pieces is None:
            return obj.entries
        out, stack = [], [obj.pieces]
        while stack:
            oid = stack.pop()
            state = self.bad_objects.get(oid)
            if state:
                self.problem(where, path + b"/", f"tree object {short(oid)} {state}", object=oid.hex())
                continue
            piece = trees.get(self.txn, oid)
            if piece.kind == trees.LEAF:
                out.extend(piece.entries)
            else:
                stack.extend(cid for _, cid in reversed(piece.entries))
        return out

    def _blocks(self, where: str, path: bytes, cids) -> None:
        for cid in cids:
            state = self.bad_chunks.get(cid)
            if state:
                self.problem(where, path, f"chunk {short(cid)} {state}", chunk=cid.hex())

    def walk_volume(self, record: Volume) -> None:
        """Walk a volume's live rows (and the trees of its lazy parts)."""
        txn, vid, where = self.txn, record.vid, f"volume {record.name}"
        damage = bool(self.bad_chunks or self.bad_objects)
        stack = [(b"", ROOT_INO)]
        seen: set[int] = set()
        while stack:
            path, ino = stack.pop()
            raw = txn.get("inodes", vkey(vid, ino))
            if raw is None:
                self.problem(where, path, f"names inode {ino}, which does not exist")
                continue
            inode = Inode.unpack(raw)
            if inode.tree_id != NO_TREE and self.bad_objects.get(inode.tree_id):
                self.problem(where, path, f"tree object {short(inode.tree_id)} "
                             f"{self.bad_objects[inode.tree_id]}", object=inode.tree_id.hex())
                continue
            if inode.flags & LAZY:
                if damage:
                    self.walk_tree(where, path, inode.tree_id)
                continue
            if ino in seen:
                continue  # another name of a file already checked
            seen.add(ino)
            prefix = vkey(vid, ino)
            if stat.S_ISDIR(inode.mode):
                children = [(bytes(k[len(prefix):]), read_u64(v)) for k, v in txn.scan("dirents", prefix)]
                subdirs = 0
                for name, child in children:
                    child_raw = txn.get("inodes", vkey(vid, child))
                    if child_raw is not None and stat.S_ISDIR(Inode.unpack(child_raw).mode):
                        subdirs += 1
                    stack.append((_join(path, name), child))
                if inode.nlink != 2 + subdirs:
                    self.problem(where, path + b"/", f"directory link count is {inode.nlink}, "
                                 f"{2 + subdirs} expected")
            else:
                names = sum(1 for _ in txn.scan("parents", prefix))
                if names != inode.nlink:
                    self.problem(where, path, f"link count is {inode.nlink}, {names} name(s) found")
                self._blocks(where, path, (bytes(v) for _, v in txn.scan("blocks", prefix)))


def _join(path: bytes, name: bytes) -> bytes:
    return path + b"/" + name if path else name


def verify(txn: Txn, progress: NoProgress | None = None) -> dict:
    progress = progress or NoProgress()
    v = _Verifier(txn, progress)
    n_chunks = v.hash_chunks()
    n_objects = v.hash_objects()
    for number, counted, found in packs.miscounted(txn):
        v.problem("store", None, f"pack {number} counts {counted} dead byte(s), {found} found",
                  pack=number, repair="gc")
    c = census(txn, progress)
    records = [r for r in volumes.list_all(txn, removed=True) if r.vid is not None]
    v.counts(c, {r.vid for r in records})
    snaps = snapshots.list_all(txn)
    progress.start("walking volumes and snapshots", len(records) + len(snaps))
    for record in records:
        v.walk_volume(record)
        progress.advance(1)
    for snap in snaps:
        if v.bad_chunks or v.bad_objects:
            v.walk_tree(f"snapshot {snap.ref}", b"", bytes.fromhex(snap.root))
        progress.advance(1)
    # Damage no path leads to (unreferenced, or only in a store-level count) is still damage.
    by_path = [p for p in v.problems if p["path"] is not None]
    named = {p.get("chunk") for p in by_path} | {p.get("object") for p in by_path}
    for cid, state in v.bad_chunks.items():
        if cid.hex() not in named:
            v.problem("store", None, f"chunk {short(cid)} {state} (no file uses it)", chunk=cid.hex())
    for oid, state in v.bad_objects.items():
        if oid.hex() not in named:
            v.problem("store", None, f"tree object {short(oid)} {state} (no volume or snapshot uses it)",
                      object=oid.hex())
    return {"ok": not v.problems, "chunks": n_chunks, "objects": n_objects, "volumes": len(records),
            "snapshots": len(snaps), "problems": v.problems}
