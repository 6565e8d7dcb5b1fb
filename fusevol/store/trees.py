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

import struct
from dataclasses import dataclass, field

import blake3

from ..errors import StoreDamaged
from . import chunks, packs
from .env import Txn, row_disk_bytes
from .schema import WIDE_TIMES_SIZE, Inode, pack_times, unpack_times

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


@dataclass
class TreeObject:
    kind: bytes
    ino: int
    inode: Inode
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    blocks: list[tuple[int, bytes]] = field(default_factory=list)   # files
    entries: list[tuple[bytes, bytes]] = field(default_factory=list)  # directories, pieces
    pieces: bytes | None = None  # a PIECED directory's top piece (its entries are there)
    count: int = 0               # ... and how many entries it has
    level: int = 0               # a piece's level (0: leaves); a PIECED directory's height

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


# An object's count row: the count alone (the object a value of its own in
# `objects`, as every object was in format 1), or with where it is packed.
_PACKED = struct.Struct(">QQII")  # count, pack number, offset, stored length


def _loc(raw) -> packs.Location | None:
    if len(raw) == _PACKED.size:
        return packs.Location(*_PACKED.unpack(raw)[1:])
    return None


def _set(txn: Txn, oid: bytes, count: int, raw=None) -> None:
    """Set an object's count, leaving where it is as it is."""
    raw = raw if raw is not None else txn.get("orefs", oid)
    txn.put("orefs", oid, _U64.pack(count) + bytes(raw)[_U64.size:])


def _store(txn: Txn, oid: bytes, payload, count: int) -> None:
    """Keep an object's stored form (packed when small, else a value of its own)."""
    old = txn.get("orefs", oid)  # stored again over a count of 0: its old copy is dead
    if old is not None and _loc(old) is not None:
        packs.release(txn, _loc(old))
    elif old is not None:
        txn.delete("objects", oid)
    if len(payload) <= packs.ENTRY_MAX:
        loc = packs.add(txn, packs.OBJECT, payload)
        txn.put("orefs", oid, _PACKED.pack(count, *loc))
    else:
        txn.put("objects", oid, payload)
        txn.put("orefs", oid, _U64.pack(count))


def _unstore(txn: Txn, oid: bytes) -> None:
    raw = txn.get("orefs", oid)
    loc = _loc(raw) if raw is not None else None
    txn.delete("orefs", oid)
    if loc is None:
        txn.delete("objects", oid)
    else:
        packs.release(txn, loc)


def has(txn: Txn, oid: bytes) -> bool:
    return txn.get("orefs", oid) is not None


def stored(txn: Txn, oid: bytes) -> bytes | None:
    """An object as stored (codec byte + encoding), unchecked; None if absent."""
    raw = txn.get("orefs", oid)
    loc = _loc(raw) if raw is not None else None
    payload = txn.get("objects", oid) if loc is None else packs.view(txn, loc)
    return None if payload is None else bytes(payload)


def location(txn: Txn, oid: bytes) -> packs.Location | None:
    """Where a packed object is (None: not packed, or not held)."""
    raw = txn.get("orefs", oid)
    return _loc(raw) if raw is not None else None


def identify(payload) -> bytes | None:
    """The id of an object's stored form (None if it does not decode)."""
    try:
        return object_id(chunks.decode(payload))
    except Exception:  # zstd's errors, or an unknown codec
        return None


def relocate(txn: Txn, oid: bytes, loc: packs.Location) -> None:
    """Point an object's row at a new copy of it (a pack rewritten)."""
    txn.put("orefs", oid, _PACKED.pack(_count(txn, oid), *loc))


def pack_alone(txn: Txn, oid: bytes) -> bool:
    """Move an object kept as a value of its own (an older store's) into a
    pack if it is small enough; whether it moved."""
    raw = txn.get("orefs", oid)
    if raw is None or _loc(raw) is not None:
        return False
    payload = txn.get("objects", oid)
    if payload is None or len(payload) > packs.ENTRY_MAX:
        return False
    loc = packs.add(txn, packs.OBJECT, bytes(payload))
    txn.delete("objects", oid)
    txn.put("orefs", oid, _PACKED.pack(_count(txn, oid), *loc))
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
    for oid, raw in txn.scan("orefs", b""):
        yield bytes(oid), _U64.unpack_from(raw)[0]


def stored_rows(txn: Txn):
    """(object id, stored form) of every object the store holds: the ones
    alone, counted or not, then the packed ones pack by pack."""
    for oid, payload in txn.scan("objects", b""):
        yield bytes(oid), payload
    by_pack: dict[int, list] = {}
    for oid, raw in txn.scan("orefs", b""):
        loc = _loc(raw)
        if loc is not None:
            by_pack.setdefault(loc.pack, []).append((bytes(oid), loc))
    for number in sorted(by_pack):
        for oid, loc in by_pack.pop(number):
            payload = packs.view(txn, loc)
            if payload is not None:
                yield oid, payload


