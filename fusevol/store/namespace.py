"""The names of one volume: directory entries and the POSIX rules that change them.

A name is a row in `dirents` (parent|name -> ino) and its back reference in
`parents` (ino|parent|name), so a folder is listed by a prefix scan and a file
finds its folders. Files with several names are marked (`multilinks`: their
names go into snapshots), and an inode whose last name went is marked too
(`orphans`) until its data and row are given back. This module is the only
writer of those four tables.

The rules (each checked before anything is written, so a refused change
leaves the transaction as it was): names are 1..255 bytes without `/`, and
not `.` or `..`; link counts (a folder counts its own `.` and each subfolder's
`..`; a folder has no second name); rename's rules (EEXIST with noreplace,
EISDIR, ENOTDIR, ENOTEMPTY, EINVAL for a folder moved under itself, nothing
done between two names of one inode, RENAME_EXCHANGE); a setgid folder passes
its group down; a change of entries sets the folder's mtime and ctime, a
change of an inode its ctime. The kernel checks permissions and the sticky
bit before it asks (default_permissions), and a rename across volumes never
reaches a volume (EXDEV).
"""

import errno
import stat

from ..errors import FsError
from . import dirchanges
from .env import Txn
from .inoderows import InodeRows, now_ns
from .schema import LAZY, ROOT_INO, Inode, ino_key, ino_pair_key, read_u64, u64

NAME_MAX = 255


# -- the rows of names ----------------------------------------------------------

def link_entry(txn: Txn, vid: int, parent: int, name: bytes, ino: int, note: bool = True) -> None:
    """Add the name parent/name of ino (noted for a folder in pieces unless
    the folder's tree object has it already)."""
    txn.put("dirents", ino_key(vid, parent) + name, u64(ino))
    txn.put("parents", ino_pair_key(vid, ino, parent) + name, b"")
    if note:
        dirchanges.note(txn, vid, parent, name)


def unlink_entry(txn: Txn, vid: int, parent: int, name: bytes, ino: int) -> None:
    txn.delete("dirents", ino_key(vid, parent) + name)
    txn.delete("parents", ino_pair_key(vid, ino, parent) + name)
    dirchanges.note(txn, vid, parent, name)


def drop_entries(txn: Txn, vid: int, parent: int) -> list[int]:
    """Delete a folder's entries and their back references, when its tree
    object holds them (a folder at rest, resttree.py: nothing is noted, no
    count changes); the inodes they named."""
    prefix = ino_key(vid, parent)
    rows = [(bytes(k[len(prefix):]), read_u64(v)) for k, v in txn.scan("dirents", prefix)]
    for name, ino in rows:
        txn.delete("dirents", prefix + name)
        txn.delete("parents", ino_pair_key(vid, ino, parent) + name)
    return [ino for _, ino in rows]


def parents_of(txn: Txn, vid: int, ino: int) -> set[int]:
    """The folders that hold a name of a file (a folder's is in its row)."""
    return {read_u64(k, 16) for k, _ in txn.scan("parents", ino_key(vid, ino))}


def names_in(txn: Txn, vid: int, parent: int, ino: int) -> list[bytes]:
    """The names of ino in folder parent."""
    prefix = ino_pair_key(vid, ino, parent)
    return [bytes(key[len(prefix):]) for key, _ in txn.scan("parents", prefix)]


def adopt_hardlinks(txn: Txn, vid: int, hardlinks: list) -> None:
    """The names of a tree's files with several names ([ino, parent, name as
    hex], as a snapshot lists them): their back references, before the folders
    that hold them become rows."""
    for ino, parent, name_hex in hardlinks:
        txn.put("multilinks", ino_key(vid, ino), b"")
        txn.put("parents", ino_pair_key(vid, ino, parent) + bytes.fromhex(name_hex), b"")


def hardlinks(txn: Txn, vid: int) -> list[list]:
    """Every name of every file with several names, as adopt_hardlinks takes them."""
    out = []
    for key, _ in txn.scan("multilinks", u64(vid)):
        ino = read_u64(key, 8)
        for pkey, _ in txn.scan("parents", ino_key(vid, ino)):
            out.append([ino, read_u64(pkey, 16), bytes(pkey[24:]).hex()])
    return out


def is_orphan(txn: Txn, vid: int, ino: int) -> bool:
    """Whether ino lost its last name and has not been purged yet."""
    return txn.get("orphans", ino_key(vid, ino)) is not None


def clear_orphan(txn: Txn, vid: int, ino: int) -> bool:
    """Unmark ino as an orphan; whether it was one."""
    return txn.delete("orphans", ino_key(vid, ino))


def orphans(txn: Txn, vid: int) -> list[int]:
    return [read_u64(k, 8) for k, _ in txn.scan("orphans", u64(vid))]


