"""POSIX filesystem metadata of one volume, as synchronous operations on a transaction.

These helpers check everything before they write, so an operation that fails
leaves the transaction as it found it. Errors are FsError(errno). Timestamps
follow POSIX: changing an inode sets its ctime; changing a directory's entries
sets the directory's mtime and ctime.
"""

import errno
import stat
import time

from .. import native
from ..errors import FsError
from . import chunks, dirchanges, trees
from .env import Txn
from .schema import (IN_PIECES, LAZY, NO_TREE, ROOT_INO, TIME_MAX_NS, TIME_MIN_NS, Inode, VolumeStats,
                     ino_key, ino_pair_key, read_ino_key, read_u64, u64)

NAME_MAX = 255
# Every table whose rows belong to one volume (keys start with its vid).
_TABLES_BY_VID = ("blocks", "inodes", "dirents", "parents", "xattrs", "orphans", "multilinks",
                  "dirchanges")


def _now(txn: Txn) -> int:
    """The time of the operation running in txn: fixed for the operation when
    it is run again (fs/speculate.py), so the second run writes the same times."""
    return txn.now_ns or time.time_ns()


def _clamp_time(ns: int) -> int:
    """A time within what the store keeps (the kernel's 64-bit seconds); the
    kernel cannot ask for more, an imported archive might."""
    if TIME_MIN_NS <= ns <= TIME_MAX_NS:  # always, from the kernel: no min/max calls
        return ns
    return min(max(ns, TIME_MIN_NS), TIME_MAX_NS)


def set_attrs(inode: Inode, now_ns: int, mode=None, uid=None, gid=None, atime_ns=None,
              mtime_ns=None, ctime_ns=None) -> Inode:
    """Apply setattr's fields (all but the size) to inode, its ctime now_ns unless given."""
    if mode is not None:
        inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(mode)
    if uid is not None:
        inode.uid = uid
    if gid is not None:
        inode.gid = gid
    if atime_ns is not None:
        inode.atime_ns = _clamp_time(atime_ns)
    if mtime_ns is not None:
        inode.mtime_ns = _clamp_time(mtime_ns)
    inode.ctime_ns = _clamp_time(ctime_ns) if ctime_ns is not None else now_ns
    return inode


