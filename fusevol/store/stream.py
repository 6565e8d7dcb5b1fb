"""Replication streams: a snapshot's tree objects and chunks, as one byte stream.

Layout (integers big-endian)::

    header   MAGIC, u16 format version, u8 has_base, 32-byte base root id (zeros if none)
    records  u8 type, u32 length, payload
             S  snapshot record (JSON), first and once
             O  32-byte object id + the object as stored (codec byte + data)
             C  32-byte chunk id + the chunk as stored (codec byte + data)
    trailer  T, u32 40, u64 number of records, BLAKE3 of every byte before the trailer

Records come children first (chunks, then the file object; a directory after
its entries), so a receiver can link each object as it arrives. The receiver
trusts nothing: every id is recomputed from its content, the trailer covers
the whole stream, and a reference to something neither the stream nor the
receiving store holds is refused. Received data is spooled and checked before
the one write transaction that links it, so a broken stream changes nothing
and a slow sender never holds the store's write lock.
"""

import json
import os
import struct
import tempfile

import blake3

from ..errors import (AlreadyExists, Busy, FusevolError, InUse, InvalidArgument, NotFound,
                      StreamDamaged)
from ..progress import NoProgress
from ..records import Snapshot, Volume
from . import chunks, snapshots, treepairs, trees, volumes
from .env import Store, Txn

MAGIC = b"FUSEVOL-SEND\r\n\x1a\n"
VERSION = 2        # 2: tree objects may be folders in pieces (pieces.py)
READS = (1, 2)     # a stream of format 1 is one of format 2 without pieces
HEADER = struct.Struct(">16sHB32s")
FRAME = struct.Struct(">cI")
SNAPSHOT, OBJECT, CHUNK, TRAILER = b"S", b"O", b"C", b"T"
TRAILER_BODY = struct.Struct(">Q32s")
ID_LEN = 32
MAX_RECORD = 256 << 20     # no honest record is larger; a bigger length is damage
READ_PIECE = 1 << 20
RENEW_READ_EVERY = 64 << 20  # a sender re-opens its read transaction this often (bytes)
# Fields of a snapshot record that travel; the rest (volume, local stats) is the sender's own.
SENT_FIELDS = ("name", "root", "created_at", "created_ns", "logical_bytes", "inodes",
               "next_ino", "hardlinks")


# -- sending ---------------------------------------------------------------------

class StreamWriter:
    """Writes the stream format to a binary file (send, and a pull from a remote)."""

    def __init__(self, out, progress):
        self.out = out
        self.hash = blake3.blake3()
        self.records = 0
        self.bytes = 0
        self.progress = progress

    def _raw(self, data: bytes) -> None:
        self.hash.update(data)
        self.out.write(data)
        self.bytes += len(data)

    def header(self, base_root: bytes | None) -> None:
        self._raw(HEADER.pack(MAGIC, VERSION, base_root is not None, base_root or bytes(ID_LEN)))

    def record(self, kind: bytes, *parts: bytes) -> None:
        self._raw(FRAME.pack(kind, sum(len(p) for p in parts)) + b"".join(parts))
        self.records += 1

    def trailer(self) -> None:
        body = TRAILER_BODY.pack(self.records, self.hash.digest())
        self.out.write(FRAME.pack(TRAILER, len(body)) + body)
        self.bytes += FRAME.size + len(body)


class _Reader:
    """Short read transactions one after another: a slow pipe must not pin old pages."""

    def __init__(self, store: Store):
        self.store = store
        self._cm = None
        self.txn: Txn | None = None

    def renew(self) -> None:
        self.close()
        self._cm = self.store.read()
        self.txn = self._cm.__enter__()

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = self.txn = None

    def get_object(self, oid: bytes) -> bytes:
        return self._got(trees.stored(self.txn, oid), "tree object", oid)

    def get_chunk(self, cid: bytes) -> bytes:
        return self._got(chunks.stored(self.txn, cid), "chunk", cid)

    @staticmethod
    def _got(payload: bytes | None, what: str, key: bytes) -> bytes:
        if payload is None:
            raise FusevolError(f"{what} {key.hex()} is gone (was the snapshot deleted while sending?)")
        return payload


