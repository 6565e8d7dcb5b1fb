"""Immutable content-addressed tree objects: what snapshots are made of.

A file object holds an inode's attributes, xattrs and block map (chunk ids);
a directory object its attributes, xattrs and sorted entries (name -> child
object id). An object's id is the BLAKE3 hash of its encoding (in a key space
of its own, apart from data chunks), so equal subtrees have equal ids.

A large directory keeps its entries in pieces (see pieces.py): its object
(PIECED) holds the attributes, the number of entries and the id of the top
piece; a LEAF piece holds entries, an INDEX piece (last name, piece id) pairs
of the level below. Pieces are objects too, with the same reference counts.
A directory of up to pieces.FLAT_MAX entries stays one object, as it always was.

Each object holds one reference on each child (object or chunk), taken when it
is first stored; it is deleted, and lets go of its children, when its own count
falls to zero. References on objects come from snapshot records, from parent
objects, and from live inode rows whose ``tree_id`` says "I equal this object".
"""

from __future__ import annotations  # (packs.Location: packs is loaded when first used)

import functools
import struct
import threading

import blake3

from ..errors import StoreDamaged
from ..ondemand import OnFirstUse
from ..records import Record
from . import countrows
from .env import Txn, row_disk_bytes
from .schema import (ROW_ATTRS_HEAD, ROW_DATA_BYTES, ROW_FIXED, ROW_TREE_ID, WIDE_TIMES, WIDE_TIMES_SIZE, Inode,
                     pack_times, row_flags, unpack_times)


def _import_chunks():
    from . import chunks
    return chunks


def _import_packs():
    from . import packs
    return packs


# Loaded when an object is first stored or read: a snapshot of a volume
# unchanged since its last one (the CLI's, a worker's) does neither.
chunks = OnFirstUse(globals(), "chunks", _import_chunks)
packs = OnFirstUse(globals(), "packs", _import_packs)

FILE, DIR = b"F", b"D"  # in lower case when the times' seconds follow the attributes
PIECED = b"P"  # a directory whose entries are in pieces (in memory its kind is DIR)
LEAF, INDEX = b"L", b"I"  # pieces of a directory's entries
_ATTRS = struct.Struct(">QIIIIQqqqQQ")  # ino, mode, uid, gid, nlink, size, a/m/ctime, rdev, data_bytes
_LEN16 = struct.Struct(">H")
_LEN32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_PIECES = struct.Struct(">QB32s")  # entries, height of the top piece, its id
_INDEX_HEAD = struct.Struct(">BI")  # level, items
ID_LEN = 32


class TreeObject(Record):
    """An object as decoded. `blocks`: a file's; `entries`: a directory's or a
    piece's. `pieces`: a PIECED directory's top piece (its entries are there),
    `count`: how many entries it has. `level`: a piece's level (0: leaves), a
    PIECED directory's height."""

    _FIELDS = ("kind", "ino", "inode", "xattrs", "blocks", "entries", "pieces", "count", "level")

    def __init__(self, kind: bytes, ino: int, inode: Inode,
                 xattrs: list[tuple[bytes, bytes]] | None = None,
                 blocks: list[tuple[int, bytes]] | None = None,
                 entries: list[tuple[bytes, bytes]] | None = None,
                 pieces: bytes | None = None, count: int = 0, level: int = 0):
        self.kind = kind
        self.ino = ino
        self.inode = inode
        self.xattrs = [] if xattrs is None else xattrs
        self.blocks = [] if blocks is None else blocks
        self.entries = [] if entries is None else entries
        self.pieces = pieces
        self.count = count
        self.level = level

    def children(self) -> tuple[list[bytes], list[bytes]]:
        """(child object ids, chunk ids) this object references."""
        if self.pieces is not None:
            return [self.pieces], []
        return [cid for _, cid in self.entries], [cid for _, cid in self.blocks]

    @property
    def is_piece(self) -> bool:
        return self.kind in (LEAF, INDEX)


def object_id(data: bytes) -> bytes:
    return blake3.blake3(data, derive_key_context="fusevol 2026 tree object v1").digest()