class Inodes:
    """The inode table, directory entries, block maps and xattrs of one volume."""

    def __init__(self, vid: int, block_size: int, compression: str = "zstd"):
        self.vid = vid
        self.block_size = block_size
        self.compression = compression

    def usage(self, txn: Txn) -> VolumeStats:
        return txn.vstats(self.vid)

    def resolve(self, txn: Txn, path: str) -> int:
        """The ino of a directory given as a path relative to the volume root."""
        ino = ROOT_INO
        for part in path.split("/"):
            if part:
                ino = self.lookup(txn, ino, part.encode())
        self._dir(txn, ino)
        return ino

    # -- inodes -------------------------------------------------------------

    def get(self, txn: Txn, ino: int) -> Inode:
        raw = txn.get("inodes", ino_key(self.vid, ino))
        if raw is None:
            raise FsError(errno.ENOENT)
        return Inode.unpack(raw)

    def peek(self, txn: Txn, ino: int) -> Inode:
        """The inode, to read only: it may be the worker's decoded copy of the
        row (fs/cache.py), shared by every reader, so it must not be changed."""
        inode = txn.peek_inode(ino_key(self.vid, ino))
        if inode is None:
            raise FsError(errno.ENOENT)
        return inode

    def put(self, txn: Txn, ino: int, inode: Inode) -> None:
        """Store a changed inode. It no longer matches the tree object it was
        last written as, nor do the directories above it: clear their tree ids
        so the next snapshot writes them again (and only them).

        The reference to the tree object is the stored row's: `inode` may be a
        copy read before an earlier change of this transaction cleared the row
        (a folder dirtied as the parent of what rename or link just changed),
        and must not release it a second time."""
        if inode.tree_id != NO_TREE:
            raw = txn.get("inodes", ino_key(self.vid, ino))
            stored = Inode.unpack(raw) if raw is not None else inode
            if stored.tree_id == NO_TREE:  # released and materialized already
                inode.tree_id = NO_TREE
                inode.flags &= ~LAZY
            else:
                inode.tree_id = stored.tree_id
                if stored.flags & LAZY:
                    self._materialize(txn, ino, inode)
                else:
                    inode.flags &= ~LAZY
                old, inode.tree_id = inode.tree_id, NO_TREE
                if stored.flags & IN_PIECES:
                    # The next snapshot starts from that object: its reference moves.
                    dirchanges.keep_base(txn, self.vid, ino, old)
                else:
                    trees.decref(txn, old)
                self._dirty_parents(txn, ino, inode)
        self.put_row(txn, ino, inode)

    def put_row(self, txn: Txn, ino: int, inode: Inode) -> None:
        """Store an inode as it is (its tree id included)."""
        txn.put("inodes", ino_key(self.vid, ino), inode.pack())

    def _materialize(self, txn: Txn, ino: int, inode: Inode) -> None:
        """Give a cloned inode rows of its own (entries or block map, xattrs)
        from its tree object; it stays equal to that object."""
        obj = trees.get(txn, inode.tree_id)
        for name, value in obj.xattrs:
            txn.put("xattrs", ino_key(self.vid, ino) + name, value)
        for index, cid in obj.blocks:
            chunks.incref(txn, cid)
            txn.put("blocks", ino_pair_key(self.vid, ino, index), cid)
        for name, child_id in trees.entries(txn, obj):
            child = trees.get(txn, child_id)
            if txn.get("inodes", ino_key(self.vid, child.ino)) is None:
                node = child.inode
                node.tree_id = child_id
                if stat.S_ISDIR(node.mode):
                    node.parent = ino
                if stat.S_ISDIR(node.mode) or child.blocks or child.xattrs:
                    node.flags |= LAZY
                if child.pieces is not None:
                    node.flags |= IN_PIECES
                trees.incref(txn, child_id)
                self.put_row(txn, child.ino, node)
            self._link_entry(txn, ino, name, child.ino, note=False)  # the object has it
        inode.flags &= ~LAZY

    def _rows(self, txn: Txn, ino: int, inode: Inode | None = None) -> Inode:
        """The inode, with its entries/blocks/xattrs present as rows."""
        inode = inode or self.get(txn, ino)
        if inode.flags & LAZY:
            self._materialize(txn, ino, inode)
            self.put_row(txn, ino, inode)
        return inode

    def _dirty_parents(self, txn: Txn, ino: int, inode: Inode) -> None:
        if stat.S_ISDIR(inode.mode):
            parents = [] if ino == ROOT_INO else [inode.parent]
        else:
            prefix = ino_key(self.vid, ino)
            parents = {read_u64(k, 16) for k, _ in txn.scan("parents", prefix)}
        for parent in parents:
            pnode = self.get(txn, parent)
            if pnode.flags & IN_PIECES:  # it records which of its names changed
                prefix = ino_pair_key(self.vid, ino, parent)
                for key, _ in txn.scan("parents", prefix):
                    dirchanges.note(txn, self.vid, parent, bytes(key[len(prefix):]))
            if pnode.tree_id != NO_TREE:
                self.put(txn, parent, pnode)

    def _alloc_ino(self, txn: Txn) -> int:
        key = b"next_ino" + u64(self.vid)
        ino = read_u64(txn.get("meta", key))
        txn.put("meta", key, u64(ino + 1))
        return ino

    def next_ino(self, txn: Txn) -> int:
        """The number the next new inode of this volume gets."""
        return read_u64(txn.get("meta", b"next_ino" + u64(self.vid)))

    # -- a volume's rows as a whole (its life: volumes.py, snapshots.py) ---------

    def make_root(self, txn: Txn) -> None:
        """A new volume's rows: its root folder, and its inode counter."""
        now = _now(txn)
        root = Inode(mode=0o040755, uid=0, gid=0, nlink=2, atime_ns=now, mtime_ns=now,
                     ctime_ns=now, parent=ROOT_INO)
        txn.put("inodes", ino_key(self.vid, ROOT_INO), root.pack())
        txn.put("meta", b"next_ino" + u64(self.vid), u64(ROOT_INO + 1))
        txn.add_vstats(self.vid, inodes=1)

    def adopt_tree(self, txn: Txn, root: Inode, hardlinks: list, next_ino: int) -> None:
        """Show a tree from a volume with no rows: its root row (LAZY: the rest
        becomes rows as it is reached), the files with several names, and new
        numbers above `next_ino` and any this volume ever used."""
        txn.put("inodes", ino_key(self.vid, ROOT_INO), root.pack())
        for ino, parent, name_hex in hardlinks:
            txn.put("multilinks", ino_key(self.vid, ino), b"")
            txn.put("parents", ino_pair_key(self.vid, ino, parent) + bytes.fromhex(name_hex), b"")
        current = txn.get("meta", b"next_ino" + u64(self.vid))
        txn.put("meta", b"next_ino" + u64(self.vid),
                u64(max(next_ino, read_u64(current) if current else 0)))

    def drop_all(self, txn: Txn, keep_counter: bool = False) -> None:
        """Delete every row of the volume, letting go of the chunks and tree
        objects they reference. The inode counter may stay, so numbers are never reused."""
        prefix = u64(self.vid)
        for _, cid in txn.scan("blocks", prefix):
            chunks.decref(txn, bytes(cid))
        for _, raw in txn.scan("inodes", prefix):
            tree_id = Inode.unpack(raw).tree_id
            if tree_id != NO_TREE:
                trees.decref(txn, tree_id)
        for key, base in txn.scan("dirchanges", prefix):
            if len(key) == 16:  # a folder's base object (other rows are names)
                trees.decref(txn, bytes(base))
        for table in _TABLES_BY_VID:
            txn.delete_prefix(table, prefix)
        usage = txn.vstats(self.vid)
        txn.add_vstats(self.vid, -usage.logical_bytes, -usage.inodes)
        if not keep_counter:
            txn.delete("meta", b"next_ino" + prefix)

    def inode_key(self, ino: int) -> bytes:
        """The key of inode ino's row (for a worker's row cache)."""
        return ino_key(self.vid, ino)

    def row_owner(self, table: str, key: bytes) -> int | None:
        """The inode a row of this volume belongs to (a folder's entries and
        change notes belong to the folder); None for store-wide rows."""
        if table == "meta" or len(key) < 16:
            return None
        vid, ino = read_ino_key(key)
        return ino if vid == self.vid else None

    def _dir(self, txn: Txn, ino: int) -> Inode:
        inode = self.get(txn, ino)
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR)
        return self._rows(txn, ino, inode)

    def _check_dir(self, txn: Txn, ino: int) -> Inode:
        """_dir for a reader: the inode it returns must not be changed."""
        inode = self.peek(txn, ino)
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR)
        if inode.flags & LAZY:
            return self._rows(txn, ino)
        return inode

    def _check_rows(self, txn: Txn, ino: int) -> None:
        """_rows for a reader: the inode's rows are present after it."""
        if self.peek(txn, ino).flags & LAZY:
            self._rows(txn, ino)

    def _touch_dir(self, txn: Txn, ino: int, inode: Inode, nlink_delta: int = 0) -> None:
        inode.mtime_ns = inode.ctime_ns = _now(txn)
        inode.nlink += nlink_delta
        self.put(txn, ino, inode)

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if name in (b".", b"..") or b"/" in name or not name:
            raise FsError(errno.EINVAL)

    # -- directory entries --------------------------------------------------

    def lookup(self, txn: Txn, parent: int, name: bytes) -> int:
        ino = self.find(txn, parent, name)
        if ino is None:
            raise FsError(errno.ENOENT)
        return ino

    def find(self, txn: Txn, parent: int, name: bytes) -> int | None:
        """lookup, with None for a name that is not there (a negative lookup
        is common: every new file's name is looked up first)."""
        if len(name) > NAME_MAX:
            # Every operation on a name starts here (or in _check_name), so an
            # over-long name is ENAMETOOLONG everywhere, as on other filesystems.
            raise FsError(errno.ENAMETOOLONG)
        if name == b".":
            return parent
        pdir = self._check_dir(txn, parent)
        if name == b"..":
            return pdir.parent
        raw = txn.get("dirents", ino_key(self.vid, parent) + name)
        return read_u64(raw) if raw is not None else None

    def list_dir(self, txn: Txn, ino: int) -> list[tuple[bytes, int]]:
        self._check_dir(txn, ino)
        prefix = ino_key(self.vid, ino)
        n = len(prefix)
        return [(bytes(k[n:]), read_u64(v)) for k, v in txn.scan("dirents", prefix)]

    def is_empty_dir(self, txn: Txn, ino: int) -> bool:
        self._check_dir(txn, ino)
        return next(txn.scan("dirents", ino_key(self.vid, ino)), None) is None

    def _link_entry(self, txn: Txn, parent: int, name: bytes, ino: int, note: bool = True) -> None:
        txn.put("dirents", ino_key(self.vid, parent) + name, u64(ino))
        txn.put("parents", ino_pair_key(self.vid, ino, parent) + name, b"")
        if note:
            dirchanges.note(txn, self.vid, parent, name)

    def _unlink_entry(self, txn: Txn, parent: int, name: bytes, ino: int) -> None:
        txn.delete("dirents", ino_key(self.vid, parent) + name)
        txn.delete("parents", ino_pair_key(self.vid, ino, parent) + name)
        dirchanges.note(txn, self.vid, parent, name)

    def create(self, txn: Txn, parent: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0, target: bytes = b"") -> tuple[int, Inode]:
        """Make a new inode of any kind (mode carries the type) under parent/name."""
        self._check_name(name)
        pdir = self._dir(txn, parent)
        if txn.get("dirents", ino_key(self.vid, parent) + name) is not None:
            raise FsError(errno.EEXIST)
        is_dir = stat.S_ISDIR(mode)
        if pdir.mode & stat.S_ISGID:  # BSD group semantics below a setgid directory
            gid = pdir.gid
            if is_dir:
                mode |= stat.S_ISGID
        now = _now(txn)
        ino = self._alloc_ino(txn)
        inode = Inode(mode=mode, uid=uid, gid=gid, nlink=2 if is_dir else 1,
                      size=len(target), atime_ns=now, mtime_ns=now, ctime_ns=now,
                      rdev=rdev, parent=parent if is_dir else 0, target=target)
        self.put(txn, ino, inode)
        self._link_entry(txn, parent, name, ino)
        self._touch_dir(txn, parent, pdir, nlink_delta=1 if is_dir else 0)
        txn.add_vstats(self.vid, inodes=1)
        return ino, inode

    def link(self, txn: Txn, ino: int, new_parent: int, new_name: bytes) -> Inode:
        self._check_name(new_name)
        inode = self.get(txn, ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EPERM)
        pdir = self._dir(txn, new_parent)
        if txn.get("dirents", ino_key(self.vid, new_parent) + new_name) is not None:
            raise FsError(errno.EEXIST)
        if inode.nlink == 0:
            raise FsError(errno.ENOENT)
        inode.nlink += 1
        inode.ctime_ns = _now(txn)
        self._link_entry(txn, new_parent, new_name, ino)
        self.put(txn, ino, inode)
        txn.put("multilinks", ino_key(self.vid, ino), b"")
        self._touch_dir(txn, new_parent, pdir)
        return inode

    def _drop_link(self, txn: Txn, parent: int, name: bytes, ino: int, inode: Inode) -> bool:
        """Remove one name of ino; return True when no name is left (the caller
        then purges it now, or once no one has it open)."""
        self._unlink_entry(txn, parent, name, ino)
        if stat.S_ISDIR(inode.mode):
            inode.nlink = 0
        else:
            inode.nlink -= 1
        if inode.nlink <= 1:
            txn.delete("multilinks", ino_key(self.vid, ino))
        inode.ctime_ns = _now(txn)
        self.put(txn, ino, inode)
        if inode.nlink == 0:
            txn.put("orphans", ino_key(self.vid, ino), b"")
            return True
        return False

    def unlink(self, txn: Txn, parent: int, name: bytes) -> tuple[int, bool]:
        pdir = self._dir(txn, parent)
        ino = self.lookup(txn, parent, name)
        inode = self.get(txn, ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EISDIR)
        gone = self._drop_link(txn, parent, name, ino, inode)
        self._touch_dir(txn, parent, pdir)
        return ino, gone

    def rmdir(self, txn: Txn, parent: int, name: bytes) -> tuple[int, bool]:
        if name == b".":
            raise FsError(errno.EINVAL)
        if name == b"..":
            raise FsError(errno.ENOTEMPTY)
        pdir = self._dir(txn, parent)
        ino = self.lookup(txn, parent, name)
        inode = self.get(txn, ino)
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR)
        if not self.is_empty_dir(txn, ino):
            raise FsError(errno.ENOTEMPTY)
        gone = self._drop_link(txn, parent, name, ino, inode)
        self._touch_dir(txn, parent, pdir, nlink_delta=-1)
        return ino, gone

    def _is_ancestor(self, txn: Txn, ancestor: int, ino: int) -> bool:
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            ino = self.get(txn, ino).parent

    def rename(self, txn: Txn, old_parent: int, old_name: bytes, new_parent: int,
               new_name: bytes, noreplace: bool = False, exchange: bool = False) -> int | None:
        """Move old_parent/old_name to new_parent/new_name. Return the ino of a
        replaced inode that lost its last name (to be purged), else None."""
        self._check_name(new_name)
        src_dir = self._dir(txn, old_parent)
        dst_dir = src_dir if new_parent == old_parent else self._dir(txn, new_parent)
        ino = self.lookup(txn, old_parent, old_name)
        inode = self.get(txn, ino)
        raw = txn.get("dirents", ino_key(self.vid, new_parent) + new_name)
        target = read_u64(raw) if raw is not None else None
        moving_dir = stat.S_ISDIR(inode.mode)
        if noreplace and target is not None:
            raise FsError(errno.EEXIST)
        if exchange and target is None:
            raise FsError(errno.ENOENT)
        if target == ino:
            return None  # two names of one inode: POSIX says do nothing
        if moving_dir and new_parent != old_parent and self._is_ancestor(txn, ino, new_parent):
            raise FsError(errno.EINVAL)
        if exchange:
            return self._exchange(txn, old_parent, old_name, ino, inode, new_parent, new_name,
                                  target, src_dir, dst_dir)
        purge = None
        if target is not None:
            tnode = self.get(txn, target)
            t_is_dir = stat.S_ISDIR(tnode.mode)
            if moving_dir and not t_is_dir:
                raise FsError(errno.ENOTDIR)
            if t_is_dir and not moving_dir:
                raise FsError(errno.EISDIR)
            if t_is_dir and not self.is_empty_dir(txn, target):
                raise FsError(errno.ENOTEMPTY)
            if self._drop_link(txn, new_parent, new_name, target, tnode):
                purge = target
            if t_is_dir:
                dst_dir.nlink -= 1
        self._unlink_entry(txn, old_parent, old_name, ino)
        self._link_entry(txn, new_parent, new_name, ino)
        inode.ctime_ns = _now(txn)
        if moving_dir and new_parent != old_parent:
            inode.parent = new_parent
            src_dir.nlink -= 1
            dst_dir.nlink += 1
        self.put(txn, ino, inode)
        self._touch_dir(txn, old_parent, src_dir)
        if new_parent != old_parent:
            self._touch_dir(txn, new_parent, dst_dir)
        return purge

    def _exchange(self, txn, old_parent, old_name, ino, inode, new_parent, new_name,
                  target, src_dir, dst_dir) -> None:
        tnode = self.get(txn, target)
        if new_parent != old_parent and stat.S_ISDIR(tnode.mode) and self._is_ancestor(txn, target, old_parent):
            raise FsError(errno.EINVAL)
        self._unlink_entry(txn, old_parent, old_name, ino)
        self._unlink_entry(txn, new_parent, new_name, target)
        self._link_entry(txn, new_parent, new_name, ino)
        self._link_entry(txn, old_parent, old_name, target)
        now = _now(txn)
        for node, number, parent_now in ((inode, ino, new_parent), (tnode, target, old_parent)):
            node.ctime_ns = now
            if stat.S_ISDIR(node.mode) and new_parent != old_parent:
                node.parent = parent_now
            self.put(txn, number, node)
        if new_parent != old_parent:
            dirs_moved = stat.S_ISDIR(inode.mode) - stat.S_ISDIR(tnode.mode)
            src_dir.nlink -= dirs_moved
            dst_dir.nlink += dirs_moved
            self._touch_dir(txn, new_parent, dst_dir)
        self._touch_dir(txn, old_parent, src_dir)
        return None

    def free_data(self, txn: Txn, ino: int) -> None:
        """Let go of the data of an inode that has no name left and is not
        open. Its row stays until the kernel forgets the number (it may still
        send a late setattr or getattr for it); see purge."""
        try:
            inode = self.get(txn, ino)
        except FsError:
            return
        if inode.nlink:
            txn.delete("orphans", ino_key(self.vid, ino))
            return
        if inode.tree_id != NO_TREE:
            trees.decref(txn, inode.tree_id)
            inode.tree_id = NO_TREE
            inode.flags &= ~LAZY  # a lazy inode has no rows of its own to drop
            self.put_row(txn, ino, inode)
        if inode.flags & IN_PIECES:
            dirchanges.drop(txn, self.vid, ino)
            inode.flags &= ~IN_PIECES
            self.put_row(txn, ino, inode)
        if stat.S_ISREG(inode.mode):
            self.truncate_blocks(txn, ino, 0)
        txn.delete_prefix("xattrs", ino_key(self.vid, ino))

    def purge(self, txn: Txn, ino: int) -> None:
        """Delete an inode that has no name left, with its data."""
        self.free_data(txn, ino)
        if txn.get("orphans", ino_key(self.vid, ino)) is not None:
            txn.delete("inodes", ino_key(self.vid, ino))
            txn.delete("orphans", ino_key(self.vid, ino))
            txn.add_vstats(self.vid, inodes=-1)

    def purge_if_orphan(self, txn: Txn, ino: int) -> None:
        """Purge an inode the kernel forgot, if it has no name left."""
        if txn.get("orphans", ino_key(self.vid, ino)) is not None:
            self.purge(txn, ino)

    def orphans(self, txn: Txn) -> list[int]:
        prefix = u64(self.vid)
        return [read_u64(k, 8) for k, _ in txn.scan("orphans", prefix)]

    # -- attributes ---------------------------------------------------------

    def setattr(self, txn: Txn, ino: int, *, mode=None, uid=None, gid=None, size=None,
                atime_ns=None, mtime_ns=None, ctime_ns=None) -> Inode:
        inode = self.get(txn, ino)
        if size is not None:
            if not stat.S_ISREG(inode.mode):
                raise FsError(errno.EISDIR if stat.S_ISDIR(inode.mode) else errno.EINVAL)
            # Drop blocks past size even when the size is stored already: a flush
            # of buffered writes stores the new size but keeps the old blocks.
            changed = size != inode.size
            self.truncate_blocks(txn, ino, size)
            inode = self.get(txn, ino)  # with the block accounting truncate updated
            inode.size = size
            if changed and mtime_ns is None:
                inode.mtime_ns = _now(txn)
        set_attrs(inode, _now(txn), mode, uid, gid, atime_ns, mtime_ns, ctime_ns)
        self.put(txn, ino, inode)
        return inode

    # -- file content ---------------------------------------------------------

    def read_block(self, txn: Txn, ino: int, index: int) -> bytes | None:
        """The stored content of one block (None for a hole); it may be
        shorter than a block at the end of the file."""
        self._check_rows(txn, ino)
        cid = txn.get("blocks", ino_pair_key(self.vid, ino, index))
        if cid is None:
            return None
        return chunks.read(txn, bytes(cid))

    def block_ids(self, txn: Txn, ino: int, indexes: list[int]) -> dict[int, bytes | None]:
        """The chunk id of each block (None for a hole)."""
        self._check_rows(txn, ino)
        out = {}
        for index in indexes:
            cid = txn.get("blocks", ino_pair_key(self.vid, ino, index))
            out[index] = bytes(cid) if cid is not None else None
        return out

    def write_blocks(self, txn: Txn, ino: int, blocks: list[tuple[int, bytes]], size: int,
                     mtime_ns: int | None = None, ctime_ns: int | None = None,
                     keep_times: bool = False, prepared: dict | None = None) -> int:
        """Replace whole blocks of a file and set its size and times (now,
        unless given; kept as they are with keep_times).

        Each block's data ends at the file's end (or is a full block); an
        all-zero block becomes a hole and costs no space. `prepared` holds the
        blocks already hashed and encoded (chunks.prepare_blocks). Returns the
        change in the volume's stored bytes.
        """
        inode = self._rows(txn, ino)
        txn.check_space(sum(len(data) for _, data in blocks))
        delta = 0
        # What each block replaces, read before any hashing: a flush worked out
        # ahead (fs/speculate.py) cannot read chunk lengths and hands over to
        # the store thread before it has hashed anything.
        olds = []
        for index, _ in blocks:
            key = ino_pair_key(self.vid, ino, index)
            old = txn.get("blocks", key)
            old = bytes(old) if old is not None else None
            olds.append((key, old, chunks.raw_length(txn, old) if old is not None else 0))
        for (index, data), (key, old, old_length) in zip(blocks, olds):
            ready = prepared.get(index, False) if prepared is not None else False
            if ready is False:  # not prepared: hash here (and encode if new)
                ready = None if native.is_zero(data) else (chunks.chunk_id(data), None)
            if ready is None:
                new = None
            else:
                new, payload = ready
                if new == old:
                    continue
                txn.defer(chunks.add_ref, data, self.compression, new, payload)
                txn.put("blocks", key, new)
                delta += len(data)
            if old is not None:
                delta -= old_length
                chunks.decref(txn, old)
                if new is None:
                    txn.delete("blocks", key)
        inode.size = size
        inode.data_bytes += delta
        if not keep_times:
            now = _now(txn)
            inode.mtime_ns = mtime_ns or now
            inode.ctime_ns = ctime_ns or now
        self.put(txn, ino, inode)
        if delta:
            txn.add_vstats(self.vid, logical_bytes=delta)
        return delta

    def truncate_blocks(self, txn: Txn, ino: int, size: int) -> None:
        """Drop the data beyond size (the tail of the last block included)."""
        self._rows(txn, ino)
        bs = self.block_size
        first_gone = -(-size // bs)
        prefix = ino_key(self.vid, ino)
        delta = 0
        gone = list(txn.scan("blocks", prefix, start=ino_pair_key(self.vid, ino, first_gone)))
        for key, cid in gone:
            cid = bytes(cid)
            delta -= chunks.raw_length(txn, cid)
            chunks.decref(txn, cid)
            txn.delete("blocks", bytes(key))
        if delta:
            txn.add_vstats(self.vid, logical_bytes=delta)
            inode = self._rows(txn, ino)
            inode.data_bytes += delta
            self.put(txn, ino, inode)
        if size % bs:
            last = size // bs
            data = self.read_block(txn, ino, last)
            if data is not None and len(data) > size % bs:
                inode = self._rows(txn, ino)
                self.write_blocks(txn, ino, [(last, data[: size % bs])], inode.size,
                                  inode.mtime_ns, inode.ctime_ns)

    def getxattr(self, txn: Txn, ino: int, name: bytes) -> bytes:
        value = self.find_xattr(txn, ino, name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    def find_xattr(self, txn: Txn, ino: int, name: bytes) -> bytes | None:
        """getxattr, with None for an attribute that is not there (the kernel
        asks for security.capability before a file's first write)."""
        self._check_rows(txn, ino)
        raw = txn.get("xattrs", ino_key(self.vid, ino) + name)
        return bytes(raw) if raw is not None else None

    def setxattr(self, txn: Txn, ino: int, name: bytes, value: bytes) -> None:
        if len(name) > 255 or not name:
            raise FsError(errno.ERANGE)
        if len(value) > 65536:
            raise FsError(errno.E2BIG)
        inode = self._rows(txn, ino)
        txn.put("xattrs", ino_key(self.vid, ino) + name, value)
        inode.ctime_ns = _now(txn)
        self.put(txn, ino, inode)

    def listxattr(self, txn: Txn, ino: int) -> list[bytes]:
        self._check_rows(txn, ino)
        prefix = ino_key(self.vid, ino)
        return [bytes(k[len(prefix):]) for k, _ in txn.scan("xattrs", prefix)]

    def removexattr(self, txn: Txn, ino: int, name: bytes) -> None:
        inode = self._rows(txn, ino)
        if not txn.delete("xattrs", ino_key(self.vid, ino) + name):
            raise FsError(errno.ENODATA)
        inode.ctime_ns = _now(txn)
        self.put(txn, ino, inode)