def send(store: Store, volume: str, name: str, out, base: tuple[str, str] | None = None,
         progress: NoProgress | None = None) -> dict:
    """Write the stream of VOLUME@NAME to the binary file `out`; with base
    (VOLUME, NAME), leave out what that snapshot already holds."""
    progress = progress or NoProgress()
    reader = _Reader(store)
    reader.renew()
    try:
        snap = snapshots.get(reader.txn, volume, name)
        base_root = bytes.fromhex(snapshots.get(reader.txn, *base).root) if base else None
        record = {k: v for k, v in snap.to_dict().items() if k in SENT_FIELDS}
        record["sent_from"] = f"{volume}@{name}"
        progress.start(f"sending {volume}@{name}", snap.logical_bytes if not base else None)
        writer = StreamWriter(out, progress)
        writer.header(base_root)
        writer.record(SNAPSHOT, json.dumps(record).encode())
        stats = _send_tree(reader, writer, bytes.fromhex(snap.root), base_root)
        writer.trailer()
        out.flush()
    finally:
        reader.close()
    return {"snapshot": f"{volume}@{name}", "base": f"{base[0]}@{base[1]}" if base else None,
            "bytes": writer.bytes, "records": writer.records, **stats}


def _send_tree(reader: _Reader, writer: StreamWriter, root: bytes, base_root: bytes | None) -> dict:
    """The tree walked paired by path with the base tree (treepairs.py, the walk
    diff shares), objects written on the way up, children before parents: an
    object equal to the base's at its place is left out with everything below
    it, and so is every chunk of the base's version of a changed file (what an
    append or an in-place edit keeps)."""
    stats = {"objects": 0, "chunks": 0, "skipped_objects": 0, "skipped_chunks": 0}
    seen: set[bytes] = set()
    sent_chunks: set[bytes] = set()
    since_renew = 0

    def get(oid: bytes) -> trees.TreeObject:
        return trees.decode(chunks.decode(reader.get_object(oid)))

    def go_below(pair: treepairs.Pair) -> bool:
        if pair.new_id in seen:
            return False  # a file with several names: sent once
        seen.add(pair.new_id)
        return True

    for event, pair in treepairs.walk(lambda: reader.txn, get, base_root, root, old_alone=False,
                                      go_below=go_below):
        if since_renew > RENEW_READ_EVERY:  # objects read are copies: the walk goes on
            reader.renew()
            since_renew = 0
        if event == treepairs.SAME:
            stats["skipped_objects"] += 1
        if event != treepairs.LEAVE:
            continue
        obj, base_obj = pair.new, pair.old if pair.same_kind else None
        if obj.kind == trees.DIR:
            for piece in pair.opened:  # the pieces of a big folder that the base lacks
                since_renew += _send_object(reader, writer, piece)
                stats["objects"] += 1
        else:
            known = {cid for _, cid in base_obj.blocks} if base_obj else set()
            for _, cid in obj.blocks:
                if cid in known:
                    stats["skipped_chunks"] += 1
                elif cid not in sent_chunks:
                    sent_chunks.add(cid)
                    payload = reader.get_chunk(cid)
                    chunks.decode_checked(payload, cid)  # pass no damage on
                    writer.record(CHUNK, cid, payload)
                    since_renew += len(payload)
                    stats["chunks"] += 1
            writer.progress.advance(obj.inode.data_bytes)  # file bytes, as the snapshot counts them
        since_renew += _send_object(reader, writer, pair.new_id)
        stats["objects"] += 1
    return stats


def _send_object(reader: _Reader, writer: StreamWriter, oid: bytes) -> int:
    payload = reader.get_object(oid)
    writer.record(OBJECT, oid, payload)
    return len(payload)


# -- receiving -------------------------------------------------------------------

def _read_exact(src, n: int, what: str) -> bytes:
    parts, left = [], n
    while left:
        piece = src.read(min(left, READ_PIECE))
        if not piece:
            raise StreamDamaged(f"stream is truncated (ends inside {what})")
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


