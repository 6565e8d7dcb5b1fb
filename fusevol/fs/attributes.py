"""The attributes of an inode as the kernel gets them (pyfuse3.EntryAttributes).

Built for about 5 answers a small file (create, the setattrs, getattr, lookup),
each 14 fields: in C when it was built (native/_fusevol_rows.c AttrBuilder),
with AttrBuilderPy as its twin, which also takes what the C leaves out (a
size or mode that is not a u64 integer).
"""

import stat

import pyfuse3

from .. import native
from .. import store


class AttrBuilderPy:
    def __init__(self, factory, entry_timeout: float, attr_timeout: float, block_size: int,
                 codec=None, slow=None):
        self.factory = factory
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.block_size = block_size

    def build(self, kino: int, inode, size: int, data_bytes: int):
        """The attributes of `inode` answered as inode number `kino`, with the
        size and data bytes given (an open file's: its buffers count)."""
        mode = inode.mode
        # Fields left out are pyfuse3's zeros (generation).
        e = self.factory()
        e.st_ino = kino
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = mode
        e.st_nlink = inode.nlink
        e.st_uid = inode.uid
        e.st_gid = inode.gid
        e.st_rdev = inode.rdev
        e.st_size = size
        e.st_blksize = self.block_size
        e.st_blocks = min(-(-data_bytes // 512), -(-size // 512)) if stat.S_ISREG(mode) else 1
        e.st_atime_ns = inode.atime_ns
        e.st_mtime_ns = inode.mtime_ns
        e.st_ctime_ns = inode.ctime_ns
        return e


def attr_builder(entry_timeout: float, attr_timeout: float, block_size: int,
                 factory=pyfuse3.EntryAttributes):
    """The builder a volume's handlers answer with: the C one when built."""
    py = AttrBuilderPy(factory, entry_timeout, attr_timeout, block_size)
    if native.rows is None:
        return py
    return native.rows.AttrBuilder(factory, entry_timeout, attr_timeout, block_size,
                                   store.INODE_CODEC, py.build)