def drop_volume(txn: Txn, vid: int) -> None:
    prefix = u64(vid)
    txn.delete_prefix("dirents", prefix)
    txn.delete_prefix("parents", prefix)
    txn.delete_prefix("multilinks", prefix)
    txn.delete_prefix("orphans", prefix)


# -- the rules --------------------------------------------------------------------

def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG)
    if name in (b".", b"..") or b"/" in name or not name:
        raise FsError(errno.EINVAL)


class Namespace:
    """The names of one volume. `tree` (treerows.TreeRows) gives a folder its
    rows before they are read, and stores what changed."""

    def __init__(self, vid: int, rows: InodeRows, tree):
        self.vid = vid
        self.rows = rows
        self.tree = tree

    def resolve(self, txn: Txn, path: str) -> int:
        """The ino of a directory given as a path relative to the volume root."""
        ino = ROOT_INO
        for part in path.split("/"):
            if part:
                ino = self.lookup(txn, ino, part.encode())
        self._dir(txn, ino)
        return ino

    def _dir(self, txn: Txn, ino: int) -> Inode:
        """A folder to change, with its entries as rows."""
        inode = self.rows.get(txn, ino)
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR)
        return self.tree.with_rows(txn, ino, inode)

    def _check_dir(self, txn: Txn, ino: int) -> Inode:
        """_dir for a reader: the inode it returns must not be changed."""
        inode = self.rows.peek(txn, ino)
        if not stat.S_ISDIR(inode.mode):
            raise FsError(errno.ENOTDIR)
        if inode.flags & LAZY:
            return self.tree.with_rows(txn, ino)
        return inode

    def _touch_dir(self, txn: Txn, ino: int, inode: Inode, nlink_delta: int = 0) -> None:
        inode.mtime_ns = inode.ctime_ns = now_ns(txn)
        inode.nlink += nlink_delta
        self.tree.put(txn, ino, inode)

    # -- reading --------------------------------------------------------------

    def lookup(self, txn: Txn, parent: int, name: bytes) -> int:
        ino = self.find(txn, parent, name)
        if ino is None:
            raise FsError(errno.ENOENT)
        return ino

    def find(self, txn: Txn, parent: int, name: bytes) -> int | None:
        """lookup, with None for a name that is not there (a negative lookup
        is common: every new file's name is looked up first)."""
        if len(name) > NAME_MAX:
            # Every operation on a name starts here (or in check_name), so an
            # over-long name is ENAMETOOLONG everywhere, as on other filesystems.
            raise FsError(errno.ENAMETOOLONG)
        if name == b".":
            return parent
        pdir = self._check_dir(txn, parent)
        if name == b"..":
            return pdir.parent
        raw = txn.get("dirents", ino_key(self.vid, parent) + name)
        return read_u64(raw) if raw is not None else None

    def _child(self, txn: Txn, parent: int, name: bytes) -> int:
        """lookup, in a folder its caller has checked already (_dir): the
        entry alone, without reading the folder's row again."""
        if name in (b".", b"..") or len(name) > NAME_MAX:
            return self.lookup(txn, parent, name)
        raw = txn.get("dirents", ino_key(self.vid, parent) + name)
        if raw is None:
            raise FsError(errno.ENOENT)
        return read_u64(raw)

    def list_dir(self, txn: Txn, ino: int) -> list[tuple[bytes, int]]:
        self._check_dir(txn, ino)
        prefix = ino_key(self.vid, ino)
        n = len(prefix)
        return [(bytes(k[n:]), read_u64(v)) for k, v in txn.scan("dirents", prefix)]

    def is_empty_dir(self, txn: Txn, ino: int) -> bool:
        self._check_dir(txn, ino)
        return next(txn.scan("dirents", ino_key(self.vid, ino)), None) is None

    # -- changing ---------------------------------------------------------------

    def create(self, txn: Txn, parent: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0, target: bytes = b"") -> tuple[int, Inode]:
        """Make a new inode of any kind (mode carries the type) under parent/name."""
        check_name(name)
        pdir = self._dir(txn, parent)
        if txn.get("dirents", ino_key(self.vid, parent) + name) is not None:
            raise FsError(errno.EEXIST)
        is_dir = stat.S_ISDIR(mode)
        if pdir.mode & stat.S_ISGID:  # BSD group semantics below a setgid directory
            gid = pdir.gid
            if is_dir:
                mode |= stat.S_ISGID
        now = now_ns(txn)
        ino = self.rows.alloc(txn)
        inode = Inode(mode=mode, uid=uid, gid=gid, nlink=2 if is_dir else 1,
                      size=len(target), atime_ns=now, mtime_ns=now, ctime_ns=now,
                      rdev=rdev, parent=parent if is_dir else 0, target=target)
        self.tree.put(txn, ino, inode)
        link_entry(txn, self.vid, parent, name, ino)
        self._touch_dir(txn, parent, pdir, nlink_delta=1 if is_dir else 0)
        txn.add_vstats(self.vid, inodes=1)
        return ino, inode

    def link(self, txn: Txn, ino: int, new_parent: int, new_name: bytes) -> Inode:
        check_name(new_name)
        inode = self.rows.get(txn, ino)
        if stat.S_ISDIR(inode.mode):
            raise FsError(errno.EPERM)
        pdir = self._dir(txn, new_parent)
        if txn.get("dirents", ino_key(self.vid, new_parent) + new_name) is not None:
            raise FsError(errno.EEXIST)
        if inode.nlink == 0:
            raise FsError(errno.ENOENT)
        inode.nlink += 1
        inode.ctime_ns = now_ns(txn)
        link_entry(txn, self.vid, new_parent, new_name, ino)
        self.tree.put(txn, ino, inode)
        txn.put("multilinks", ino_key(self.vid, ino), b"")
        self._touch_dir(txn, new_parent, pdir)
        return inode

    def _drop_link(self, txn: Txn, parent: int, name: bytes, ino: int, inode: Inode) -> bool:
        """Remove one name of ino; return True when no name is left (the caller
        then purges it now, or once no one has it open)."""
        unlink_entry(txn, self.vid, parent, name, ino)
        if stat.S_ISDIR(inode.mode):
            inode.nlink = 0
        else:
            inode.nlink -= 1
        if inode.nlink <= 1:
            txn.delete("multilinks", ino_key(self.vid, ino))
        inode.ctime_ns = now_ns(txn)
        self.tree.put(txn, ino, inode)
        if inode.nlink == 0:
            txn.put("orphans", ino_key(self.vid, ino), b"")
            return True
        return False

    def unlink(self, txn: Txn, parent: int, name: bytes) -> tuple[int, bool]:
        pdir = self._dir(txn, parent)
        ino = self._child(txn, parent, name)
        inode = self.rows.get(txn, ino)
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
        inode = self.rows.get(txn, ino)
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
            ino = self.rows.get(txn, ino).parent

    def rename(self, txn: Txn, old_parent: int, old_name: bytes, new_parent: int,
               new_name: bytes, noreplace: bool = False, exchange: bool = False) -> int | None:
        """Move old_parent/old_name to new_parent/new_name. Return the ino of a
        replaced inode that lost its last name (to be purged), else None."""
        check_name(new_name)
        src_dir = self._dir(txn, old_parent)
        dst_dir = src_dir if new_parent == old_parent else self._dir(txn, new_parent)
        ino = self.lookup(txn, old_parent, old_name)
        inode = self.rows.get(txn, ino)
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
            tnode = self.rows.get(txn, target)
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
        unlink_entry(txn, self.vid, old_parent, old_name, ino)
        link_entry(txn, self.vid, new_parent, new_name, ino)
        inode.ctime_ns = now_ns(txn)
        if moving_dir and new_parent != old_parent:
            inode.parent = new_parent
            src_dir.nlink -= 1
            dst_dir.nlink += 1
        self.tree.put(txn, ino, inode)
        self._touch_dir(txn, old_parent, src_dir)
        if new_parent != old_parent:
            self._touch_dir(txn, new_parent, dst_dir)
        return purge

    def _exchange(self, txn, old_parent, old_name, ino, inode, new_parent, new_name,
                  target, src_dir, dst_dir) -> None:
        tnode = self.rows.get(txn, target)
        if new_parent != old_parent and stat.S_ISDIR(tnode.mode) and self._is_ancestor(txn, target, old_parent):
            raise FsError(errno.EINVAL)
        unlink_entry(txn, self.vid, old_parent, old_name, ino)
        unlink_entry(txn, self.vid, new_parent, new_name, target)
        link_entry(txn, self.vid, new_parent, new_name, ino)
        link_entry(txn, self.vid, old_parent, old_name, target)
        now = now_ns(txn)
        for node, number, parent_now in ((inode, ino, new_parent), (tnode, target, old_parent)):
            node.ctime_ns = now
            if stat.S_ISDIR(node.mode) and new_parent != old_parent:
                node.parent = parent_now
            self.tree.put(txn, number, node)
        if new_parent != old_parent:
            dirs_moved = stat.S_ISDIR(inode.mode) - stat.S_ISDIR(tnode.mode)
            src_dir.nlink -= dirs_moved
            dst_dir.nlink += dirs_moved
            self._touch_dir(txn, new_parent, dst_dir)
        self._touch_dir(txn, old_parent, src_dir)
        return None
