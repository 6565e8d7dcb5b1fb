"""Immutable content-addressed tree objects: what snapshots are made of.

A file object holds an inode's attributes, xattrs and block map (chunk ids);
a directory object its attributes, xattrs and sorted entries (name -> child
object id). An object's id is the BLAKE3 hash of its encoding (in a key space
of its own, apart from data chunks), so equal subtrees have equal ids.

Each object holds one reference on each child (object or chunk), taken when it
is first stored; it is deleted, and lets go of its children, when its own count
falls to zero. References on objects come from snapshot records, from parent
objects, and from live inode rows whose ``tree_id`` says "I equal this object".
"""

import struct
from dataclasses import dataclass, field

import blake3

from ..errors import StoreDamaged
from . import chunks
from .env import Txn
from .schema import WIDE_TIMES_SIZE, Inode, pack_times, unpack_times

FILE, DIR = b"F", b"D"  # in lower case when the times' seconds follow the attributes
_ATTRS = struct.Struct(">QIIIIQqqqQQ")  # ino, mode, uid, gid, nlink, size, a/m/ctime, rdev, data_bytes
_LEN16 = struct.Struct(">H")
_LEN32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
ID_LEN = 32


@dataclass
class TreeObject:
    kind: bytes
    ino: int
    inode: Inode
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    blocks: list[tuple[int, bytes]] = field(default_factory=list)   # files
    entries: list[tuple[bytes, bytes]] = field(default_factory=list)  # directories

    def children(self) -> tuple[list[bytes], list[bytes]]:
        """(child object ids, chunk ids) this object references."""
        return [cid for _, cid in self.entries], [cid for _, cid in self.blocks]


def object_id(data: bytes) -> bytes:
    return blake3.blake3(data, derive_key_context="fusevol 2026 tree object v1").digest()


def encode(obj: TreeObject) -> bytes:
    n = obj.inode
    (atime, mtime, ctime), wide = pack_times((n.atime_ns, n.mtime_ns, n.ctime_ns))
    out = [obj.kind.lower() if wide else obj.kind,
           _ATTRS.pack(obj.ino, n.mode, n.uid, n.gid, n.nlink, n.size, atime, mtime, ctime,
                       n.rdev, n.data_bytes), wide]
    out.append(_LEN32.pack(len(n.target)) + n.target)
    out.append(_LEN32.pack(len(obj.xattrs)))
    for name, value in obj.xattrs:
        out.append(_LEN16.pack(len(name)) + name + _LEN32.pack(len(value)) + value)
    if obj.kind == FILE:
        out.append(_U64.pack(len(obj.blocks)))
        out.extend(_U64.pack(i) + cid for i, cid in obj.blocks)
    else:
        out.append(_U64.pack(len(obj.entries)))
        out.extend(_LEN16.pack(len(name)) + name + cid for name, cid in obj.entries)
    return b"".join(out)


def decode(data: bytes) -> TreeObject:
    kind = data[:1]
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
    obj = TreeObject(kind, ino, inode)
    (count,) = _LEN32.unpack_from(data, pos)
    pos += 4
    for _ in range(count):
        (nlen,) = _LEN16.unpack_from(data, pos)
        name = data[pos + 2: pos + 2 + nlen]
        pos += 2 + nlen
        (vlen,) = _LEN32.unpack_from(data, pos)
        obj.xattrs.append((name, data[pos + 4: pos + 4 + vlen]))
        pos += 4 + vlen
    (count,) = _U64.unpack_from(data, pos)
    pos += 8
    if kind == FILE:
        for _ in range(count):
            obj.blocks.append((_U64.unpack_from(data, pos)[0], data[pos + 8: pos + 8 + ID_LEN]))
            pos += 8 + ID_LEN
    elif kind == DIR:
        for _ in range(count):
            (nlen,) = _LEN16.unpack_from(data, pos)
            name = data[pos + 2: pos + 2 + nlen]
            pos += 2 + nlen
            obj.entries.append((name, data[pos: pos + ID_LEN]))
            pos += ID_LEN
    else:
        raise StoreDamaged(f"tree object of unknown kind {kind!r}")
    return obj


def get(txn: Txn, oid: bytes) -> TreeObject:
    raw = get_raw(txn, oid)
    return decode(raw)


def get_raw(txn: Txn, oid: bytes) -> bytes:
    payload = txn.get("objects", oid)
    if payload is None:
        raise StoreDamaged(f"missing tree object {oid.hex()}")
    return chunks.decode(payload)


def _count(txn: Txn, oid: bytes) -> int:
    raw = txn.get("orefs", oid)
    return _U64.unpack(raw)[0] if raw is not None else 0


def incref(txn: Txn, oid: bytes) -> None:
    count = _count(txn, oid)
    if count == 0:
        raise StoreDamaged(f"reference to missing tree object {oid.hex()}")
    txn.put("orefs", oid, _U64.pack(count + 1))


def put(txn: Txn, obj: TreeObject) -> bytes:
    """Store obj (if new) and take one reference to it; return its id."""
    data = encode(obj)
    return put_encoded(txn, data, obj)


def put_encoded(txn: Txn, data: bytes, obj: TreeObject | None = None) -> bytes:
    oid = object_id(data)
    count = _count(txn, oid)
    if count:
        txn.put("orefs", oid, _U64.pack(count + 1))
        return oid
    obj = obj or decode(data)
    objects, chunk_ids = obj.children()
    for child in objects:
        incref(txn, child)
    for cid in chunk_ids:
        chunks.incref(txn, cid)
    txn.put("objects", oid, chunks.encode(data, "zstd"))
    txn.put("orefs", oid, _U64.pack(1))
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
            txn.put("orefs", oid, _U64.pack(count - 1))
            continue
        obj = get(txn, oid)
        txn.delete("orefs", oid)
        txn.delete("objects", oid)
        objects, chunk_ids = obj.children()
        work.extend(objects)
        for cid in chunk_ids:
            chunks.decref(txn, cid)


def walk(txn: Txn, oid: bytes, prefix: bytes = b""):
    """Yield (path, object id, object) for a tree, parents before children."""
    stack = [(prefix, oid)]
    while stack:
        path, oid = stack.pop()
        obj = get(txn, oid)
        yield path, oid, obj
        for name, child in reversed(obj.entries):
            stack.append((path + b"/" + name if path else name, child))