def locations(txn: Txn):
    """(object id, location) of every packed object."""
    for oid, raw in txn.scan("orefs", b""):
        loc = _loc(raw)
        if loc is not None:
            yield bytes(oid), loc


def alone(txn: Txn):
    """Ids of counted objects kept as values of their own (pack_alone packs
    those that are small enough)."""
    for oid, raw in txn.scan("orefs", b""):
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
    for oid, raw in txn.scan("orefs", b""):
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
    raw = txn.get("orefs", oid)
    if raw is None:
        return 0
    loc = _loc(raw)
    if loc is not None:
        return packs.HEAD.size + loc.length + row_disk_bytes(psize, len(oid), len(raw))
    payload = txn.get("objects", oid)
    size = len(payload) if payload is not None else 0
    return row_disk_bytes(psize, len(oid), size) + row_disk_bytes(psize, len(oid), len(raw))


def _count(txn: Txn, oid: bytes) -> int:
    raw = txn.get("orefs", oid)
    return _U64.unpack_from(raw)[0] if raw is not None else 0


def incref(txn: Txn, oid: bytes) -> None:
    raw = txn.get("orefs", oid)  # a piece just stored has a count row of 0
    if raw is None:
        raise StoreDamaged(f"reference to missing tree object {oid.hex()}")
    _set(txn, oid, _U64.unpack_from(raw)[0] + 1, raw)


def put(txn: Txn, obj: TreeObject) -> bytes:
    """Store obj (if new) and take one reference to it; return its id."""
    data = encode(obj)
    return put_encoded(txn, data, obj)


def put_encoded(txn: Txn, data: bytes, obj: TreeObject | None = None) -> bytes:
    oid = object_id(data)
    count = _count(txn, oid)
    if count:
        _set(txn, oid, count + 1)
        return oid
    obj = obj or decode(data)
    objects, chunk_ids = obj.children()
    for child in objects:
        incref(txn, child)
    for cid in chunk_ids:
        chunks.incref(txn, cid)
    _store(txn, oid, chunks.encode(data, "zstd"), 1)
    return oid


class RefBatch:
    """Object reference counts changed by one operation, written once at its end.

    A folder in pieces rewrites a piece of ~TARGET entries for one change:
    the new piece takes a reference on each entry, the old one, freed, lets
    go of each. Counted here, the entries both hold cost nothing, and the
    count rows written are those of what changed, not of every neighbour
    (each on its own page of a large table)."""

    def __init__(self, txn: Txn):
        self.txn = txn
        self.delta: dict[bytes, int] = {}

    def count(self, oid: bytes) -> int:
        return _count(self.txn, oid) + self.delta.get(oid, 0)

    def incref(self, oid: bytes) -> None:
        if self.txn.get("orefs", oid) is None:
            raise StoreDamaged(f"reference to missing tree object {oid.hex()}")
        self.delta[oid] = self.delta.get(oid, 0) + 1

    def decref(self, oid: bytes) -> None:
        """As decref(): objects no one holds any more are deleted at once."""
        work = [oid]
        while work:
            oid = work.pop()
            count = self.count(oid)
            if count <= 0:
                raise StoreDamaged(f"reference to missing tree object {oid.hex()}")
            if count > 1:
                self.delta[oid] = self.delta.get(oid, 0) - 1
                continue
            obj = get(self.txn, oid)
            _unstore(self.txn, oid)
            self.delta.pop(oid, None)
            objects, chunk_ids = obj.children()
            work.extend(objects)
            for cid in chunk_ids:
                chunks.decref(self.txn, cid)

    def flush(self) -> None:
        for oid, delta in self.delta.items():
            if delta:
                _set(self.txn, oid, _count(self.txn, oid) + delta)
        self.delta.clear()


def put_unheld(txn: Txn, data: bytes, refs: RefBatch | None = None) -> bytes:
    """Store an encoded object if new, holding its children but held by no
    one yet (count 0): the holder that is stored next takes the reference."""
    oid = object_id(data)
    if txn.get("orefs", oid) is None:
        objects, chunk_ids = decode(data).children()
        for child in objects:
            refs.incref(child) if refs is not None else incref(txn, child)
        for cid in chunk_ids:
            chunks.incref(txn, cid)
        _store(txn, oid, chunks.encode(data, "zstd"), 0)
    return oid


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
