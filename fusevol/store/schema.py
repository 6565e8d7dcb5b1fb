"""Table names, key layouts and record encodings of the LMDB store.

Every key that belongs to a volume starts with the volume's 8-byte id (vid)
so that one volume's rows are contiguous and a prefix scan walks them.
Integers in keys are big-endian so that LMDB's byte order is numeric order.
"""

import errno
import struct

from .. import native
from ..errors import FsError, StoreDamaged

FORMAT_VERSION = 6
# Formats whose rows this one reads as they are (opening one marks it FORMAT_VERSION):
# 1 kept every chunk and tree object as a value of its own; 2 packs the small ones;
# 3 keeps a packed object's count by its place in `ocounts` (trees.py); 4 may keep
# a pack of tree objects compressed whole (packs.py, written by gc: densify.py);
# 5 may keep count rows and inode records short (restforms.py, written by gc and
# the idle upkeep); 6 may keep large chunks in data files (datafiles.py).
UPGRADES = (1, 2, 3, 4, 5)
BLOCK_SIZE = 128 * 1024
ROOT_INO = 1

# name -> what it holds
TABLES = {
    "meta": "store-wide settings and counters",
    "volumes": "volume name -> JSON record",
    "vstats": "vid -> per-volume counters",
    "inodes": "vid|ino -> Inode record",
    "dirents": "vid|parent_ino|name -> child ino",
    "parents": "vid|ino|parent_ino|name -> b'' (back references, for hardlinks and snapshots)",
    "blocks": "vid|ino|block_index -> chunk id",
    "xattrs": "vid|ino|name -> value",
    "orphans": "vid|ino -> b'' (unlinked while open; purged when closed or at mount)",
    "multilinks": "vid|ino -> b'' (files with several names: their parents go into snapshots)",
    "chunks": "chunk id -> codec byte + payload (a chunk too large for a pack)",
    "refs": "chunk id -> refcount, raw length, stored length[, pack number, offset | "
            "data file number (u64), offset (u64)]",
    "objects": "tree object id -> codec byte + encoded object (one too large for a pack)",
    "orefs": "tree object id -> refcount (alone) | refcount, pack number, offset, stored length "
             "(format 2) | pack number, offset, stored length (format 3: the count in ocounts)",
    "ocounts": "pack number|offset -> refcount of the packed tree object there (format 3)",
    "snapshots": "volume name|0|snapshot name -> JSON record",
    "packs": "pack number -> small chunks and objects as stored, back to back (packs.py)",
    "packdead": "pack number -> bytes of its entries that nothing points to any more",
    "datafiles": "data file number (u32) -> its committed end (datafiles.py)",
    "datadead": "txn id|data file number|offset -> length of a range let go of, to punch",
    "dirchanges": "vid|dir_ino -> the object a folder in pieces was last written as; "
                  "vid|dir_ino|name -> b'' (its entries changed since)",
}

U64 = struct.Struct(">Q")


def u64(n: int) -> bytes:
    return U64.pack(n)


def read_u64(b, offset: int = 0) -> int:
    return U64.unpack_from(b, offset)[0]


_PAIR = struct.Struct(">QQ").pack
# vkey(vid, ino) and vkey(vid, ino, parent), one C call each (the request path's keys)
ino_key = _PAIR
ino_pair_key = struct.Struct(">QQQ").pack
read_ino_key = struct.Struct(">QQ").unpack_from  # (vid, ino) of such a key


def vkey(vid: int, *parts) -> bytes:
    """Key of a volume's row: vid then each part (int -> u64, bytes as is)."""
    if parts and type(parts[0]) is int:  # (vid, ino, ...): every row on the request path
        if len(parts) == 1:
            return _PAIR(vid, parts[0])
        if len(parts) == 2 and type(parts[1]) is bytes:
            return _PAIR(vid, parts[0]) + parts[1]
    out = [U64.pack(vid)]
    for p in parts:
        out.append(U64.pack(p) if isinstance(p, int) else p)
    return b"".join(out)


_INODE = struct.Struct(">IIIIQqqqQQQI32s")
_INODE_SIZE = _INODE.size
_FLAGS = struct.Struct(">I")
_FLAGS_AT = struct.calcsize(">IIIIQqqqQQQ")


def row_flags(raw) -> int:
    """The flags of a packed inode record, without unpacking the rest."""
    if raw[0]:
        raw = full_row(raw)
    return _FLAGS.unpack_from(raw, _FLAGS_AT)[0]