def _encode_items(items: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [_LEN16.pack(len(name)) + name + cid for name, cid in items]


def encode_piece(level: int, items: list[tuple[bytes, bytes]]) -> bytes:
    if level == 0:
        return b"".join([LEAF, _LEN32.pack(len(items)), *_encode_items(items)])
    return b"".join([INDEX, _INDEX_HEAD.pack(level, len(items)), *_encode_items(items)])


def encode(obj: TreeObject) -> bytes:
    if obj.is_piece:
        return encode_piece(obj.level, obj.entries)
    n = obj.inode
    (atime, mtime, ctime), wide = pack_times((n.atime_ns, n.mtime_ns, n.ctime_ns))
    kind = PIECED if obj.pieces is not None else obj.kind
    out = [kind.lower() if wide else kind,
           _ATTRS.pack(obj.ino, n.mode, n.uid, n.gid, n.nlink, n.size, atime, mtime, ctime,
                       n.rdev, n.data_bytes), wide]
    out.append(_LEN32.pack(len(n.target)) + n.target)
    out.append(_LEN32.pack(len(obj.xattrs)))
    for name, value in obj.xattrs:
        out.append(_LEN16.pack(len(name)) + name + _LEN32.pack(len(value)) + value)
    if obj.kind == FILE:
        out.append(_U64.pack(len(obj.blocks)))
        out.extend(_U64.pack(i) + cid for i, cid in obj.blocks)
    elif obj.pieces is not None:
        out.append(_PIECES.pack(obj.count, obj.level, obj.pieces))
    else:
        out.append(_U64.pack(len(obj.entries)))
        out.extend(_encode_items(obj.entries))
    return b"".join(out)


def encode_row(ino: int, row, xattrs: list[tuple[bytes, bytes]], blocks: list[tuple[bytes, bytes]] | None = None,
               entries: list[tuple[bytes, bytes]] | None = None, pieced: tuple[int, int, bytes] | None = None) -> bytes:
    """What encode() makes of the inode whose packed record (schema.Inode.pack)
    is `row`, its attributes copied as bytes: the record keeps them in the
    order and form an object does. A file gives `blocks` as (index as 8
    big-endian bytes, chunk id), as the block map's keys end; a directory
    its `entries`, or `pieced` (entries, height, top piece)."""
    wide = row_flags(row) & WIDE_TIMES
    rest = ROW_FIXED + WIDE_TIMES_SIZE if wide else ROW_FIXED
    target = row[rest:]
    if blocks is not None:
        kind = FILE
    else:
        kind = PIECED if pieced is not None else DIR
    out = [kind.lower() if wide else kind, _U64.pack(ino), row[ROW_ATTRS_HEAD], row[ROW_DATA_BYTES],
           row[ROW_FIXED:rest], _LEN32.pack(len(target)), target, _LEN32.pack(len(xattrs))]
    for name, value in xattrs:
        out.append(_LEN16.pack(len(name)) + name + _LEN32.pack(len(value)) + value)
    if blocks is not None:
        out.append(_U64.pack(len(blocks)))
        out.extend(index + cid for index, cid in blocks)
    elif pieced is not None:
        out.append(_PIECES.pack(*pieced))
    else:
        out.append(_U64.pack(len(entries)))
        out.extend(_encode_items(entries))
    return b"".join(out)


_ROW_FLAGS = struct.Struct(">I")
_ROW_FLAGS_AT = ROW_TREE_ID.start - _ROW_FLAGS.size
_NO_XATTRS = _LEN32.pack(0)


def encode_file_row(ino: int, row, xattrs: list[tuple[bytes, bytes]], blocks: list[tuple[bytes, bytes]]) -> bytes:
    """encode_row() of a file whose row is in its fixed form: its bytes
    joined in one call when it has no xattrs and no wide times (most files:
    a snapshot writes one for every file)."""
    if xattrs or _ROW_FLAGS.unpack_from(row, _ROW_FLAGS_AT)[0] & WIDE_TIMES:
        return encode_row(ino, row, xattrs, blocks=blocks)
    target = row[ROW_FIXED:]
    if len(blocks) == 1:
        ((index, cid),) = blocks
        return b"".join((FILE, _U64.pack(ino), row[ROW_ATTRS_HEAD], row[ROW_DATA_BYTES], _LEN32.pack(len(target)),
                         target, _NO_XATTRS, _ONE_BLOCK, index, cid))
    return b"".join((FILE, _U64.pack(ino), row[ROW_ATTRS_HEAD], row[ROW_DATA_BYTES], _LEN32.pack(len(target)),
                     target, _NO_XATTRS, _U64.pack(len(blocks)), *[index + cid for index, cid in blocks]))


_ONE_BLOCK = _U64.pack(1)


def _decode_items(data: bytes, pos: int, count: int) -> list[tuple[bytes, bytes]]:
    items = []
    for _ in range(count):
        (nlen,) = _LEN16.unpack_from(data, pos)
        end = pos + 2 + nlen
        items.append((data[pos + 2: end], data[end: end + ID_LEN]))
        pos = end + ID_LEN
    if pos != len(data):
        raise StoreDamaged("tree object has a damaged entry list")
    return items


def decode(data: bytes) -> TreeObject:
    kind = data[:1]
    if kind == LEAF:
        (count,) = _LEN32.unpack_from(data, 1)
        return TreeObject(LEAF, 0, Inode(mode=0, uid=0, gid=0), entries=_decode_items(data, 5, count))
    if kind == INDEX:
        level, count = _INDEX_HEAD.unpack_from(data, 1)
        return TreeObject(INDEX, 0, Inode(mode=0, uid=0, gid=0), entries=_decode_items(data, 1 + _INDEX_HEAD.size, count),
                          level=level)
    pos = 1
    ino, mode, uid, gid, nlink, size, atime, mtime, ctime, rdev, data_bytes = _ATTRS.unpack_from(data, pos)
    pos += _ATTRS.size
    if kind.islower():
        kind = kind.upper()
        atime, mtime, ctime = unpack_times((atime, mtime, ctime), data, pos)
        pos += WIDE_TIMES_SIZE
    (tlen,) = _LEN32.unpack_from(data, pos)
    target = data[pos + 4: pos + 4 + tlen]
    pos += 4 + tlen
    inode = Inode(mode=mode, uid=uid, gid=gid, nlink=nlink, size=size, atime_ns=atime,
                  mtime_ns=mtime, ctime_ns=ctime, rdev=rdev, data_bytes=data_bytes, target=target)
    obj = TreeObject(DIR if kind == PIECED else kind, ino, inode)
    (count,) = _LEN32.unpack_from(data, pos)
    pos += 4
    for _ in range(count):
        (nlen,) = _LEN16.unpack_from(data, pos)
        name = data[pos + 2: pos + 2 + nlen]
        pos += 2 + nlen
        (vlen,) = _LEN32.unpack_from(data, pos)
        obj.xattrs.append((name, data[pos + 4: pos + 4 + vlen]))
        pos += 4 + vlen
    if kind == PIECED:
        obj.count, obj.level, obj.pieces = _PIECES.unpack_from(data, pos)
        return obj
    (count,) = _U64.unpack_from(data, pos)
    pos += 8
    if kind == FILE:
        for _ in range(count):
            obj.blocks.append((_U64.unpack_from(data, pos)[0], data[pos + 8: pos + 8 + ID_LEN]))
            pos += 8 + ID_LEN
    elif kind == DIR:
        obj.entries = _decode_items(data, pos, count)
    else:
        raise StoreDamaged(f"tree object of unknown kind {kind!r}")
    return obj


def get(txn: Txn, oid: bytes) -> TreeObject:
    raw = get_raw(txn, oid)
    return decode(raw)


def get_raw(txn: Txn, oid: bytes) -> bytes:
    payload = stored(txn, oid)
    if payload is None:
        raise StoreDamaged(f"missing tree object {oid.hex()}")
    return chunks.decode(payload)


# An object's count row (`orefs`) has one of three forms, told by its length:
# the count alone (the object a value of its own in `objects`, as every object
# was in format 1); the count and where the object is packed (format 2); or
# where it is packed alone (format 3), its count then in `ocounts` under its
# place (pack number, offset). Counts kept by place sit beside the counts of
# the objects stored with it, and a snapshot stores a folder's objects one
# after another: the new piece of a folder takes a reference on each of its
# entries, which then changes one or two pages of counts, not one page per
# entry (a table keyed by random ids has each on a page of its own).
_PACKED_V2 = struct.Struct(">QQII")  # count, pack number, offset, stored length
_PACKED = struct.Struct(">QII")      # pack number, offset, stored length
_PLACE = struct.Struct(">QI")        # an ocounts key: pack number, offset


def _loc(raw) -> packs.Location | None:
    if len(raw) == _PACKED.size:
        return packs.Location(*_PACKED.unpack(raw))
    if len(raw) == _PACKED_V2.size:
        return packs.Location(*_PACKED_V2.unpack(raw)[1:])
    return None


def _place(loc: packs.Location) -> bytes:
    return _PLACE.pack(loc.pack, loc.offset)


def _count_in(txn: Txn, raw) -> int:
    """The count an orefs row gives (read from ocounts for a format-3 row)."""
    if len(raw) == _PACKED.size:
        found = countrows.get(txn, "ocounts", bytes(raw[:_PLACE.size]))  # (the row begins with its place)
        return _U64.unpack(found)[0] if found is not None else 0
    return _U64.unpack_from(raw)[0]


def _count_key(oid: bytes, raw) -> bytes:
    """Where an object's count is kept, for writing counts in key order."""
    return b"p" + raw[:_PLACE.size] if len(raw) == _PACKED.size else b"o" + oid


def _set(txn: Txn, oid: bytes, count: int, raw=None) -> None:
    """Set an object's count, leaving where it is as it is."""
    raw = raw if raw is not None else countrows.get(txn, "orefs", oid)
    if len(raw) == _PACKED.size:
        txn.put("ocounts", bytes(raw[:_PLACE.size]), _U64.pack(count))
    else:
        txn.put("orefs", oid, _U64.pack(count) + bytes(raw)[_U64.size:])


def _put_packed(txn: Txn, oid: bytes, loc: packs.Location, count: int) -> None:
    txn.put("orefs", oid, _PACKED.pack(*loc))
    txn.put("ocounts", _place(loc), _U64.pack(count))


def _store(txn: Txn, oid: bytes, payload, count: int) -> None:
    """Keep an object's stored form (packed when small, else a value of its own)."""
    old = countrows.get(txn, "orefs", oid)  # stored again over a count of 0: its old copy is dead
    if old is not None:
        _let_go(txn, oid, old)
    if len(payload) <= packs.ENTRY_MAX:
        _put_packed(txn, oid, packs.add(txn, packs.OBJECT, payload), count)
    else:
        txn.put("objects", oid, payload)
        txn.put("orefs", oid, _U64.pack(count))


def _let_go(txn: Txn, oid: bytes, raw) -> None:
    """Free an object's stored form (and its count by place); its row stays."""
    loc = _loc(raw)
    if loc is None:
        txn.delete("objects", oid)
        return
    if len(raw) == _PACKED.size:
        txn.delete("ocounts", _place(loc))
    packs.release(txn, loc)


def _unstore(txn: Txn, oid: bytes) -> None:
    raw = countrows.get(txn, "orefs", oid)
    if raw is None:
        txn.delete("objects", oid)
        return
    raw = bytes(raw)
    txn.delete("orefs", oid)
    _let_go(txn, oid, raw)


def has(txn: Txn, oid: bytes) -> bool:
    return txn.get("orefs", oid) is not None


def stored(txn: Txn, oid: bytes) -> bytes | None:
    """An object as stored (codec byte + encoding), unchecked; None if absent."""
    raw = countrows.get(txn, "orefs", oid)
    loc = _loc(raw) if raw is not None else None
    payload = txn.get("objects", oid) if loc is None else packs.view(txn, loc)
    return None if payload is None else bytes(payload)


def location(txn: Txn, oid: bytes) -> packs.Location | None:
    """Where a packed object is (None: not packed, or not held)."""
    raw = countrows.get(txn, "orefs", oid)
    return _loc(raw) if raw is not None else None


def identify(payload) -> bytes | None:
    """The id of an object's stored form (None if it does not decode)."""
    try:
        return object_id(chunks.decode(payload))
    except Exception:  # zstd's errors, or an unknown codec
        return None


def relocate(txn: Txn, oid: bytes, loc: packs.Location) -> None:
    """Point an object's row at a new copy of it (a pack rewritten); its
    count goes with it (a format-2 row takes the format-3 form)."""
    raw = bytes(countrows.get(txn, "orefs", oid))
    count = _count_in(txn, raw)
    if len(raw) == _PACKED.size:
        txn.delete("ocounts", _place(_loc(raw)))
    _put_packed(txn, oid, loc, count)


def lift_count(txn: Txn, oid: bytes) -> int:
    """A packed object's count, taken from where it is kept (its place in
    ocounts, or its format-2 row) for place(): the object is moving, and
    another may take its place before it is placed again."""
    raw = bytes(countrows.get(txn, "orefs", oid))
    count = _count_in(txn, raw)
    if len(raw) == _PACKED.size:
        txn.delete("ocounts", _place(_loc(raw)))
    return count


def place(txn: Txn, oid: bytes, loc: packs.Location, count: int) -> None:
    """Point an object's row at its copy at loc, its count (lift_count's) there."""
    _put_packed(txn, oid, loc, count)


def pack_alone(txn: Txn, oid: bytes) -> bool:
    """Move an object kept as a value of its own (an older store's) into a
    pack if it is small enough; whether it moved."""
    raw = countrows.get(txn, "orefs", oid)
    if raw is None or _loc(raw) is not None:
        return False
    payload = txn.get("objects", oid)
    if payload is None or len(payload) > packs.ENTRY_MAX:
        return False
    loc = packs.add(txn, packs.OBJECT, bytes(payload))
    txn.delete("objects", oid)
    _put_packed(txn, oid, loc, _count_in(txn, raw))
    return True


def put_stored(txn: Txn, oid: bytes, payload: bytes) -> None:
    """Store an object received as stored (checked by the caller, its children
    held by it already), held by no one yet."""
    _store(txn, oid, payload, 0)


def set_count(txn: Txn, oid: bytes, count: int) -> None:
    """Set an object's reference count (gc's repair)."""
    _set(txn, oid, count)


def recount(txn: Txn, oid: bytes, count: int) -> None:
    """Give an object held alone with no count row its count back (gc's repair)."""
    txn.put("orefs", oid, _U64.pack(count))


def counted(txn: Txn) -> int:
    """How many objects have a count row."""
    return txn.txn.stat(txn.store.dbs["orefs"])["entries"]


def forget(txn: Txn, oid: bytes) -> None:
    """Delete an object and its count row, leaving its children's counts
    alone (gc's sweep, which sets every count after)."""
    _unstore(txn, oid)


def count_rows(txn: Txn):
    """(object id, count) of every counted object."""
    for oid, raw in countrows.scan(txn, "orefs", b""):
        yield bytes(oid), _count_in(txn, raw)


def stored_rows(txn: Txn):
    """(object id, stored form) of every object the store holds: the ones
    alone, counted or not, then the packed ones pack by pack."""
    for oid, payload in txn.scan("objects", b""):
        yield bytes(oid), payload
    yield from packs.read_in_order(txn, locations(txn))


def locations(txn: Txn):
    """(object id, location) of every packed object."""
    for oid, raw in countrows.scan(txn, "orefs", b""):
        loc = _loc(raw)
        if loc is not None:
            yield bytes(oid), loc


def alone(txn: Txn):
    """Ids of counted objects kept as values of their own (pack_alone packs
    those that are small enough)."""
    for oid, raw in countrows.scan(txn, "orefs", b""):
        if _loc(raw) is None:
            yield bytes(oid)


def uncounted(txn: Txn):
    """Ids of objects held alone with no count row (leaked)."""
    for oid, _ in txn.scan("objects", b""):
        if txn.get("orefs", oid) is None:
            yield bytes(oid)


def stored_total(txn: Txn) -> int:
    """The stored bytes of every counted object."""
    total = 0
    for oid, raw in countrows.scan(txn, "orefs", b""):
        loc = _loc(raw)
        if loc is not None:
            total += loc.length
        else:
            payload = txn.get("objects", oid)
            total += len(payload) if payload is not None else 0
    return total


def disk_bytes(txn: Txn, oid: bytes) -> int:
    """What an object takes in the store's file, its count row included."""
    psize = txn.store.env.stat()["psize"]
    raw = countrows.get(txn, "orefs", oid)
    if raw is None:
        return 0
    loc = _loc(raw)
    if loc is not None:
        by_place = row_disk_bytes(psize, _PLACE.size, _U64.size) if len(raw) == _PACKED.size else 0
        return packs.HEAD.size + loc.length + row_disk_bytes(psize, len(oid), len(raw)) + by_place
    payload = txn.get("objects", oid)
    size = len(payload) if payload is not None else 0
    return row_disk_bytes(psize, len(oid), size) + row_disk_bytes(psize, len(oid), len(raw))


def _count(txn: Txn, oid: bytes) -> int:
    raw = countrows.get(txn, "orefs", oid)
    return _count_in(txn, raw) if raw is not None else 0


def stray_counts(txn: Txn) -> list[bytes]:
    """ocounts keys no count row points to (for verify; gc deletes them)."""
    found = sum(1 for _, raw in countrows.scan(txn, "orefs", b"")
                if len(raw) == _PACKED.size and countrows.get(txn, "ocounts", bytes(raw[:_PLACE.size])) is not None)
    if found == txn.txn.stat(txn.store.dbs["ocounts"])["entries"]:
        return []  # every count by place is one a row points to
    placed = {bytes(raw[:_PLACE.size]) for _, raw in countrows.scan(txn, "orefs", b"") if len(raw) == _PACKED.size}
    return [bytes(key) for key, _ in countrows.scan(txn, "ocounts", b"") if bytes(key) not in placed]


def drop_stray_counts(txn: Txn) -> int:
    keys = stray_counts(txn)
    for key in keys:
        txn.delete("ocounts", key)
    return len(keys)


def count(txn: Txn, oid: bytes) -> int:
    """How many holders object `oid` has (0: none, or no such object)."""
    return _count(txn, oid)


# Objects up to this size are compressed in one call for a batch: a call per
# object of ~130 bytes cost ~9 us, a tenth of a first snapshot's CPU, most of
# it zstd's setup of each frame and Python's call.
BATCH_COMPRESS_MAX = 4096


def _stored_forms(encodings: list[bytes]) -> list[bytes]:
    """The stored form of each encoding (codec byte + data), as chunks.encode
    makes it at the level of short blocks; small ones compressed together."""
    small = [data for data in encodings if len(data) <= BATCH_COMPRESS_MAX]
    packed = iter(_compress_all(small)) if small else iter(())
    out = []
    zstd, raw = bytes((chunks.ZSTD,)), bytes((chunks.RAW,))
    for data in encodings:
        if len(data) > BATCH_COMPRESS_MAX:
            out.append(chunks.encode(data, "zstd"))
            continue
        z = next(packed)
        out.append(b"".join((zstd, z)) if len(z) <= len(data) * (1 - chunks.MIN_SAVING) else raw + data)
    return out


_local = threading.local()


def _compress_all(encodings: list[bytes]) -> list:
    c = getattr(_local, "zc", None)
    if c is None:
        import zstandard

        c = _local.zc = zstandard.ZstdCompressor(level=chunks.LEVEL_SHORT)
    try:
        return list(c.multi_compress_to_buffer(encodings))
    except (AttributeError, NotImplementedError):  # zstandard's cffi backend lacks it
        return [memoryview(c.compress(data)) for data in encodings]


def _store_many(txn: Txn, oids: list[bytes], payloads: list[bytes], counts: list[int]) -> None:
    """Keep new objects: their ids, stored forms (codec byte + encoding) and
    counts, given in the order they were made: children just before their
    parent, a folder's entries one after another, so the counts a later
    change of the folder takes on its entries are neighbours (see _PACKED).
    Rows are written in key order, in one call per table (a first snapshot
    stores 100,000 objects at once). No object has a count row: RefBatch.add
    read it."""
    places = iter(packs.add_many(txn, packs.OBJECT, [p for p in payloads if len(p) <= packs.ENTRY_MAX]))
    by_id, by_place = [], []
    packed, place, count_row = _PACKED.pack, _PLACE.pack, _U64.pack
    for oid, payload, count in zip(oids, payloads, counts):
        if len(payload) <= packs.ENTRY_MAX:
            loc = next(places)
            by_id.append((oid, packed(*loc)))
            by_place.append((place(loc[0], loc[1]), count_row(count)))
        else:
            txn.put("objects", oid, payload)
            by_id.append((oid, count_row(count)))
    by_id.sort()
    by_place.sort()  # (places grow: sorted already, but for a pack filled again)
    txn.put_many("orefs", by_id)
    txn.put_many("ocounts", by_place)


def incref(txn: Txn, oid: bytes) -> None:
    raw = countrows.get(txn, "orefs", oid)  # a piece just stored has a count row of 0
    if raw is None:
        raise StoreDamaged(f"reference to missing tree object {oid.hex()}")
    _set(txn, oid, _count_in(txn, raw) + 1, raw)


def put(txn: Txn, obj: TreeObject) -> bytes:
    """Store obj (if new) and take one reference to it; return its id."""
    data = encode(obj)
    return put_encoded(txn, data, obj)


def put_encoded(txn: Txn, data: bytes, obj: TreeObject | None = None) -> bytes:
    refs = RefBatch(txn)
    objects, chunk_ids = (obj or decode(data)).children()
    oid = refs.add(data, objects, chunk_ids, held=1)
    refs.flush()
    return oid


# A batch keeps the objects it stores in memory until its flush, up to this
# many (or bytes of them): a first snapshot of 100,000 files in one folder
# holds them all, so each count row is written once, with its final count.
HOLD_OBJECTS = 250_000
HOLD_BYTES = 64 << 20


class RefBatch:
    """The objects one operation stores, and the reference counts it changes,
    written once at its end (flush), in key order.

    A snapshot stores an object for each changed inode, and the folder's
    object (or pieces) holding it takes a second reference: kept here, its
    count row is written once. A folder in pieces rewrites a piece of ~TARGET
    entries for one change: the new piece takes a reference on each entry,
    the old one, freed, lets go of each. Counted here, the entries both hold
    cost nothing, and the count rows written are those of what changed, not
    of every neighbour (each on its own page of a large table)."""

    def __init__(self, txn: Txn):
        self.txn = txn
        self.delta: dict[bytes, int] = {}  # stored objects: change of their count
        self.rows: dict[bytes, tuple[bytes, int]] = {}  # ... their count rows as read, and counts
        # New objects: their encoding (compressed at flush, all at once) and
        # count. (Flat dicts of bytes and ints: 100,000 lists here made
        # Python's cyclic gc walk them again and again, a tenth of a first
        # snapshot.)
        self.new: dict[bytes, bytes] = {}
        self.new_counts: dict[bytes, int] = {}
        self.new_bytes = 0
        self.chunks: dict[bytes, int] = {}  # chunk id -> change of its count
        self._get_count_row = functools.partial(txn.txn.get, db=txn.store.dbs["orefs"])

    def _row(self, oid: bytes):
        row = self.rows.get(oid)
        if row is None:
            raw = self._get_count_row(oid)  # (every new object asks: a call less than countrows.get)
            if raw is None:
                return None
            if raw[0]:
                raw = countrows.expand(raw)
            row = self.rows[oid] = (bytes(raw), _count_in(self.txn, raw))
        return row

    def count(self, oid: bytes) -> int:
        count = self.new_counts.get(oid)
        if count is not None:
            return count
        row = self._row(oid)
        return (row[1] if row is not None else 0) + self.delta.get(oid, 0)

    def incref(self, oid: bytes) -> None:
        if oid in self.new_counts:
            self.new_counts[oid] += 1
        elif self._row(oid) is None:
            raise StoreDamaged(f"reference to missing tree object {oid.hex()}")
        else:
            self.delta[oid] = self.delta.get(oid, 0) + 1

    def add(self, data: bytes, objects: list[bytes], chunk_ids: list[bytes], held: int,
            oid: bytes | None = None) -> bytes:
        """Store an encoded object if new (holding its children: `objects`
        and `chunk_ids`), with `held` references taken on it; its id. Held by
        no one (0), the holder stored next takes the reference."""
        oid = oid or object_id(data)
        if oid in self.new_counts:
            self.new_counts[oid] += held
            return oid
        if self._row(oid) is not None:  # stored (with a count of 0 too, it holds its children)
            if held:
                self.delta[oid] = self.delta.get(oid, 0) + held
            return oid
        new_counts, chunk_counts = self.new_counts, self.chunks
        for child in objects:  # (a piece's: mostly objects of this batch)
            if child in new_counts:
                new_counts[child] += 1
            else:
                self.incref(child)
        for cid in chunk_ids:
            chunk_counts[cid] = chunk_counts.get(cid, 0) + 1
        self.new[oid] = data
        new_counts[oid] = held
        self.new_bytes += len(data)
        if len(self.new) >= HOLD_OBJECTS or self.new_bytes >= HOLD_BYTES:
            self.flush()
        return oid

    def decref(self, oid: bytes) -> None:
        """As decref(): objects no one holds any more are deleted at once."""
        work = [oid]
        while work:
            oid = work.pop()
            count = self.count(oid)
            if count <= 0:
                raise StoreDamaged(f"reference to missing tree object {oid.hex()}")
            new = self.new.get(oid)
            if count > 1:
                if new is not None:
                    self.new_counts[oid] -= 1
                else:
                    self.delta[oid] = self.delta.get(oid, 0) - 1
                continue
            if new is not None:  # never stored: it goes as it came
                del self.new[oid], self.new_counts[oid]
                self.new_bytes -= len(new)
                objects, chunk_ids = decode(new).children()
            else:
                objects, chunk_ids = get(self.txn, oid).children()
                _unstore(self.txn, oid)
                self.delta.pop(oid, None)
                self.rows.pop(oid, None)
            work.extend(objects)
            for cid in chunk_ids:
                self.chunks[cid] = self.chunks.get(cid, 0) - 1

    def flush(self) -> None:
        """Write what the batch holds: new objects in the order they were
        made (see _store_many), counts in key order (neighbouring rows share
        pages)."""
        txn = self.txn
        if self.new:  # (else neither chunks nor packs is loaded: a snapshot of an unchanged volume)
            oids = list(self.new)
            _store_many(txn, oids, _stored_forms(list(self.new.values())), [self.new_counts[oid] for oid in oids])
        for oid in sorted(self.delta, key=lambda oid: _count_key(oid, self.rows[oid][0])):
            delta = self.delta[oid]
            if delta:
                raw, count = self.rows[oid]
                _set(txn, oid, count + delta, raw)
        if self.chunks:
            deltas = sorted(self.chunks.items())
            chunks.incref_many(txn, [(cid, delta) for cid, delta in deltas if delta > 0])
            for cid, delta in deltas:
                if delta < 0:
                    for _ in range(-delta):
                        chunks.decref(txn, cid)
        self.new.clear()
        self.new_counts.clear()
        self.new_bytes = 0
        self.delta.clear()
        self.rows.clear()
        self.chunks.clear()


def decref(txn: Txn, oid: bytes) -> None:
    """Drop one reference; delete objects no one holds, down the tree."""
    work = [oid]
    while work:
        oid = work.pop()
        count = _count(txn, oid)
        if count == 0:
            raise StoreDamaged(f"reference to missing tree object {oid.hex()}")
        if count > 1:
            _set(txn, oid, count - 1)
            continue
        obj = get(txn, oid)
        _unstore(txn, oid)
        objects, chunk_ids = obj.children()
        work.extend(objects)
        for cid in chunk_ids:
            chunks.decref(txn, cid)


def entries(txn: Txn, obj: TreeObject) -> list[tuple[bytes, bytes]]:
    """A directory's entries (name, object id), sorted, from whichever form it has."""
    if obj.pieces is None:
        return obj.entries
    out: list[tuple[bytes, bytes]] = []
    stack = [obj.pieces]
    while stack:
        piece = get(txn, stack.pop())
        if piece.kind == LEAF:
            out.extend(piece.entries)
        elif piece.kind == INDEX:
            stack.extend(cid for _, cid in reversed(piece.entries))
        else:
            raise StoreDamaged("a directory's pieces lead to an object that is no piece")
    return out


def walk(txn: Txn, oid: bytes, prefix: bytes = b""):
    """Yield (path, object id, object) for a tree, parents before children."""
    stack = [(prefix, oid)]
    while stack:
        path, oid = stack.pop()
        obj = get(txn, oid)
        yield path, oid, obj
        for name, child in reversed(entries(txn, obj)):
            stack.append((path + b"/" + name if path else name, child))
