"""Snapshots: named, immutable trees of a volume, and clones and rollbacks from them.

Taking a snapshot writes tree objects only for inodes whose ``tree_id`` was
cleared since the last one (see treerows.py), so it costs what changed. A clone
or rollback points a volume's root at a tree and lets treerows.py fill in rows
lazily as they are reached: no data and no metadata is copied up front.
"""

import json
import time

from ..errors import AlreadyExists, InvalidArgument, NotFound
from ..records import Snapshot, Volume
from . import namespace, trees, volumes
from .env import Txn
from .inodes import Inodes
from .names import SNAPSHOT_NAME_RE as NAME_RE, parse_ref  # noqa: F401 (callers take them from here too)
from .schema import IN_PIECES, LAZY, ROOT_INO
from .treewriter import write_tree


def _key(volume: str, name: str) -> bytes:
    return volume.encode() + b"\0" + name.encode()


def inodes_of(txn: Txn, volume: Volume) -> Inodes:
    if volume.is_view:
        raise InvalidArgument(f"volume {volume.name} is a view of {volume.source}; "
                              "snapshots belong to the source volume")
    return Inodes(volume.vid, txn.store.block_size, volume.compression)


def _default_name(txn: Txn, volume: str) -> str:
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())  # (UTC; datetime is not loaded)
    name, n = base, 1
    while txn.get("snapshots", _key(volume, name)) is not None:
        n += 1
        name = f"{base}.{n}"
    return name


def create(txn: Txn, volume: str, name: str | None = None, vid: int | None = None) -> Snapshot:
    """Snapshot `volume` (named `name`, or after the time). `vid`: the volume a
    worker serves (it looks no volume up by name): NotFound if `volume` names
    another one now (that volume removed for its views, another made since)."""
    record = volumes.get(txn, volume)
    if vid is not None and record.vid != vid:
        raise NotFound(f"volume {volume} is not the one served as {volume}")
    inodes = inodes_of(txn, record)
    name = name or _default_name(txn, volume)
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(f"invalid snapshot name {name!r}: use letters, digits and _.:-")
    if txn.get("snapshots", _key(volume, name)) is not None:
        raise AlreadyExists(f"snapshot {volume}@{name} already exists")
    root = write_tree(txn, inodes)
    trees.incref(txn, root)
    usage = inodes.usage(txn)
    snap = Snapshot(
        volume=volume,
        name=name,
        root=root.hex(),
        created_at=volumes.now_rfc3339(),
        created_ns=time.time_ns(),
        logical_bytes=usage.logical_bytes,
        inodes=usage.inodes,
        next_ino=inodes.next_ino(txn),
        # Every name of every file with several names: clones need them to
        # know which directories a change of such a file touches.
        hardlinks=namespace.hardlinks(txn, inodes.vid),
    )
    put(txn, snap)
    return snap


def put(txn: Txn, snap: Snapshot) -> None:
    txn.put("snapshots", _key(snap.volume, snap.name), json.dumps(snap.to_dict()).encode())


def exists(txn: Txn, volume: str, name: str) -> bool:
    return txn.get("snapshots", _key(volume, name)) is not None


def get(txn: Txn, volume: str, name: str) -> Snapshot:
    raw = txn.get("snapshots", _key(volume, name))
    if raw is None:
        volumes.get(txn, volume)
        raise NotFound(f"no such snapshot: {volume}@{name}")
    return Snapshot.from_dict(json.loads(bytes(raw)))


def list_all(txn: Txn, volume: str | None = None) -> list[Snapshot]:
    prefix = volume.encode() + b"\0" if volume else b""
    if volume:
        volumes.get(txn, volume)
    snaps = [Snapshot.from_dict(json.loads(bytes(v))) for _, v in txn.scan("snapshots", prefix)]
    return sorted(snaps, key=lambda s: (s.volume, s.created_ns))


def remove(txn: Txn, volume: str, name: str) -> None:
    snap = get(txn, volume, name)
    txn.delete("snapshots", _key(volume, name))
    trees.decref(txn, bytes.fromhex(snap.root))


def unique_bytes(txn: Txn, snap: Snapshot) -> int:
    """Stored bytes that would be freed if this snapshot alone were deleted."""
    return held_alone(txn, snap)[0]


