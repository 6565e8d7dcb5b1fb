"""Times in inode rows and tree objects: the whole 64-bit-seconds range round-trips,
and a record whose times fit int64 nanoseconds keeps the original layout, so
existing stores and snapshot ids stay as they were."""

import struct

from fusevol.store import trees
from fusevol.store.schema import Inode

OLD_LAYOUT = struct.Struct(">IIIIQqqqQQQI32s")
TIMES = [0, 1, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, (2**34 - 1) * 10**9 + 7,
         -(2**31) * 10**9, ((1 << 63) - 1) * 10**9 + 999_999_999, -(1 << 63) * 10**9]


def test_inode_rows_round_trip_every_time():
    for t in TIMES:
        node = Inode(mode=0o100644, uid=1, gid=2, atime_ns=t, mtime_ns=-t // 3, ctime_ns=5,
                     flags=1, target=b"symlink target")
        back = Inode.unpack(node.pack())
        assert back == node, t


def test_rows_within_int64_nanoseconds_keep_the_old_layout():
    node = Inode(mode=0o100644, uid=1, gid=2, nlink=3, size=4, atime_ns=-5, mtime_ns=2**63 - 1,
                 ctime_ns=7, rdev=8, parent=9, data_bytes=10, flags=1, target=b"t")
    assert node.pack() == OLD_LAYOUT.pack(0o100644, 1, 2, 3, 4, -5, 2**63 - 1, 7, 8, 9, 10, 1,
                                          bytes(32)) + b"t"


def test_tree_objects_round_trip_and_keep_their_ids():
    plain = trees.TreeObject(trees.FILE, 5, Inode(mode=0o100644, uid=0, gid=0, mtime_ns=10**18),
                             blocks=[(0, bytes(32))])
    encoded = trees.encode(plain)
    assert encoded[:1] == b"F" and trees.decode(encoded) == plain
    for t in TIMES:
        obj = trees.TreeObject(trees.DIR, 7, Inode(mode=0o40755, uid=0, gid=0, atime_ns=t,
                                                   mtime_ns=t, ctime_ns=-t // 3),
                               xattrs=[(b"user.x", b"y")], entries=[(b"name", bytes(32))])
        assert trees.decode(trees.encode(obj)) == obj, t
