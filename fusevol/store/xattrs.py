"""Extended attributes of one volume's inodes: a row per name (`xattrs`,
ino|name -> value), its only writer. Names are 1..255 bytes (ERANGE), values
up to 64 KiB (E2BIG), as Linux filesystems keep them; a change sets the
inode's ctime. Which namespaces a volume takes is the FUSE side's rule."""

import errno

from ..errors import FsError
from .env import Txn
from .inoderows import now_ns
from .schema import ino_key, u64

NAME_MAX = 255
VALUE_MAX = 65536


def adopt_rows(txn: Txn, vid: int, ino: int, xattrs) -> None:
    """A cloned inode's xattrs from its tree object ((name, value) pairs)."""
    for name, value in xattrs:
        txn.put("xattrs", ino_key(vid, ino) + name, value)


def drop_rows(txn: Txn, vid: int, ino: int) -> int:
    """Delete an inode's xattrs when its tree object holds them (resttree.py)."""
    return txn.delete_prefix("xattrs", ino_key(vid, ino))


def drop_volume(txn: Txn, vid: int) -> None:
    txn.delete_prefix("xattrs", u64(vid))


class Xattrs:
    """The xattrs of one volume. `tree` (treerows.TreeRows) gives a cloned
    inode its rows before they are read, and stores the changed inode."""

    def __init__(self, vid: int, tree):
        self.vid = vid
        self.tree = tree

    def getxattr(self, txn: Txn, ino: int, name: bytes) -> bytes:
        value = self.find_xattr(txn, ino, name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    def find_xattr(self, txn: Txn, ino: int, name: bytes) -> bytes | None:
        """getxattr, with None for an attribute that is not there (the kernel
        asks for security.capability before a file's first write)."""
        self.tree.check_rows(txn, ino)
        raw = txn.get("xattrs", ino_key(self.vid, ino) + name)
        return bytes(raw) if raw is not None else None

    def setxattr(self, txn: Txn, ino: int, name: bytes, value: bytes) -> None:
        if len(name) > NAME_MAX or not name:
            raise FsError(errno.ERANGE)
        if len(value) > VALUE_MAX:
            raise FsError(errno.E2BIG)
        inode = self.tree.with_rows(txn, ino)
        txn.put("xattrs", ino_key(self.vid, ino) + name, value)
        inode.ctime_ns = now_ns(txn)
        self.tree.put(txn, ino, inode)

    def listxattr(self, txn: Txn, ino: int) -> list[bytes]:
        self.tree.check_rows(txn, ino)
        prefix = ino_key(self.vid, ino)
        return [bytes(k[len(prefix):]) for k, _ in txn.scan("xattrs", prefix)]

    def removexattr(self, txn: Txn, ino: int, name: bytes) -> None:
        inode = self.tree.with_rows(txn, ino)
        if not txn.delete("xattrs", ino_key(self.vid, ino) + name):
            raise FsError(errno.ENODATA)
        inode.ctime_ns = now_ns(txn)
        self.tree.put(txn, ino, inode)

    def drop(self, txn: Txn, ino: int) -> None:
        """Delete every xattr of an inode that is going."""
        txn.delete_prefix("xattrs", ino_key(self.vid, ino))