def held_alone(txn: Txn, snap: Snapshot) -> tuple[int, int]:
    """What deleting this snapshot alone would free: the stored (compressed)
    bytes of its chunks, and the bytes its chunks, objects and their count
    rows take in the store's file (overflow pages whole)."""
    root = bytes.fromhex(snap.root)
    work = [root] if trees.count(txn, root) == 1 else []
    tally: dict[bytes, int] = {}
    disk = 0
    while work:
        oid = work.pop()
        obj = trees.get(txn, oid)
        disk += trees.disk_bytes(txn, oid)
        objects, chunk_ids = obj.children()
        work.extend(oid for oid in objects if trees.count(txn, oid) == 1)
        for cid in chunk_ids:
            tally[cid] = tally.get(cid, 0) + 1
    from . import chunks

    total = 0
    for cid, n in tally.items():
        count, _, stored = chunks.ref_info(txn, cid)
        if count == n:
            total += stored
            disk += chunks.disk_bytes(txn, cid)
    return total, disk


def install_tree(txn: Txn, volume: Volume, snap: Snapshot) -> None:
    """Make a volume (with no rows) show a snapshot's tree, lazily."""
    vid = volume.vid
    install_root(txn, inodes_of(txn, volume), bytes.fromhex(snap.root), snap.hardlinks, snap.next_ino)
    usage = txn.vstats(vid)
    txn.add_vstats(vid, snap.logical_bytes - usage.logical_bytes, snap.inodes - usage.inodes)


def install_root(txn: Txn, inodes: Inodes, root_id: bytes, hardlinks: list, next_ino: int) -> None:
    """Make a volume with no rows show tree object root_id, lazily: its root
    row alone (LAZY, taking a reference on the object) and the names of its
    files with several names (as namespace.hardlinks lists them)."""
    obj = trees.get(txn, root_id)
    root = obj.inode
    root.parent = ROOT_INO
    root.flags |= LAZY | (IN_PIECES if obj.pieces is not None else 0)
    root.tree_id = root_id
    trees.incref(txn, root_id)
    inodes.adopt_tree(txn, root, hardlinks, next_ino)


def create_volume(txn: Txn, name: str, opts: dict | None = None) -> Volume:
    """Create a volume, as a clone when the options say from-snapshot=VOLUME@SNAPSHOT."""
    if not isinstance(opts, dict) or "from-snapshot" not in opts:
        return volumes.create(txn, name, opts)  # which names what is wrong with opts
    opts = dict(opts)
    ref = opts.pop("from-snapshot")
    volumes.parse_options({**opts, "from-snapshot": ref})  # every problem named at once
    volume, snap = parse_ref(ref)
    return clone(txn, volume, snap, name, opts)


def clone(txn: Txn, volume: str, name: str, new_volume: str, opts: dict | None = None) -> Volume:
    snap = get(txn, volume, name)
    source = volumes.get(txn, volume)
    # A clone keeps these of its source unless given (atime, suid and dev: as
    # for any new volume).
    inherited = {k: v for k, v in source.options.items() if k in ("compression", "size", "xattr")}
    clone = volumes.create(txn, new_volume, {**inherited, **(opts or {})})
    if clone.is_view:
        raise InvalidArgument("a clone cannot be a view (source=...)")
    volumes.drop_rows(txn, clone.vid)
    clone.options["from-snapshot"] = f"{volume}@{name}"
    volumes.put(txn, clone)
    install_tree(txn, clone, snap)
    return clone


def rollback(txn: Txn, volume: str, name: str) -> None:
    """Return a volume (not mounted: the caller checks) to a snapshot."""
    snap = get(txn, volume, name)
    target = volumes.get(txn, volume)
    volumes.drop_rows(txn, target.vid, keep_counter=True)
    install_tree(txn, target, snap)


def resolve_tree(txn: Txn, ref: str) -> bytes:
    """The object id of VOLUME@SNAPSHOT, or of VOLUME as it is now (written
    as objects first: the same work a snapshot would do, and kept for it)."""
    volume, name = parse_ref(ref, need_snapshot=False)
    if name is not None:
        return bytes.fromhex(get(txn, volume, name).root)
    return write_tree(txn, inodes_of(txn, volumes.get(txn, volume)))