# An inode record at rest (format 5): gc and the idle upkeep write the inode
# table again in key order (compaction.py, repack.py) with each record short:
# a tag, the integers but the times as unsigned LEB128 varints, the times as
# they are (int64 nanoseconds take 8 bytes, a varint 9), the tree id unless
# it is NO_TREE, then the rest of the record (wide times, a symlink's
# target) as it is: 108 bytes -> about 73 with a tree id. A fixed record
# begins with its mode (u32 below 2^24: 0); a short one with its tag.
# Readers take the fixed form back (full_row; Inode.unpack and row_flags do
# it); writers write records fixed.
_SHORT_TREE, _SHORT_NO_TREE = 1, 2
# A mode is its type and permission bits (16): records take none above 24
# bits (Inode.pack), so a fixed record's first byte is 0.
MODE_MAX = (1 << 24) - 1
_VARINT_FIELDS = (0, 1, 2, 3, 4, 8, 9, 10, 11)  # mode, uid, gid, nlink, size, rdev, parent, data_bytes, flags


def put_varint(n: int, out: bytearray) -> None:
    """Append n as an unsigned LEB128 varint (the short forms at rest)."""
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(the varint at data[pos:], the position after it); IndexError past the end."""
    n = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, pos
        shift += 7


def short_row(raw) -> bytes:
    """An inode record's short form (the record as it is when it has one
    already or is not a record)."""
    raw = bytes(raw)
    if len(raw) < _INODE_SIZE or raw[0]:
        return raw
    fields = _INODE.unpack_from(raw)
    tree = fields[12]
    out = bytearray((_SHORT_NO_TREE if tree == NO_TREE else _SHORT_TREE,))
    for i in _VARINT_FIELDS:
        put_varint(fields[i], out)
    out += _ROW_TIMES.pack(*fields[5:8])
    if tree != NO_TREE:
        out += tree
    out += raw[_INODE_SIZE:]
    return bytes(out) if len(out) < len(raw) else raw


def full_row(raw):
    """An inode record's fixed form (itself when fixed)."""
    if not raw[0]:
        return raw
    tag = raw[0]
    if tag not in (_SHORT_TREE, _SHORT_NO_TREE):
        raise StoreDamaged("an inode record is damaged")
    data = bytes(raw)
    ints, pos = [], 1
    try:
        for _ in _VARINT_FIELDS:
            n, pos = read_varint(data, pos)
            ints.append(n)
        times = _ROW_TIMES.unpack_from(data, pos)
        pos += _ROW_TIMES.size
        if tag == _SHORT_TREE:
            tree, pos = data[pos:pos + 32], pos + 32
        else:
            tree = NO_TREE
        mode, uid, gid, nlink, size, rdev, parent, data_bytes, flags = ints
        return _INODE.pack(mode, uid, gid, nlink, size, *times, rdev, parent, data_bytes, flags,
                           tree) + data[pos:]
    except (IndexError, struct.error):
        raise StoreDamaged("an inode record is damaged") from None


# Where the fields a snapshot reads are in a packed inode record (Inode.pack):
# it copies them into tree objects as bytes, without unpacking the record.
ROW_MODE = struct.Struct(">I")     # at 0
ROW_ATTRS_HEAD = slice(0, 56)      # mode, uid, gid, nlink, size, atime, mtime, ctime, rdev
ROW_DATA_BYTES = slice(64, 72)     # (parent is at 56)
_TREE_AT = _FLAGS_AT + _FLAGS.size
ROW_TREE_ID = slice(_TREE_AT, _TREE_AT + 32)
ROW_FIXED = _INODE_SIZE            # then the wide times' seconds (WIDE_TIMES), then the target


def row_mode(raw) -> int:
    return ROW_MODE.unpack_from(raw)[0]


_ROW_NLINK = struct.Struct(">I")  # at 12 (after mode, uid, gid)


def row_nlink(raw) -> int:
    return _ROW_NLINK.unpack_from(raw, 12)[0]


def row_with_tree(raw, tree_id: bytes, set_flags: int = 0, clear_flags: int = 0) -> bytes:
    """A packed inode record with its tree id (and flags) changed, the rest as it was."""
    if not (set_flags or clear_flags):
        return raw[:_TREE_AT] + tree_id + raw[_TREE_AT + 32:]
    flags = (row_flags(raw) | set_flags) & ~clear_flags
    return b"".join((raw[:_FLAGS_AT], _FLAGS.pack(flags), tree_id, raw[_TREE_AT + 32:]))


NO_TREE = bytes(32)
# Chunk encodings by name (a volume's `compression`), and the byte that
# marks each in a stored chunk.
CODECS = {"none": 0, "zstd": 1}
LAZY = 1  # flag: rows below this inode are still only in its tree object
WIDE_TIMES = 2  # flag (on disk only): the record's times need more than 64-bit nanoseconds
IN_PIECES = 4  # flag: a folder last written as pieces; names changed since are in dirchanges

