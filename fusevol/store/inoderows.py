"""The inode table of one volume: a row per inode number, and the numbers handed out.

A row is a schema.Inode as it is stored; what a change means for the tree
object the row was last written as is treerows.py's. Numbers are never
reused: the counter only grows, and outlives a rollback.
"""

import errno
import time

from ..errors import FsError
from .env import Txn
from .schema import (NO_TREE, ROOT_INO, ROW_TREE_ID, Inode, ino_key, read_u64, row_flags,
                     row_with_times, u64)

_decode = Inode.unpack  # one object: a reader's copy of a row is kept with its decoder


def now_ns(txn: Txn) -> int:
    """The time of the operation running in txn, for the times it sets: fixed
    for the operation when it is run again (fs/speculate.py), so the second
    run writes the same times."""
    return txn.now_ns or time.time_ns()


class InodeRows:
    def __init__(self, vid: int):
        self.vid = vid
        self._counter = b"next_ino" + u64(vid)  # its key in meta, made once (every create)

    def get(self, txn: Txn, ino: int) -> Inode:
        """The inode, decoded afresh: the caller may change it."""
        raw = txn.get("inodes", ino_key(self.vid, ino))
        if raw is None:
            raise FsError(errno.ENOENT)
        return _decode(raw)

    def peek(self, txn: Txn, ino: int) -> Inode:
        """The inode, to read only: it may be the worker's decoded copy of the
        row (fs/cache.py), shared by every reader, so it must not be changed."""
        inode = txn.peek("inodes", ino_key(self.vid, ino), _decode)
        if inode is None:
            raise FsError(errno.ENOENT)
        return inode

    def flags(self, txn: Txn, ino: int) -> int:
        """The inode's flags, read from its row without decoding the rest."""
        raw = txn.get("inodes", ino_key(self.vid, ino))
        if raw is None:
            raise FsError(errno.ENOENT)
        return row_flags(raw)

    def row(self, ino: int) -> tuple:
        """The table, key and decoder of inode ino's row, for a worker's row
        cache to answer `peek` without a reader (fs/cache.py decoded_if_held)."""
        return "inodes", ino_key(self.vid, ino), _decode

    def find(self, txn: Txn, ino: int) -> Inode | None:
        """get, with None for a number that has no row."""
        raw = txn.get("inodes", ino_key(self.vid, ino))
        return _decode(raw) if raw is not None else None

    def exists(self, txn: Txn, ino: int) -> bool:
        return txn.get("inodes", ino_key(self.vid, ino)) is not None

    def put_row(self, txn: Txn, ino: int, inode: Inode) -> None:
        """Store an inode as it is (its tree id included)."""
        txn.put("inodes", ino_key(self.vid, ino), inode.pack())

    def set_times(self, txn: Txn, ino: int, atime_ns: int | None, mtime_ns: int | None,
                  ctime_ns: int | None) -> bool:
        """Rewrite the stored record's times where they lie (None: kept as
        they are), when that is all a change of them means for the row: it
        holds no tree id (treerows.py would let go of it) and the times fit
        its fixed part. Whether it did (else the caller stores the inode)."""
        key = ino_key(self.vid, ino)
        raw = txn.get("inodes", key)
        if raw is None:
            raise FsError(errno.ENOENT)
        if raw[0] or raw[ROW_TREE_ID] != NO_TREE:  # short (at rest), or with a tree id
            return False
        new = row_with_times(raw, atime_ns, mtime_ns, ctime_ns)
        if new is None:
            return False
        txn.put("inodes", key, new)
        return True

    def delete_row(self, txn: Txn, ino: int) -> None:
        txn.delete("inodes", ino_key(self.vid, ino))

    def alloc(self, txn: Txn) -> int:
        """A number no inode of this volume ever had."""
        key = self._counter
        ino = read_u64(txn.get("meta", key))
        txn.put("meta", key, u64(ino + 1))
        return ino

    def next_ino(self, txn: Txn) -> int:
        """The number the next new inode of this volume gets."""
        return read_u64(txn.get("meta", self._counter))

    # -- the table as a whole: a volume's start, a tree it adopts, its end ------

    def start(self, txn: Txn, root: Inode) -> None:
        """A new volume's root row and its counter."""
        self.put_row(txn, ROOT_INO, root)
        txn.put("meta", b"next_ino" + u64(self.vid), u64(ROOT_INO + 1))

    def adopt(self, txn: Txn, root: Inode, next_ino: int) -> None:
        """A tree's root row; new numbers above `next_ino` and any this volume
        ever used."""
        self.put_row(txn, ROOT_INO, root)
        current = txn.get("meta", self._counter)
        txn.put("meta", b"next_ino" + u64(self.vid),
                u64(max(next_ino, read_u64(current) if current else 0)))

    def tree_ids(self, txn: Txn):
        """The tree object every row that has one was last written as."""
        for _, raw in txn.scan("inodes", u64(self.vid)):
            tree_id = _decode(raw).tree_id
            if tree_id != NO_TREE:
                yield tree_id

    def drop(self, txn: Txn, keep_counter: bool = False) -> None:
        """Delete every row; the counter may stay, so numbers are never reused."""
        txn.delete_prefix("inodes", u64(self.vid))
        if not keep_counter:
            txn.delete("meta", b"next_ino" + u64(self.vid))
