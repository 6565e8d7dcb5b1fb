"""One volume's filesystem in the store: the operations the FUSE side and the
store's tools call, synchronous, on a transaction.

Each operation is the work of the module that owns its rows:

    inoderows.py   the inode table: rows by number, numbers handed out
    namespace.py   names: entries, link counts, rename, orphans (POSIX rules)
    blockmap.py    a file's block map: write, read, truncate
    xattrs.py      extended attributes
    treerows.py    rows against snapshots' tree objects: the tree ids a change
                   clears, a clone's rows made as they are reached

and Inodes hands each part's methods out as its own (bound once, so a request
pays no extra call). What spans the parts is here: setattr (a size is a
truncation), and an inode's end (its data given back, then its row).

Operations check everything before they write, so one that fails leaves the
transaction as it found it. Errors are FsError(errno). Timestamps follow
POSIX: changing an inode sets its ctime; changing a directory's entries sets
the directory's mtime and ctime.
"""

import errno
import stat

from ..errors import FsError
from . import blockmap, namespace, workerrows, xattrs
from .blockmap import BlockMap
from .env import Txn
from .inoderows import InodeRows, now_ns
from .namespace import Namespace
from .schema import IN_PIECES, NO_TREE, ROOT_INO, TIME_MAX_NS, TIME_MIN_NS, Inode, VolumeStats
from .treerows import TreeRows
from .xattrs import Xattrs


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
    """The inodes, directory entries, block maps and xattrs of one volume."""

    def __init__(self, vid: int, block_size: int, compression: str = "zstd"):
        self.vid = vid
        self.block_size = block_size
        self.compression = compression
        self.rows = rows = InodeRows(vid)
        self.tree = tree = TreeRows(vid, rows)
        self.names = names = Namespace(vid, rows, tree)
        self.blocks = blocks = BlockMap(vid, block_size, compression, tree)
        self.xattrs = attrs = Xattrs(vid, tree)
        # row_owner(table, key): the inode a row of this volume belongs to (fs/cache.py)
        self.row_owner = workerrows.row_owner(vid)
        # Each part's operations, as this volume's.
        self.get, self.peek, self.next_ino = rows.get, rows.peek, rows.next_ino
        self.counter_row = ("meta", rows._counter)  # the row of the next inode number
        self.inode_row = rows.row
        self.put = tree.put
        self.resolve, self.lookup, self.find = names.resolve, names.lookup, names.find
        self.list_dir, self.is_empty_dir = names.list_dir, names.is_empty_dir
        self.create, self.link, self.unlink = names.create, names.link, names.unlink
        self.rmdir, self.rename = names.rmdir, names.rename
        self.read_block, self.block_ids = blocks.read_block, blocks.block_ids
        self.write_blocks, self.truncate_blocks = blocks.write_blocks, blocks.truncate_blocks
        self.getxattr, self.find_xattr = attrs.getxattr, attrs.find_xattr
        self.setxattr, self.listxattr, self.removexattr = \
            attrs.setxattr, attrs.listxattr, attrs.removexattr

    def usage(self, txn: Txn) -> VolumeStats:
        return txn.vstats(self.vid)

    def setattr(self, txn: Txn, ino: int, *, mode=None, uid=None, gid=None, size=None,
                atime_ns=None, mtime_ns=None, ctime_ns=None) -> Inode:
        inode = self.rows.get(txn, ino)
        if size is not None:
            if not stat.S_ISREG(inode.mode):
                raise FsError(errno.EISDIR if stat.S_ISDIR(inode.mode) else errno.EINVAL)
            # Drop blocks past size even when the size is stored already: a flush
            # of buffered writes stores the new size but keeps the old blocks.
            changed = size != inode.size
            self.blocks.truncate_blocks(txn, ino, size)
            inode = self.rows.get(txn, ino)  # with the block accounting truncate updated
            inode.size = size
            if changed and mtime_ns is None:
                inode.mtime_ns = now_ns(txn)
        set_attrs(inode, now_ns(txn), mode, uid, gid, atime_ns, mtime_ns, ctime_ns)
        self.tree.put(txn, ino, inode)
        return inode

    def set_times(self, txn: Txn, ino: int, atime_ns=None, mtime_ns=None,
                  ctime_ns=None) -> Inode:
        """setattr of times alone, to read only (as `peek`): what the kernel
        sends after writes to a file whose mtime and ctime its writeback cache
        keeps. The stored record's times are rewritten as they lie, without
        decoding and encoding the rest, when that is all that changes: no
        tree id to let go of (treerows.py) and times that fit its fixed part."""
        ctime_ns = _clamp_time(ctime_ns) if ctime_ns is not None else now_ns(txn)
        if atime_ns is not None:
            atime_ns = _clamp_time(atime_ns)
        if mtime_ns is not None:
            mtime_ns = _clamp_time(mtime_ns)
        if not self.rows.set_times(txn, ino, atime_ns, mtime_ns, ctime_ns):
            return self.setattr(txn, ino, atime_ns=atime_ns, mtime_ns=mtime_ns, ctime_ns=ctime_ns)
        return self.rows.peek(txn, ino)

    # -- an inode's end: its data once unnamed and closed, its row once forgotten --

    def free_data(self, txn: Txn, ino: int, purging: bool = False) -> bool:
        """Let go of the data of an inode that has no name left and is not
        open. Its row stays until the kernel forgets the number (it may still
        send a late setattr or getattr for it); see purge. With `purging`,
        its orphan mark goes too: whether it had one (purge then deletes the
        row, which is not written again on the way)."""
        inode = self.rows.find(txn, ino)
        if inode is None:
            return purging and namespace.clear_orphan(txn, self.vid, ino)
        if inode.nlink:
            namespace.clear_orphan(txn, self.vid, ino)
            return False
        marked = purging and namespace.clear_orphan(txn, self.vid, ino)
        if inode.tree_id != NO_TREE or inode.flags & IN_PIECES:  # it holds tree objects
            self.tree.release(txn, ino, inode)  # (stores `inode` as it leaves it)
        if stat.S_ISREG(inode.mode):
            self.blocks.truncate_blocks(txn, ino, 0, inode, keep_row=not marked)
        self.xattrs.drop(txn, ino)
        return marked

    def purge(self, txn: Txn, ino: int) -> None:
        """Delete an inode that has no name left, with its data."""
        if self.free_data(txn, ino, purging=True):
            self.rows.delete_row(txn, ino)
            txn.add_vstats(self.vid, inodes=-1)

    def purge_if_orphan(self, txn: Txn, ino: int) -> None:
        """Purge an inode the kernel forgot, if it has no name left."""
        if namespace.is_orphan(txn, self.vid, ino):
            self.purge(txn, ino)

    def orphans(self, txn: Txn) -> list[int]:
        return namespace.orphans(txn, self.vid)

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
        self.tree.drop(txn)
        namespace.drop_volume(txn, self.vid)
        xattrs.drop_volume(txn, self.vid)
        self.rows.drop(txn, keep_counter)
        usage = txn.vstats(self.vid)
        txn.add_vstats(self.vid, -usage.logical_bytes, -usage.inodes)