# Times are kept as 64-bit signed seconds plus nanoseconds, the range of the
# kernel's timespec64 (what utimensat can set). Nanoseconds in an int64 end in
# 2262, so a time beyond that is stored as seconds in an extension that follows
# the fixed part (only then: other records keep the original layout).
_SECONDS = struct.Struct(">qqq")
NS = 1_000_000_000
TIME_MIN_NS = -(1 << 63) * NS
TIME_MAX_NS = ((1 << 63) - 1) * NS + NS - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def time_in_range(ns: int) -> bool:
    """Whether a time (nanoseconds since the epoch) can be stored."""
    return TIME_MIN_NS <= ns <= TIME_MAX_NS


def pack_times(times: tuple[int, int, int]) -> tuple[tuple[int, int, int], bytes]:
    """The three times as int64 fields, and the extension holding their
    seconds when one of them does not fit int64 nanoseconds (else b"")."""
    a, m, c = times
    if _I64_MIN <= a <= _I64_MAX and _I64_MIN <= m <= _I64_MAX and _I64_MIN <= c <= _I64_MAX:
        return times, b""
    return tuple(t % NS for t in times), _SECONDS.pack(*(t // NS for t in times))


def unpack_times(fields: tuple[int, int, int], data, offset: int) -> tuple[int, int, int]:
    """The inverse of pack_times, reading the extension at offset."""
    return tuple(s * NS + f for s, f in zip(_SECONDS.unpack_from(data, offset), fields))


WIDE_TIMES_SIZE = _SECONDS.size

# Where a packed inode record keeps its times (atime, mtime, ctime) while they
# fit int64 nanoseconds (no WIDE_TIMES flag): after mode, uid, gid, nlink, size.
_ROW_TIMES = struct.Struct(">qqq")
ROW_TIMES_AT = struct.calcsize(">IIIIQ")


def row_with_times(raw, atime_ns: int | None, mtime_ns: int | None, ctime_ns: int | None):
    """A packed inode record with new times (None: the one it has), the rest
    as it was, written as Inode.pack would write it; None when the record
    must be unpacked for that (its times, old or new, need WIDE_TIMES; or
    the record is short)."""
    if raw[0] or row_flags(raw) & WIDE_TIMES:
        return None
    at = ROW_TIMES_AT
    if atime_ns is None or mtime_ns is None or ctime_ns is None:
        a, m, c = _ROW_TIMES.unpack_from(raw, at)
        atime_ns = a if atime_ns is None else atime_ns
        mtime_ns = m if mtime_ns is None else mtime_ns
        ctime_ns = c if ctime_ns is None else ctime_ns
    if not (_I64_MIN <= atime_ns <= _I64_MAX and _I64_MIN <= mtime_ns <= _I64_MAX
            and _I64_MIN <= ctime_ns <= _I64_MAX):
        return None
    return b"".join((raw[:at], _ROW_TIMES.pack(atime_ns, mtime_ns, ctime_ns), raw[at + 24:]))


class Inode:
    """A file, directory, symlink or special file of one volume.

    ``parent`` is the containing directory of a directory (for ``..``); other
    kinds may have several parents and keep them in the ``parents`` table.
    ``tree_id`` is reserved for snapshots: the id of the immutable object this
    inode was last written as, all zeros while it has changed since.
    ``data_bytes`` is what its block map references (for st_blocks).
    ``flags`` holds LAZY while a cloned inode's entries or blocks are still
    read from its tree object rather than from rows of its own.
    ``target`` is a symlink's target.

    Written out as dataclass(slots=True) would make it (the C codec sets its
    slots, named in INODE_FIELDS' order): the dataclasses module costs every
    process that opens the store, the CLI's included, a large part of its start.
    """

    __slots__ = ("mode", "uid", "gid", "nlink", "size", "atime_ns", "mtime_ns", "ctime_ns",
                 "rdev", "parent", "data_bytes", "flags", "tree_id", "target")

    def __init__(self, mode: int, uid: int, gid: int, nlink: int = 1, size: int = 0,
                 atime_ns: int = 0, mtime_ns: int = 0, ctime_ns: int = 0, rdev: int = 0,
                 parent: int = 0, data_bytes: int = 0, flags: int = 0, tree_id: bytes = NO_TREE,
                 target: bytes = b""):
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = nlink
        self.size = size
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.rdev = rdev
        self.parent = parent
        self.data_bytes = data_bytes
        self.flags = flags
        self.tree_id = tree_id
        self.target = target

    def _values(self) -> tuple:
        return (self.mode, self.uid, self.gid, self.nlink, self.size, self.atime_ns,
                self.mtime_ns, self.ctime_ns, self.rdev, self.parent, self.data_bytes,
                self.flags, self.tree_id, self.target)

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    __hash__ = None  # (mutable, as the dataclass was)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({inner})"

    def copy(self) -> "Inode":
        return Inode(self.mode, self.uid, self.gid, self.nlink, self.size, self.atime_ns,
                     self.mtime_ns, self.ctime_ns, self.rdev, self.parent, self.data_bytes,
                     self.flags, self.tree_id, self.target)

    def pack(self) -> bytes:
        if self.mode > MODE_MAX:  # (a record's first byte tells its form: short_row)
            raise FsError(errno.EINVAL)
        a, m, c = self.atime_ns, self.mtime_ns, self.ctime_ns
        if _I64_MIN <= a <= _I64_MAX and _I64_MIN <= m <= _I64_MAX and _I64_MIN <= c <= _I64_MAX:
            # Times in int64 nanoseconds (every time until 2262): pack_times's
            # answer, without its call and tuples (the request path packs often).
            return _INODE.pack(
                self.mode, self.uid, self.gid, self.nlink, self.size, a, m, c, self.rdev,
                self.parent, self.data_bytes, self.flags & ~WIDE_TIMES, self.tree_id,
            ) + self.target
        (atime, mtime, ctime), wide = pack_times((a, m, c))
        flags = (self.flags | WIDE_TIMES) if wide else (self.flags & ~WIDE_TIMES)
        return _INODE.pack(
            self.mode, self.uid, self.gid, self.nlink, self.size, atime, mtime, ctime,
            self.rdev, self.parent, self.data_bytes, flags, self.tree_id,
        ) + wide + self.target

    @classmethod
    def unpack(cls, raw) -> "Inode":
        if raw[0]:  # a short record (at rest)
            raw = full_row(raw)
        fields = _INODE.unpack_from(raw)
        if not fields[11] & WIDE_TIMES:
            # Positional only: a keyword beside *fields cost the request path
            # twice the time of the call itself (every change decodes inodes).
            if len(raw) == _INODE_SIZE:
                return cls(*fields)
            return cls(*fields, bytes(raw[_INODE_SIZE:]))
        fields = list(fields)
        fields[5:8] = unpack_times(fields[5:8], raw, _INODE_SIZE)
        fields[11] &= ~WIDE_TIMES
        return cls(*fields, target=bytes(raw[_INODE_SIZE + WIDE_TIMES_SIZE:]))


# The request path decodes, encodes and copies inodes many times a file (about
# 9, 5 and 2 a small file): in C when it was built (native/_fusevol_rows.c),
# with the methods above as its twins, which also take what the C leaves to
# Python (a short record, wide times, a value out of range, and every error).
unpack_py, pack_py, copy_py = Inode.unpack, Inode.pack, Inode.copy
INODE_FIELDS = Inode.__slots__  # the fields, in record order
INODE_CODEC = None  # the C codec, when built (the attributes' builder reads inodes with it)
if native.rows is not None:
    INODE_CODEC = native.rows.InodeCodec(Inode, list(INODE_FIELDS),
                                         unpack_py, pack_py, copy_py)
    Inode.unpack = staticmethod(INODE_CODEC.unpack)
    Inode.pack = native.rows.as_method(INODE_CODEC.pack)
    Inode.copy = native.rows.as_method(INODE_CODEC.copy)


_REF = struct.Struct(">QII")


def pack_ref(count: int, raw_len: int, stored_len: int) -> bytes:
    return _REF.pack(count, raw_len, stored_len)


def unpack_ref(raw) -> tuple[int, int, int]:
    return _REF.unpack(raw)


_VSTATS = struct.Struct(">qq")


class VolumeStats:
    """Counters kept per volume: bytes referenced by block maps, and inodes."""

    __slots__ = ("logical_bytes", "inodes")

    def __init__(self, logical_bytes: int = 0, inodes: int = 0):
        self.logical_bytes = logical_bytes
        self.inodes = inodes

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return (self.logical_bytes, self.inodes) == (other.logical_bytes, other.inodes)
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"VolumeStats(logical_bytes={self.logical_bytes!r}, inodes={self.inodes!r})"

    def pack(self) -> bytes:
        return _VSTATS.pack(self.logical_bytes, self.inodes)

    @classmethod
    def unpack(cls, raw) -> "VolumeStats":
        return cls(*_VSTATS.unpack(raw))
