"""POSIX filesystem metadata of one volume, as synchronous operations on a transaction.

These helpers check everything before they write, so an operation that fails
leaves the transaction as it found it. Errors are FsError(errno). Timestamps
follow POSIX: changing an inode sets its ctime; changing a directory's entries
sets the directory's mtime and ctime.
"""

import errno
import stat

from ..errors import FsError
from . import blockmap, dirchanges, namespace, trees, workerrows, xattrs
from .blockmap import BlockMap
from .env import Txn
from .inoderows import InodeRows, now_ns
from .namespace import Namespace
from .schema import IN_PIECES, LAZY, NO_TREE, ROOT_INO, TIME_MAX_NS, TIME_MIN_NS, Inode, VolumeStats
from .xattrs import Xattrs


def _clamp_time(ns: int) -> int:
    """A time within what the store keeps (the kernel's 64-bit seconds); the
    kernel cannot ask for more, an imported archive might."""
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
        # row_owner(table, key): the inode a row of this volume belongs to
        self.row_owner = workerrows.row_owner(vid)
        self.rows = rows = InodeRows(vid)
        self.get, self.peek, self.next_ino = rows.get, rows.peek, rows.next_ino
        self.put_row = rows.put_row
        self.names = names = Namespace(vid, rows, self)
        self.resolve, self.lookup, self.find = names.resolve, names.lookup, names.find
        self.list_dir, self.is_empty_dir = names.list_dir, names.is_empty_dir
        self.create, self.link, self.unlink = names.create, names.link, names.unlink
        self.rmdir, self.rename = names.rmdir, names.rename
        # The parts, which ask this object for an inode's rows (with_rows,
        # check_rows) and to store a changed inode (put); each part's methods
        # are handed out as this volume's.
        self.blocks = blocks = BlockMap(vid, block_size, compression, self)
        self.xattrs = attrs = Xattrs(vid, self)
        self.read_block, self.block_ids = blocks.read_block, blocks.block_ids
        self.write_blocks, self.truncate_blocks = blocks.write_blocks, blocks.truncate_blocks
        self.getxattr, self.find_xattr = attrs.getxattr, attrs.find_xattr
        self.setxattr, self.listxattr, self.removexattr = \
            attrs.setxattr, attrs.listxattr, attrs.removexattr

    def usage(self, txn: Txn) -> VolumeStats:
        return txn.vstats(self.vid)

    # -- inodes -------------------------------------------------------------

    def put(self, txn: Txn, ino: int, inode: Inode) -> None:
        """Store a changed inode. It no longer matches the tree object it was
        last written as, nor do the directories above it: clear their tree ids
        so the next snapshot writes them again (and only them).

        The reference to the tree object is the stored row's: `inode` may be a
        copy read before an earlier change of this transaction cleared the row
        (a folder dirtied as the parent of what rename or link just changed),
        and must not release it a second time."""
        if inode.tree_id != NO_TREE:
            stored = self.rows.find(txn, ino)
            if stored is None:  # not stored yet: the copy is all there is
                stored = inode
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

    def _materialize(self, txn: Txn, ino: int, inode: Inode) -> None:
        """Give a cloned inode rows of its own (entries or block map, xattrs)
        from its tree object; it stays equal to that object."""
        obj = trees.get(txn, inode.tree_id)
        xattrs.adopt_rows(txn, self.vid, ino, obj.xattrs)
        blockmap.adopt_rows(txn, self.vid, ino, obj.blocks)
        for name, child_id in trees.entries(txn, obj):
            child = trees.get(txn, child_id)
            if not self.rows.exists(txn, child.ino):
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
            namespace.link_entry(txn, self.vid, ino, name, child.ino, note=False)  # the object has it
        inode.flags &= ~LAZY

    def with_rows(self, txn: Txn, ino: int, inode: Inode | None = None) -> Inode:
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
            parents = namespace.parents_of(txn, self.vid, ino)
        for parent in parents:
            pnode = self.get(txn, parent)
            if pnode.flags & IN_PIECES:  # it records which of its names changed
                for name in namespace.names_in(txn, self.vid, parent, ino):
                    dirchanges.note(txn, self.vid, parent, name)
            if pnode.tree_id != NO_TREE:
                self.put(txn, parent, pnode)

    # -- a volume's rows as a whole (its life: volumes.py, snapshots.py) ---------

    def make_root(self, txn: Txn) -> None:
        """A new volume's rows: its root folder, and its inode counter."""
        now = now_ns(txn)
        root = Inode(mode=0o040755, uid=0, gid=0, nlink=2, atime_ns=now, mtime_ns=now,
                     ctime_ns=now, parent=ROOT_INO)
        self.rows.start(txn, root)
        txn.add_vstats(self.vid, inodes=1)

    def adopt_tree(self, txn: Txn, root: Inode, hardlinks: list, next_ino: int) -> None:
        """Show a tree from a volume with no rows: its root row (LAZY: the rest
        becomes rows as it is reached), the files with several names, and new
        numbers above `next_ino` and any this volume ever used."""
        self.rows.adopt(txn, root, next_ino)
        namespace.adopt_hardlinks(txn, self.vid, hardlinks)

    def drop_all(self, txn: Txn, keep_counter: bool = False) -> None:
        """Delete every row of the volume, letting go of the chunks and tree
        objects they reference. The inode counter may stay, so numbers are never reused."""
        blockmap.drop_volume(txn, self.vid)
        for tree_id in self.rows.tree_ids(txn):
            trees.decref(txn, tree_id)
        dirchanges.drop_volume(txn, self.vid)
        namespace.drop_volume(txn, self.vid)
        xattrs.drop_volume(txn, self.vid)
        self.rows.drop(txn, keep_counter)
        usage = txn.vstats(self.vid)
        txn.add_vstats(self.vid, -usage.logical_bytes, -usage.inodes)

    def check_rows(self, txn: Txn, ino: int) -> None:
        """with_rows for a reader: the inode's rows are present after it."""
        if self.peek(txn, ino).flags & LAZY:
            self.with_rows(txn, ino)

    def free_data(self, txn: Txn, ino: int) -> None:
        """Let go of the data of an inode that has no name left and is not
        open. Its row stays until the kernel forgets the number (it may still
        send a late setattr or getattr for it); see purge."""
        inode = self.rows.find(txn, ino)
        if inode is None:
            return
        if inode.nlink:
            namespace.clear_orphan(txn, self.vid, ino)
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
        self.xattrs.drop(txn, ino)

    def purge(self, txn: Txn, ino: int) -> None:
        """Delete an inode that has no name left, with its data."""
        self.free_data(txn, ino)
        if namespace.is_orphan(txn, self.vid, ino):
            self.rows.delete_row(txn, ino)
            namespace.clear_orphan(txn, self.vid, ino)
            txn.add_vstats(self.vid, inodes=-1)

    def purge_if_orphan(self, txn: Txn, ino: int) -> None:
        """Purge an inode the kernel forgot, if it has no name left."""
        if namespace.is_orphan(txn, self.vid, ino):
            self.purge(txn, ino)

    def orphans(self, txn: Txn) -> list[int]:
        return namespace.orphans(txn, self.vid)

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
                inode.mtime_ns = now_ns(txn)
        set_attrs(inode, now_ns(txn), mode, uid, gid, atime_ns, mtime_ns, ctime_ns)
        self.put(txn, ino, inode)
        return inode
