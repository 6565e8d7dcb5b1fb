"""Writing a volume's changed inodes as tree objects: the work of a snapshot.

Only inodes whose row has no tree id (changed since they were last written)
are written; every other subtree is reused by the id its row keeps. Folders
are written after their entries, without recursion. A file is written as its
folder reaches it, from the bytes of its row (trees.encode_row), its block
map and its xattrs, each read once through a cursor kept for the whole walk.
The objects and the reference counts they change are kept in one RefBatch
and written at the end, once each, in key order.
"""

import functools
import stat
from stat import S_IFDIR, S_IFMT

from . import trees
from .env import Txn
from .folders import FolderPlan
from .inodes import Inodes
from .schema import (IN_PIECES, LAZY, NO_TREE, ROOT_INO, ROW_MODE, ROW_TREE_ID, full_row, ino_key, read_u64,
                     row_flags, row_mode, row_nlink, row_with_tree, vkey)

_mode = ROW_MODE.unpack_from


class TreeWriter:
    def __init__(self, txn: Txn, inodes: Inodes):
        self.txn = txn
        self.inodes = inodes
        self.vid = inodes.vid
        self.refs = trees.RefBatch(txn)
        self._blocks = _Rows(txn.cursor("blocks"))
        self._xattrs = _Rows(txn.cursor("xattrs"))
        self._rows_written: list[tuple[bytes, bytes]] = []  # files' inode rows, put at a folder's end
        self._dirents = txn.cursor("dirents")
        self._get_row = functools.partial(txn.txn.get, db=txn.store.dbs["inodes"])

    def write(self, top: int = ROOT_INO) -> bytes:
        """Write objects for every changed inode under top; top's object id."""
        row = self._row(top)
        oid = bytes(row[ROW_TREE_ID])
        if oid == NO_TREE:
            oid = self._folders(top, row) if stat.S_ISDIR(row_mode(row)) else self._file(top, row)
        self.refs.flush()
        return oid

    def _row(self, ino: int):
        raw = self._get_row(vkey(self.vid, ino))
        if raw is None:
            self.inodes.get(self.txn, ino)  # which names what is missing
        return full_row(raw) if raw[0] else raw  # (short at rest)

    def _open(self, ino: int, row) -> tuple[FolderPlan, list[tuple[int, int]]]:
        """A folder's plan with the ids of its entries that are written (files
        written now), and its folders still to write: (position, ino)."""
        plan = FolderPlan(self.txn, self.inodes, ino, row, None if row_flags(row) & LAZY else self._list)
        self._blocks.reset()  # (a LAZY folder's listing may have written rows)
        self._xattrs.reset()
        folders = []
        ids, get_row, vid, write_file = plan.ids, self._get_row, self.vid, self._file
        for i, (_, child) in enumerate(plan.entries):  # (the loop of a first snapshot: each call counts)
            key = ino_key(vid, child)
            crow = get_row(key)
            if crow is None or crow[0]:  # missing, or short at rest
                crow = self._row(child)
            oid = crow[ROW_TREE_ID]
            if oid != NO_TREE:  # unchanged, or a file with several names written already
                ids[i] = bytes(oid)
            elif S_IFMT(_mode(crow)[0]) == S_IFDIR:
                folders.append((i, child))
            else:
                ids[i] = write_file(child, crow, key)
        self.txn.put_many("inodes", self._rows_written)
        self._rows_written = []
        return plan, folders

    def _folders(self, top: int, row) -> bytes:
        stack = [self._open(top, row)]
        while True:
            plan, folders = stack[-1]
            if folders:
                child = folders[-1][1]
                stack.append(self._open(child, self._row(child)))
                continue
            oid = self._folder(plan)
            stack.pop()
            if not stack:
                return oid
            parent, waiting = stack[-1]
            parent.ids[waiting.pop()[0]] = oid

    def _folder(self, plan: FolderPlan) -> bytes:
        key = vkey(self.vid, plan.ino)
        row = self._row(plan.ino)  # as it is now that its entries are listed
        self._xattrs.reset()
        oid, flag = plan.write(self.txn, self.inodes, row, self._xattrs.under(key), self.refs)
        # This reference belongs to the live row, which now says it equals the object.
        self.txn.put("inodes", key, row_with_tree(row, oid, set_flags=flag, clear_flags=IN_PIECES & ~flag))
        plan.done(self.txn, self.inodes, self.refs)
        return oid

    def _file(self, ino: int, row, key: bytes | None = None) -> bytes:
        key = key or ino_key(self.vid, ino)
        blocks = self._blocks.under(key)  # (index as 8 bytes, chunk id), in order
        data = trees.encode_file_row(ino, row, self._xattrs.under(key), blocks)
        oid = self.refs.add(data, (), [cid for _, cid in blocks], held=1)
        if row_nlink(row) == 1:  # reached once: its row is put with its neighbours'
            self._rows_written.append((key, row_with_tree(row, oid)))
        else:  # the row says it is written before its next name reaches it
            self.txn.put("inodes", key, row_with_tree(row, oid))
        return oid

    def _list(self, ino: int) -> list[tuple[bytes, int]]:
        """Inodes.list_dir of a folder whose rows are its own (not LAZY)."""
        cursor, prefix = self._dirents, vkey(self.vid, ino)
        out = []
        if cursor.set_range(prefix):
            n = len(prefix)
            for key, child in cursor:
                if key[:n] != prefix:
                    break
                out.append((key[n:], read_u64(child)))
        return out

class _Rows:
    """The rows under one key prefix after another, read through one cursor:
    when prefixes come in key order (a folder's files mostly come in inode
    order), the cursor stays where the last prefix's rows ended and no seek
    is needed for the next, nor for a prefix with no rows (most files have
    no xattrs). Valid while nothing writes to the table (reset() then)."""

    def __init__(self, cursor):
        self.cursor = cursor
        self.reset()

    def reset(self) -> None:
        self.prefix = None  # the last prefix read
        self.key = None     # the first key after its rows (None: the table's end)

    def under(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """(key after prefix, value) of the rows whose key starts with prefix."""
        cursor, key = self.cursor, self.key
        last = self.prefix
        if last is None or prefix <= last or (key is not None and key < prefix):
            key = cursor.key() if cursor.set_range(prefix) else None
        out = []
        if key is not None:
            n = len(prefix)
            while key[:n] == prefix:
                out.append((key[n:], cursor.value()))
                if not cursor.next():
                    key = None
                    break
                key = cursor.key()
        self.prefix, self.key = prefix, key
        return out


def write_tree(txn: Txn, inodes: Inodes, top: int = ROOT_INO) -> bytes:
    """Write objects for every changed inode under top; return top's object id."""
    return TreeWriter(txn, inodes).write(top)