def _check_record(kind: bytes, payload: bytes) -> None:
    """Recompute the id of an object or chunk record from its content."""
    if len(payload) < ID_LEN + 1:
        raise StreamDamaged("stream holds a record too short to be an object or chunk")
    rid, stored = payload[:ID_LEN], payload[ID_LEN:]
    try:
        data = chunks.decode(stored)
        if kind == CHUNK:
            ok = chunks.chunk_id(data) == rid
        else:
            ok = trees.object_id(data) == rid
            trees.decode(data)  # and it must parse as an object
    except Exception:  # a flipped byte can break zstd or the object layout in many ways
        ok = False
    if not ok:
        what = "chunk" if kind == CHUNK else "tree object"
        raise StreamDamaged(f"stream is damaged: {what} {rid.hex()} does not match its content")


def _spool(src, spool, progress: NoProgress) -> tuple[bytes | None, dict]:
    """Read and check a whole stream, copying its object and chunk records to spool."""
    head = src.read(HEADER.size)
    if len(head) < HEADER.size or not head.startswith(MAGIC):
        raise StreamDamaged("not a fusevol send stream (bad header)")
    _, version, has_base, base_root = HEADER.unpack(head)
    if version not in READS:
        raise StreamDamaged(f"stream has format {version}; this fusevol reads formats "
                            f"{', '.join(map(str, READS))}")
    h = blake3.blake3(head)
    progress.advance(len(head))
    record, count = None, 0
    while True:
        frame = _read_exact(src, FRAME.size, "a record header")
        kind, length = FRAME.unpack(frame)
        if length > MAX_RECORD:
            raise StreamDamaged(f"stream is damaged: a record claims {length} bytes")
        payload = _read_exact(src, length, "a record")
        progress.advance(len(frame) + length)
        if kind == TRAILER:
            break
        h.update(frame)
        h.update(payload)
        count += 1
        if kind == SNAPSHOT:
            if record is not None or count != 1:
                raise StreamDamaged("stream is damaged: the snapshot record is not first and single")
            try:
                record = json.loads(payload)
                bytes.fromhex(record["root"])
            except (ValueError, KeyError, TypeError):
                raise StreamDamaged("stream is damaged: unreadable snapshot record") from None
        elif kind in (OBJECT, CHUNK):
            if record is None:
                raise StreamDamaged("stream is damaged: data before the snapshot record")
            _check_record(kind, payload)
            spool.write(frame + payload)
        else:
            raise StreamDamaged(f"stream is damaged: unknown record type {kind!r}")
    if length != TRAILER_BODY.size:
        raise StreamDamaged("stream is damaged: bad trailer")
    sent_count, digest = TRAILER_BODY.unpack(payload)
    if sent_count != count or digest != h.digest():
        raise StreamDamaged("stream is damaged: its checksum does not match (trailer)")
    if src.read(1):
        raise StreamDamaged("stream is damaged: data after the trailer")
    if record is None:
        raise StreamDamaged("stream is damaged: no snapshot record")
    return (base_root if has_base else None), record


def _link(txn: Txn, spool, progress: NoProgress) -> tuple[set[bytes], set[bytes]]:
    """Store the spooled records the store lacks, each new object taking its
    references on its children; return the new object and chunk ids."""
    new_objects: set[bytes] = set()
    new_chunks: set[bytes] = set()
    while True:
        frame = spool.read(FRAME.size)
        if not frame:
            return new_objects, new_chunks
        kind, length = FRAME.unpack(frame)
        payload = spool.read(length)
        progress.advance(FRAME.size + length)
        rid, stored = payload[:ID_LEN], payload[ID_LEN:]
        if kind == CHUNK:
            if not chunks.has(txn, rid):
                chunks.put_stored(txn, rid, stored, len(chunks.decode(stored)))
                new_chunks.add(rid)
            continue
        if trees.has(txn, rid):
            continue  # held already, and so is everything below it
        obj = trees.decode(chunks.decode(stored))
        children, chunk_ids = obj.children()
        for child in children:
            if not trees.has(txn, child):
                raise StreamDamaged(f"stream refers to tree object {child.hex()}, which neither "
                                    "it nor this store holds")
            trees.incref(txn, child)
        for cid in chunk_ids:
            if not chunks.has(txn, cid):
                raise StreamDamaged(f"stream refers to chunk {cid.hex()}, which neither it nor "
                                    "this store holds")
            chunks.incref(txn, cid)
        trees.put_stored(txn, rid, stored)  # its holders take their references below
        new_objects.add(rid)


