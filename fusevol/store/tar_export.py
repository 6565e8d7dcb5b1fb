"""Export a volume or snapshot as a standard tar archive (POSIX pax), streaming.

The archive is what GNU tar writes for ``tar --xattrs --format=posix -cpf``:
modes with their setuid/setgid/sticky bits, numeric owners (no user names),
mtimes with nanoseconds and xattrs as ``SCHILY.xattr.NAME`` pax records, the
second and later names of a file as hard links. Holes come out as zeros.

Everything is read from immutable tree objects, in short read transactions
(one per object, one per few blocks of data), so an export of any size holds
no reader that keeps LMDB from reusing pages while the output is slow.
A live volume is exported through a temporary snapshot, which keeps its
objects alive meanwhile even if the volume changes.
"""

import datetime
import errno
import io
import logging
import os
import stat
import tarfile
from collections.abc import Callable

from ..errors import FsError, NotFound
from . import chunks, snapshots, trees, volumes
from .env import Store

log = logging.getLogger(__name__)

READ_BLOCKS = 8  # blocks of file data fetched per read transaction
_SPECIAL = {stat.S_IFCHR: tarfile.CHRTYPE, stat.S_IFBLK: tarfile.BLKTYPE, stat.S_IFIFO: tarfile.FIFOTYPE}


def _text(name: bytes) -> str:
    # tarfile writes names back with the same errors handler: bytes survive as they are.
    return name.decode("utf-8", "surrogateescape")


def pax_time(ns: int) -> str:
    """A pax time value: seconds with all nine decimals (exact, unlike a float)."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{sec}.{frac:09d}"


class _Content(io.RawIOBase):
    """A file's bytes, read block by block from its chunks (zeros for holes)."""

    def __init__(self, store: Store, obj: trees.TreeObject, on_bytes: Callable[[int], None] | None):
        self.store = store
        self.size = obj.inode.size
        self.blocks = dict(obj.blocks)
        self.bs = store.block_size
        self.next_index = 0
        self.buf = memoryview(b"")
        self.on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        first = self.next_index
        last = min(first + READ_BLOCKS, -(-self.size // self.bs))
        parts = []
        with self.store.read() as txn:
            for index in range(first, last):
                want = min(self.bs, self.size - index * self.bs)
                cid = self.blocks.get(index)
                data = chunks.read(txn, cid)[:want] if cid is not None else b""
                parts.append(data + bytes(want - len(data)) if len(data) < want else data)
        self.next_index = last
        self.buf = memoryview(b"".join(parts))
        if self.on_bytes:
            self.on_bytes(len(self.buf))

    def readinto(self, b) -> int:
        if not self.buf:
            self._fill()
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


def _tarinfo(path: bytes, obj: trees.TreeObject) -> tarfile.TarInfo | None:
    node = obj.inode
    kind = stat.S_IFMT(node.mode)
    info = tarfile.TarInfo("./" + _text(path) if path else ".")
    info.mode = stat.S_IMODE(node.mode)
    info.uid, info.gid = node.uid, node.gid
    info.uname = info.gname = ""
    info.mtime = node.mtime_ns // 1_000_000_000
    pax = {}
    if node.mtime_ns % 1_000_000_000:
        pax["mtime"] = pax_time(node.mtime_ns)
    for name, value in obj.xattrs:
        pax["SCHILY.xattr." + _text(name)] = _text(value)
    info.pax_headers = pax
    if kind == stat.S_IFREG:
        info.type, info.size = tarfile.REGTYPE, node.size
    elif kind == stat.S_IFDIR:
        info.type = tarfile.DIRTYPE
    elif kind == stat.S_IFLNK:
        info.type, info.linkname = tarfile.SYMTYPE, _text(node.target)
    elif kind in _SPECIAL:
        info.type = _SPECIAL[kind]
        info.devmajor, info.devminor = os.major(node.rdev), os.minor(node.rdev)
    else:
        return None  # a socket: tar has no type for it
    return info


def write_tree(store: Store, root: bytes, fileobj, *, on_bytes: Callable[[int], None] | None = None,
               warn: Callable[[str], None] = log.warning) -> int:
    """Write the tree whose root object is `root` to fileobj as a tar stream.
    Return the number of members written."""
    first_name: dict[int, str] = {}  # ino -> first path, for files with several names
    members = 0
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:
        stack = [(b"", root)]
        while stack:
            path, oid = stack.pop()
            with store.read() as txn:
                obj = trees.get(txn, oid)
                entries = trees.entries(txn, obj)
            stack.extend((path + b"/" + name if path else name, child)
                         for name, child in reversed(entries))
            info = _tarinfo(path, obj)
            if info is None:
                warn(f"{_text(path)}: socket ignored")
                continue
            if obj.kind == trees.FILE and obj.inode.nlink > 1:
                if obj.ino in first_name:
                    info.type, info.size, info.linkname = tarfile.LNKTYPE, 0, first_name[obj.ino]
                else:
                    first_name[obj.ino] = info.name
            if info.type == tarfile.REGTYPE:
                # A buffered reader hands tarfile exactly the lengths it asks for.
                tar.addfile(info, io.BufferedReader(_Content(store, obj, on_bytes), 1 << 20))
            else:
                tar.addfile(info)
            members += 1
    return members


def _descend(store: Store, root: bytes, subpath: str) -> bytes:
    """The object id of a folder inside a tree."""
    oid = root
    for part in subpath.split("/"):
        with store.read() as txn:
            entries = dict(trees.entries(txn, trees.get(txn, oid)))
        if part.encode() not in entries:
            raise NotFound(f"no folder {subpath} in the volume")
        oid = entries[part.encode()]
    with store.read() as txn:
        if trees.get(txn, oid).kind != trees.DIR:
            raise FsError(errno.ENOTDIR, f"{subpath} is not a folder")
    return oid


def export(store: Store, ref: str, fileobj, *, on_total: Callable[[int], None] | None = None,
           on_bytes: Callable[[int], None] | None = None,
           warn: Callable[[str], None] = log.warning) -> int:
    """Write VOLUME@SNAPSHOT, or VOLUME as it is now, to fileobj as a tar stream.

    The caller makes sure a mounted volume's worker has stored what it holds.
    on_total gets the bytes of file data to expect (without holes), on_bytes
    each piece of file data as it goes out.
    """
    volume, name = snapshots.parse_ref(ref, need_snapshot=False)
    temporary = None
    with store.write() as txn:
        if name is not None:
            snap = snapshots.get(txn, volume, name)
            subpath = None
        else:
            # A snapshot of our own keeps the tree's objects alive while we read them.
            record = volumes.get(txn, volume)
            volume, subpath = record.get("source") or volume, record.get("subpath")
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
            temporary = f"export-{stamp}-{os.getpid()}"
            snap = snapshots.create(txn, volume, temporary)
    try:
        root = bytes.fromhex(snap["root"])
        if subpath:
            root = _descend(store, root, subpath)
        if on_total:
            on_total(snap["logical_bytes"])
        return write_tree(store, root, fileobj, on_bytes=on_bytes, warn=warn)
    finally:
        if temporary is not None:
            with store.write() as txn:
                snapshots.remove(txn, volume, temporary)
