"""The bench's ceiling: a small in-memory pyfuse3 filesystem.

It answers every request from Python dicts on the trio thread (files are
bytearrays) and mounts with the kernel options of a fusevol volume: writeback
cache, 60 s entry and attribute timeouts, cached negative lookups,
keep_cache, default_permissions, allow_other, noatime and the same
read-ahead. What a workload costs here is what pyfuse3, trio and the kernel's
FUSE round trips cost; what fusevol costs beyond that is its own work.

    python bench/memfs.py MOUNTPOINT      # serves until unmounted (fusermount3 -u)

Nothing is kept: the data goes when the process ends. fsync has nothing to do.
"""

import errno
import logging
import os
import signal
import stat
import sys
import time

import pyfuse3
import trio

TIMEOUT = 60.0          # entry and attribute timeouts, as a fusevol volume's
READ_AHEAD_KB = 4096    # as a fusevol volume sets it
BLOCK_SIZE = 4096


class Node:
    __slots__ = ("mode", "uid", "gid", "rdev", "nlink", "data", "children", "parent",
                 "target", "atime_ns", "mtime_ns", "ctime_ns", "xattrs", "lookups", "opens")

    def __init__(self, mode: int, uid: int, gid: int, rdev: int = 0, parent: int = 0):
        now = time.time_ns()
        self.mode, self.uid, self.gid, self.rdev = mode, uid, gid, rdev
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.data = bytearray()
        self.children: dict[bytes, int] | None = {} if stat.S_ISDIR(mode) else None
        self.parent = parent
        self.target = b""
        self.atime_ns = self.mtime_ns = self.ctime_ns = now
        self.xattrs: dict[bytes, bytes] = {}
        self.lookups = 0
        self.opens = 0


def fail(err: int):
    raise pyfuse3.FUSEError(err)