def unchanged_since_snapshot(txn: Txn, target: Volume) -> bool:
    """Whether the volume is exactly one of its snapshots (so rolling it
    loses nothing that no snapshot keeps)."""
    root = snapshots.inodes_of(txn, target).get(txn, 1).tree_id
    return any(bytes.fromhex(s.root) == root for s in snapshots.list_all(txn, target.name))


def receive(store: Store, volume: str, src, *, force: bool = False, mounted: bool = False,
            opts: dict | None = None, progress: NoProgress | None = None) -> dict:
    """Read a stream from the binary file `src` into volume `volume`: a new
    volume for a full stream, the existing one for an incremental stream."""
    progress = progress or NoProgress()
    volumes.check_name(volume)
    spool_dir = os.path.join(store.path, "tmp")
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        progress.start("receiving")
        base_root, sent = _spool(src, spool, progress)
        size = spool.tell()
        spool.seek(0)
        name = sent.get("name", "")
        if not snapshots.NAME_RE.fullmatch(str(name)):
            raise StreamDamaged(f"stream names an invalid snapshot {name!r}")
        with store.write(data_files=True) as txn:
            txn.check_space(size)
            target = volumes.get(txn, volume, missing_ok=True)
            if base_root is None:
                if target is not None:
                    raise AlreadyExists(f"volume {volume} already exists; a full stream makes "
                                        "a new volume (give another name)")
            else:
                _check_incremental_target(txn, volume, target, base_root, force, mounted)
                if snapshots.exists(txn, volume, name):
                    raise AlreadyExists(f"snapshot {volume}@{name} already exists")
            progress.start("storing", size)
            new_objects, new_chunks = _link(txn, spool, progress)
            root = bytes.fromhex(sent["root"])
            if not trees.has(txn, root):
                raise StreamDamaged(f"stream lacks its root object {root.hex()}")
            snap = _received_snapshot(sent, volume)
            if target is None:
                target = volumes.create(txn, volume, opts)
                volumes.drop_rows(txn, target.vid)
                target.received_from = sent.get("sent_from")
                volumes.put(txn, target)
            snapshots.put(txn, snap)
            trees.incref(txn, root)  # the snapshot record's reference
            if base_root is None:
                snapshots.install_tree(txn, target, snap)
            else:
                snapshots.rollback(txn, volume, name)
            for oid in new_objects:
                if trees.count(txn, oid) == 0:
                    raise StreamDamaged(f"stream carries tree object {oid.hex()} that nothing uses")
            for cid in new_chunks:
                if chunks.ref_info(txn, cid)[0] == 0:
                    raise StreamDamaged(f"stream carries chunk {cid.hex()} that nothing uses")
    return {"volume": volume, "snapshot": f"{volume}@{name}", "incremental": base_root is not None,
            "bytes": size, "new_objects": len(new_objects), "new_chunks": len(new_chunks)}


def _received_snapshot(sent: dict, volume: str) -> Snapshot:
    """The snapshot record a stream carries, as this store keeps it."""
    try:
        snap = Snapshot.from_dict({**{k: sent[k] for k in SENT_FIELDS}, "volume": volume})
    except (KeyError, TypeError):
        raise StreamDamaged("stream is damaged: its snapshot record lacks a field") from None
    snap.extra["received_from"] = sent.get("sent_from")
    return snap


def _check_incremental_target(txn: Txn, volume: str, target: Volume | None, base_root: bytes,
                              force: bool, mounted: bool) -> None:
    if target is None:
        raise NotFound(f"this is an incremental stream: volume {volume} must exist and "
                            "hold its base snapshot (receive the full stream first)")
    if not any(bytes.fromhex(s.root) == base_root for s in snapshots.list_all(txn, volume)):
        raise InvalidArgument(f"volume {volume} holds no snapshot equal to the stream's base "
                              f"{base_root.hex()[:16]}...", reason="no_base", volume=volume)
    if mounted:
        raise InUse(f"volume {volume} is mounted", volume=volume, holder="worker", action="receive")
    if not force and not unchanged_since_snapshot(txn, target):
        raise Busy(f"volume {volume} changed since its latest snapshot; receiving would discard "
                   "that", reason="changed_since_snapshot", volume=volume)
