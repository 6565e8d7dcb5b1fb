"""Export a volume or snapshot as a standard tar archive (POSIX pax), streaming.

The archive is what GNU tar writes for ``tar --xattrs --format=posix -cpf``:
modes with their setuid/setgid/sticky bits, numeric owners (no user names),
mtimes with nanoseconds and xattrs as ``SCHILY.xattr.NAME`` pax records, the
second and later names of a file as hard links. A file with holes is a
sparse member in the pax format GNU tar writes with ``--sparse`` (1.0: the map
of data regions leads the member's data; GNU tar and Python's tarfile restore
the holes), so the archive and what is extracted from it cost what the file
holds, not its size.

Everything is read from immutable tree objects, in short read transactions
(one per object, one per few blocks of data), so an export of any size holds
no reader that keeps LMDB from reusing pages while the output is slow.
A live volume is exported through a temporary snapshot, which keeps its
objects alive meanwhile even if the volume changes.
"""

import datetime
import errno
import io
import itertools
import logging
import os
import stat
import tarfile
from collections.abc import Callable

from ..errors import FsError, NotFound
from ..progress import NoProgress, Progress
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
    """A file's bytes, read block by block from its chunks (zeros for holes);
    with `sparse`, its map of data regions and then those regions only."""

    def __init__(self, store: Store, obj: trees.TreeObject, on_bytes: Callable[[int], None] | None,
                 sparse: "_Sparse | None" = None):
        self.store = store
        self.size = obj.inode.size
        self.blocks = dict(obj.blocks)
        self.bs = store.block_size
        count = -(-self.size // self.bs)
        self.indexes = iter(sorted(i for i in self.blocks if i < count) if sparse else range(count))
        self.buf = memoryview(sparse.map if sparse else b"")
        self.on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        parts = []
        with self.store.read() as txn:
            for index in itertools.islice(self.indexes, READ_BLOCKS):
                want = min(self.bs, self.size - index * self.bs)
                cid = self.blocks.get(index)
                data = chunks.read(txn, cid)[:want] if cid is not None else b""
                parts.append(data + bytes(want - len(data)) if len(data) < want else data)
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


class _Sparse:
    """A file with holes as GNU's sparse format 1.0 has it: data regions (runs
    of stored blocks), and their map as the member's first 512-byte blocks."""

    def __init__(self, obj: trees.TreeObject, bs: int):
        size = obj.inode.size
        regions: list[list[int]] = []
        for index, _ in sorted(obj.blocks):
            start, end = index * bs, min((index + 1) * bs, size)
            if start >= size:
                continue
            if regions and regions[-1][0] + regions[-1][1] == start:
                regions[-1][1] = end - regions[-1][0]
            else:
                regions.append([start, end - start])
        if not regions or regions[-1][0] + regions[-1][1] < size:
            regions.append([size, 0])  # ends in a hole: the map says where the file ends
        text = f"{len(regions)}\n" + "".join(f"{off}\n{length}\n" for off, length in regions)
        self.map = text.encode() + bytes(-len(text) % tarfile.BLOCKSIZE)
        self.data_bytes = sum(length for _, length in regions)

    @staticmethod
    def wanted(obj: trees.TreeObject, bs: int) -> bool:
        """Whether the file has a hole (a block within its size that is not stored)."""
        return len(obj.blocks) < -(-obj.inode.size // bs)


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


def write_tree(store: Store, root: bytes, fileobj, *, progress: Progress | None = None) -> int:
    """Write the tree whose root object is `root` to fileobj as a tar stream,
    advancing `progress` by the file data written. Return the number of members."""
    progress = progress or NoProgress()
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
                progress.warn(f"{_text(path)}: socket ignored")
                continue
            if obj.kind == trees.FILE and obj.inode.nlink > 1:
                if obj.ino in first_name:
                    info.type, info.size, info.linkname = tarfile.LNKTYPE, 0, first_name[obj.ino]
                else:
                    first_name[obj.ino] = info.name
            sparse = None
            if info.type == tarfile.REGTYPE and _Sparse.wanted(obj, store.block_size):
                sparse = _Sparse(obj, store.block_size)
                info.pax_headers.update({"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                         "GNU.sparse.name": info.name,
                                         "GNU.sparse.realsize": str(info.size)})
                # GNU tar's own placeholder name; readers that know the format use the one above.
                info.name = f"./GNUSparseFile.0/{members + 1}"
                info.size = len(sparse.map) + sparse.data_bytes
            if info.type == tarfile.REGTYPE:
                # A buffered reader hands tarfile exactly the lengths it asks for.
                tar.addfile(info, io.BufferedReader(_Content(store, obj, progress.advance, sparse), 1 << 20))
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


def export(store: Store, ref: str, fileobj, *, progress: Progress | None = None) -> int:
    """Write VOLUME@SNAPSHOT, or VOLUME as it is now, to fileobj as a tar stream.

    The caller makes sure a mounted volume's worker has stored what it holds.
    `progress` has one phase, "export", in bytes of file data (without holes).
    """
    progress = progress or NoProgress()
    volume, name = snapshots.parse_ref(ref, need_snapshot=False)
    temporary = None
    with store.write() as txn:
        if name is not None:
            snap = snapshots.get(txn, volume, name)
            subpath = None
        else:
            # A snapshot of our own keeps the tree's objects alive while we read them.
            shown = volumes.get(txn, volume)
            volume, subpath = shown.source or volume, shown.subpath
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
            temporary = f"export-{stamp}-{os.getpid()}"
            snap = snapshots.create(txn, volume, temporary)
    try:
        root = bytes.fromhex(snap.root)
        if subpath:
            root = _descend(store, root, subpath)
        progress.start("export", snap.logical_bytes)
        return write_tree(store, root, fileobj, progress=progress)
    finally:
        if temporary is not None:
            with store.write() as txn:
                snapshots.remove(txn, volume, temporary)