class MemoryOperations(pyfuse3.Operations):
    enable_writeback_cache = True
    supports_dot_lookup = True

    def __init__(self, no_xattr: bool = False):
        super().__init__()
        self.no_xattr = no_xattr
        root = Node(stat.S_IFDIR | 0o755, 0, 0, parent=pyfuse3.ROOT_INODE)
        root.lookups = 1
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: root}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.dirs: dict[int, tuple[int, list | None]] = {}
        self.next_fh = 1

    # -- helpers --------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            fail(errno.ENOENT)
        return node

    def _dir(self, ino: int) -> Node:
        node = self._node(ino)
        if node.children is None:
            fail(errno.ENOTDIR)
        return node

    def _attr(self, ino: int, node: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = node.mode
        e.st_nlink = node.nlink
        e.st_uid = node.uid
        e.st_gid = node.gid
        e.st_rdev = node.rdev
        size = len(node.target) if stat.S_ISLNK(node.mode) else len(node.data)
        e.st_size = size
        e.st_blksize = BLOCK_SIZE
        e.st_blocks = -(-size // 512)
        e.st_atime_ns = node.atime_ns
        e.st_mtime_ns = node.mtime_ns
        e.st_ctime_ns = node.ctime_ns
        return e

    def _counted(self, ino: int, node: Node) -> pyfuse3.EntryAttributes:
        node.lookups += 1
        return self._attr(ino, node)

    def _maybe_free(self, ino: int, node: Node) -> None:
        if node.nlink == 0 and node.lookups <= 0 and node.opens == 0:
            self.nodes.pop(ino, None)

    def _touch(self, node: Node) -> None:
        node.mtime_ns = node.ctime_ns = time.time_ns()

    # -- names ----------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._dir(parent_inode)
        if name == b".":
            ino = parent_inode
        elif name == b"..":
            ino = parent.parent
        else:
            ino = parent.children.get(name)
            if ino is None:
                e = pyfuse3.EntryAttributes()  # a negative entry the kernel caches
                e.st_ino = 0
                e.entry_timeout = TIMEOUT
                return e
        return self._counted(ino, self.nodes[ino])

    async def forget(self, inode_list):
        for ino, count in inode_list:
            node = self.nodes.get(ino)
            if node is not None:
                node.lookups -= count
                self._maybe_free(ino, node)

    async def getattr(self, inode, ctx=None):
        return self._attr(inode, self._node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if fields.update_size:
            size = attr.st_size
            if size < len(node.data):
                del node.data[size:]
            else:
                node.data.extend(bytes(size - len(node.data)))
            node.mtime_ns = time.time_ns()
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        node.ctime_ns = attr.st_ctime_ns if fields.update_ctime else time.time_ns()
        return self._attr(inode, node)

    def _add(self, parent_inode: int, name: bytes, mode: int, ctx, rdev: int = 0) -> tuple[int, Node]:
        parent = self._dir(parent_inode)
        if name in parent.children:
            fail(errno.EEXIST)
        ino, self.next_ino = self.next_ino, self.next_ino + 1
        node = Node(mode, ctx.uid, ctx.gid, rdev, parent=parent_inode)
        self.nodes[ino] = node
        parent.children[name] = ino
        if node.children is not None:
            parent.nlink += 1
        self._touch(parent)
        return ino, node

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._counted(*self._add(parent_inode, name, mode, ctx, rdev))

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._counted(*self._add(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx))

    async def symlink(self, parent_inode, name, target, ctx):
        ino, node = self._add(parent_inode, name, stat.S_IFLNK | 0o777, ctx)
        node.target = target
        return self._counted(ino, node)

    async def readlink(self, inode, ctx=None):
        node = self._node(inode)
        if not stat.S_ISLNK(node.mode):
            fail(errno.EINVAL)
        return node.target

    async def link(self, inode, new_parent_inode, new_name, ctx):
        node = self._node(inode)
        parent = self._dir(new_parent_inode)
        if new_name in parent.children:
            fail(errno.EEXIST)
        parent.children[new_name] = inode
        node.nlink += 1
        node.ctime_ns = time.time_ns()
        self._touch(parent)
        return self._counted(inode, node)

    def _remove(self, parent_inode: int, name: bytes, want_dir: bool) -> None:
        parent = self._dir(parent_inode)
        ino = parent.children.get(name)
        if ino is None:
            fail(errno.ENOENT)
        node = self.nodes[ino]
        is_dir = node.children is not None
        if want_dir and not is_dir:
            fail(errno.ENOTDIR)
        if not want_dir and is_dir:
            fail(errno.EISDIR)
        if is_dir and node.children:
            fail(errno.ENOTEMPTY)
        del parent.children[name]
        self._unlinked(parent, ino, node)
        self._touch(parent)

    def _unlinked(self, parent: Node, ino: int, node: Node) -> None:
        if node.children is not None:
            parent.nlink -= 1
            node.nlink = 0
        else:
            node.nlink -= 1
        node.ctime_ns = time.time_ns()
        self._maybe_free(ino, node)

    async def unlink(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, want_dir=False)

    async def rmdir(self, parent_inode, name, ctx):
        self._remove(parent_inode, name, want_dir=True)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old_parent, new_parent = self._dir(parent_inode_old), self._dir(parent_inode_new)
        ino = old_parent.children.get(name_old)
        if ino is None:
            fail(errno.ENOENT)
        node = self.nodes[ino]
        other = new_parent.children.get(name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            if other is None:
                fail(errno.ENOENT)
            old_parent.children[name_old], new_parent.children[name_new] = other, ino
            self.nodes[other].parent, node.parent = parent_inode_old, parent_inode_new
            return
        if other == ino:
            return
        if other is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                fail(errno.EEXIST)
            target = self.nodes[other]
            if (target.children is None) != (node.children is None):
                fail(errno.EISDIR if target.children is not None else errno.ENOTDIR)
            if target.children:
                fail(errno.ENOTEMPTY)
        del old_parent.children[name_old]
        if other is not None:
            self._unlinked(new_parent, other, self.nodes[other])
        new_parent.children[name_new] = ino
        if node.children is not None and old_parent is not new_parent:
            old_parent.nlink -= 1
            new_parent.nlink += 1
            node.parent = parent_inode_new
        node.ctime_ns = time.time_ns()
        self._touch(old_parent)
        self._touch(new_parent)

    # -- files ----------------------------------------------------------------

    def _handle(self, ino: int, node: Node) -> pyfuse3.FileInfo:
        node.opens += 1
        return pyfuse3.FileInfo(fh=ino, keep_cache=True)  # the handle is the inode

    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.children is not None:
            fail(errno.EISDIR)
        if flags & os.O_TRUNC:
            node.data.clear()
        return self._handle(inode, node)

    async def create(self, parent_inode, name, mode, flags, ctx):
        ino, node = self._add(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return self._handle(ino, node), self._counted(ino, node)

    async def read(self, fh, off, size):
        return self.nodes[fh].data[off:off + size]

    async def write(self, fh, off, buf):
        data = self.nodes[fh].data
        end = len(data)
        if off == end:
            data += buf
        else:
            if off > end:
                data.extend(bytes(off - end))
            data[off:off + len(buf)] = buf
        return len(buf)

    async def flush(self, fh):
        pass

    async def fsync(self, fh, datasync):
        pass

    async def release(self, fh):
        node = self.nodes[fh]
        node.opens -= 1
        self._maybe_free(fh, node)

    # -- directories ----------------------------------------------------------

    async def opendir(self, inode, ctx):
        self._dir(inode)
        fh, self.next_fh = self.next_fh, self.next_fh + 1
        self.dirs[fh] = (inode, None)
        return fh

    async def readdir(self, fh, start_id, token):
        ino, listing = self.dirs[fh]
        if listing is None or start_id == 0:
            listing = list(self.nodes[ino].children.items())
            self.dirs[fh] = (ino, listing)
        for index in range(start_id, len(listing)):
            name, child = listing[index]
            node = self.nodes.get(child)
            if node is None or node.nlink == 0:
                continue
            if not pyfuse3.readdir_reply(token, name, self._attr(child, node), index + 1):
                return
            node.lookups += 1  # readdirplus: each entry sent is a lookup

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        used = sum(len(n.data) for n in self.nodes.values()) // BLOCK_SIZE
        s.f_blocks = (1 << 40) // BLOCK_SIZE
        s.f_bfree = s.f_bavail = s.f_blocks - used
        s.f_files = len(self.nodes) + (1 << 32)
        s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 255
        return s

    # -- extended attributes --------------------------------------------------

    async def getxattr(self, inode, name, ctx):
        if self.no_xattr:
            fail(errno.ENOSYS)
        value = self._node(inode).xattrs.get(name)
        if value is None:
            fail(pyfuse3.ENOATTR)
        return value

    async def setxattr(self, inode, name, value, ctx):
        if self.no_xattr:
            fail(errno.ENOSYS)
        node = self._node(inode)
        node.xattrs[name] = value
        node.ctime_ns = time.time_ns()

    async def listxattr(self, inode, ctx):
        if self.no_xattr:
            fail(errno.ENOSYS)
        return list(self._node(inode).xattrs)

    async def removexattr(self, inode, name, ctx):
        if self.no_xattr:
            fail(errno.ENOSYS)
        if self._node(inode).xattrs.pop(name, None) is None:
            fail(pyfuse3.ENOATTR)


# -- serving ----------------------------------------------------------------------

async def _serve(mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_set_read_ahead, mountpoint)
        nursery.start_soon(_unmount_on_signal, mountpoint)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _set_read_ahead(mountpoint: str) -> None:
    # The stat goes through the kernel to this very loop: once it answers, the mount serves.
    st = await trio.to_thread.run_sync(os.stat, mountpoint)
    path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as e:
        logging.warning("cannot set read-ahead in %s: %s", path, e)


async def _unmount_on_signal(mountpoint: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            await trio.run_process(["fusermount3", "-u", "-z", mountpoint], check=False)


def main() -> None:
    args = sys.argv[1:]
    # --no-xattr: the ceiling of a volume made with -o xattr=off (ENOSYS to every
    # xattr request, so the kernel stops asking security.capability before writes).
    no_xattr = "--no-xattr" in args
    args = [a for a in args if a != "--no-xattr"]
    if len(args) != 1:
        sys.exit("usage: memfs.py [--no-xattr] MOUNTPOINT")
    mountpoint = os.path.abspath(args[0])
    logging.basicConfig(level=logging.WARNING, format="memfs: %(message)s")
    options = {"default_permissions", "allow_other", "noatime", "subtype=memfs", "fsname=memfs"}
    try:
        pyfuse3.init(MemoryOperations(no_xattr), mountpoint, options)
    except RuntimeError as e:
        sys.exit(f"memfs: cannot mount {mountpoint}: {e}")
    try:
        trio.run(_serve, mountpoint)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
