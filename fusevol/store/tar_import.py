"""Import a tar archive (GNU, pax or ustar; plain, gzip, bzip2, xz or zstd) into a new volume.

The archive is read as a stream, one member after the other. What a member
asks for is queued as operations and applied in one write transaction per
few tens of MiB, so reading the input (maybe a slow pipe) never holds the
store's write lock and no transaction grows with the archive.

Member names are confined to the volume as GNU tar does it: a leading '/' is
removed, names with a '..' component are skipped, and no symlink is ever
followed (a member below a symlink is skipped). If the archive cannot be read
to its end, the half-made volume is removed and BadArchive says why.
"""

import base64
import decimal
import errno
import io
import logging
import os
import stat
import tarfile
import urllib.parse
from collections.abc import Callable

import zstandard

from ..errors import BadArchive, FsError, InvalidArgument, NoSpace
from ..progress import NoProgress, Progress
from ..records import Volume
from . import volumes
from .env import Store, Txn
from .inodes import Inodes
from .schema import ROOT_INO

log = logging.getLogger(__name__)

BATCH_BYTES = 32 << 20    # file data applied per write transaction
BATCH_OPS = 20_000        # operations applied per write transaction
WRITE_BLOCKS = 64         # blocks per write_blocks call (8 MiB)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SPECIAL = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}


class _CheckedTarInfo(tarfile.TarInfo):
    """Remembers why tarfile stopped reading headers: tarfile ends quietly at
    a truncated or damaged header, we want to know it was the end marker."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar.fusevol_stop = e
            raise


class _Input(io.RawIOBase):
    """The archive's bytes: a few already read, then the rest; counted."""

    def __init__(self, head: bytes, rest, on_bytes: Callable[[int], None] | None):
        self.head = head
        self.rest = rest
        self.on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
        else:
            data = self.rest.read(len(b))
            n = len(data)
            b[:n] = data
        if self.on_bytes and n:
            self.on_bytes(n)
        return n


def _open_stream(fileobj, on_bytes) -> tarfile.TarFile:
    head = fileobj.read(4)
    raw = io.BufferedReader(_Input(head, fileobj, on_bytes), 1 << 20)
    if head == ZSTD_MAGIC:  # tarfile knows gzip, bzip2 and xz by itself
        raw = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    try:
        return tarfile.open(fileobj=raw, mode="r|*", tarinfo=_CheckedTarInfo,
                            encoding="utf-8", errors="surrogateescape")
    except tarfile.ReadError as e:
        raise BadArchive(f"not a tar archive: {e}") from None


def parse_time(text: str | None, fallback: float) -> int:
    """A pax time in nanoseconds, exactly (tarfile gives only a float)."""
    if text:
        try:
            return int(decimal.Decimal(text).scaleb(9).to_integral_value(decimal.ROUND_FLOOR))
        except decimal.InvalidOperation:
            pass
    return int(fallback) * 1_000_000_000


def xattrs_of(info: tarfile.TarInfo) -> list[tuple[bytes, bytes]]:
    """Extended attributes as GNU tar and star (SCHILY.xattr.) or bsdtar (LIBARCHIVE.xattr.) keep them."""
    out = []
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            out.append((key[13:].encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape")))
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote_to_bytes(key[17:])
            out.append((name, base64.b64decode(value + "=" * (-len(value) % 4))))
    return out


class _Importer:
    """Turns members into queued operations on the new volume and applies them in batches."""

    def __init__(self, store: Store, volume: Volume, strip: int, warn: Callable[[str], None]):
        self.store = store
        self.inodes = Inodes(volume.vid, store.block_size, volume.compression)
        self.quota = volume.quota
        self.strip = strip
        self.warn = warn
        self.ops: list[Callable[[Txn], None]] = []
        self.pending = 0
        self.dirs: dict[tuple, int] = {(): ROOT_INO}  # directories made or met, by path
        self.dir_times: list[tuple[tuple, int, int]] = []
        self.said_absolute = False
        self.owner = (os.getuid(), os.getgid())  # of directories the archive does not list

    # -- queueing -------------------------------------------------------------

    def queue(self, op: Callable[[Txn], None], nbytes: int = 0) -> None:
        self.ops.append(op)
        self.pending += nbytes
        if self.pending >= BATCH_BYTES or len(self.ops) >= BATCH_OPS:
            self.apply()

    def apply(self) -> None:
        if not self.ops:
            return
        with self.store.write(data_files=True) as txn:
            for op in self.ops:
                op(txn)
            if self.quota is not None and self.inodes.usage(txn).logical_bytes > self.quota:
                raise NoSpace(f"the archive holds more than the volume's size ({self.quota} bytes)")
        self.ops, self.pending = [], 0

    def finish(self) -> None:
        # Directory times last: making their entries changed them.
        for parts, atime, mtime in self.dir_times:
            self.queue(lambda txn, p=parts, a=atime, m=mtime: self._set_dir_times(txn, p, a, m))
        self.apply()

    # -- names ------------------------------------------------------------------

    def parts(self, name: str) -> tuple | None:
        raw = name.encode("utf-8", "surrogateescape")
        if raw.startswith(b"/"):
            if not self.said_absolute:
                self.warn("removing leading '/' from member names")
                self.said_absolute = True
            raw = raw.lstrip(b"/")
        parts = tuple(p for p in raw.split(b"/") if p not in (b"", b"."))
        if b".." in parts:
            self.warn(f"{name}: member name contains '..', skipped")
            return None
        if self.strip:
            # As tar --strip-components: names that are all stripped away are skipped.
            return parts[self.strip:] if len(parts) > self.strip else None
        return parts

    # -- members ------------------------------------------------------------------

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        parts = self.parts(info.name)
        if parts is None:
            return
        if not parts and not info.isdir():
            self.warn(f"{info.name}: names no file inside the archive, skipped")
            return
        mtime = parse_time(info.pax_headers.get("mtime"), info.mtime)
        atime = parse_time(info.pax_headers["atime"], mtime // 1_000_000_000) if "atime" in info.pax_headers else mtime
        attrs = {"mode": stat.S_IMODE(info.mode), "uid": info.uid, "gid": info.gid,
                 "atime_ns": atime, "mtime_ns": mtime}
        xattrs = xattrs_of(info)
        if info.isdir():
            self.queue(lambda txn: self._mkdir(txn, info.name, parts, attrs, xattrs))
            self.dir_times.append((parts, atime, mtime))
        elif info.islnk():
            target = self.parts(info.linkname)
            if target is not None:
                self.queue(lambda txn: self._link(txn, info.name, parts, info.linkname, target))
        elif info.isreg():
            self._file(tar, info, parts, attrs, xattrs)
        elif info.issym() or info.type in _SPECIAL:
            if info.issym():
                mode, rdev, target = stat.S_IFLNK | 0o777, 0, info.linkname.encode("utf-8", "surrogateescape")
            else:
                mode, rdev, target = _SPECIAL[info.type], os.makedev(info.devmajor, info.devminor), b""
            node = {}
            self.queue(lambda txn: self._make(txn, info.name, parts, mode | attrs["mode"], rdev, target, node))
            self.queue(lambda txn: self._finish_node(txn, node, attrs, xattrs))
        else:
            self.warn(f"{info.name}: unsupported member type {info.type!r}, skipped")

    def _file(self, tar: tarfile.TarFile, info: tarfile.TarInfo, parts: tuple, attrs: dict, xattrs: list) -> None:
        node: dict = {}
        self.queue(lambda txn: self._make(txn, info.name, parts, stat.S_IFREG | attrs["mode"], 0, b"", node))
        data = tar.extractfile(info)
        bs = self.inodes.block_size
        blocks: list[tuple[int, bytes]] = []
        for index in range(-(-info.size // bs)):
            want = min(bs, info.size - index * bs)
            block = data.read(want)
            if len(block) != want:
                raise BadArchive(f"archive ends inside {info.name}")
            blocks.append((index, block))
            if len(blocks) == WRITE_BLOCKS or index * bs + want == info.size:
                batch, blocks = blocks, []
                self.queue(lambda txn, b=batch: self._write(txn, node, b, info.size),
                           sum(len(d) for _, d in batch))
        self.queue(lambda txn: self._finish_node(txn, node, attrs, xattrs))

    # -- operations, applied in a write transaction --------------------------------

    def _dir_ino(self, txn: Txn, parts: tuple) -> int:
        """The directory at parts, made (as tar does) when the archive has not listed it yet."""
        ino = self.dirs.get(parts)
        if ino is None:
            parent = self._dir_ino(txn, parts[:-1])
            try:
                ino = self.inodes.lookup(txn, parent, parts[-1])
            except FsError as e:
                if e.errno != errno.ENOENT:
                    raise
                ino, _ = self.inodes.create(txn, parent, parts[-1], stat.S_IFDIR | 0o755, *self.owner)
            if not stat.S_ISDIR(self.inodes.get(txn, ino).mode):
                raise FsError(errno.ENOTDIR)
            self.dirs[parts] = ino
        return ino

    def _clear(self, txn: Txn, parent: int, name: bytes, parts: tuple, keep_dir: bool) -> int | None:
        """Make room for a new member at parent/name, as tar replaces what is there.
        Return the existing directory's ino when it stays (keep_dir)."""
        try:
            ino = self.inodes.lookup(txn, parent, name)
        except FsError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        if stat.S_ISDIR(self.inodes.get(txn, ino).mode):
            if keep_dir:
                return ino
            _, gone = self.inodes.rmdir(txn, parent, name)  # ENOTEMPTY when it holds something
            self.dirs.pop(parts, None)
        else:
            _, gone = self.inodes.unlink(txn, parent, name)
        if gone:
            self.inodes.purge(txn, ino)
        return None

    def _skip(self, name: str, e: FsError) -> None:
        self.warn(f"{name}: {os.strerror(e.errno)}, skipped")

    def _mkdir(self, txn: Txn, name: str, parts: tuple, attrs: dict, xattrs: list) -> None:
        try:
            if parts:
                parent = self._dir_ino(txn, parts[:-1])
                ino = self._clear(txn, parent, parts[-1], parts, keep_dir=True)
                if ino is None:
                    ino, _ = self.inodes.create(txn, parent, parts[-1], stat.S_IFDIR | attrs["mode"],
                                                attrs["uid"], attrs["gid"])
                self.dirs[parts] = ino
            else:
                ino = ROOT_INO
            self._set(txn, ino, attrs, xattrs)
        except FsError as e:
            self._skip(name, e)

    def _make(self, txn: Txn, name: str, parts: tuple, mode: int, rdev: int, target: bytes, node: dict) -> None:
        try:
            parent = self._dir_ino(txn, parts[:-1])
            self._clear(txn, parent, parts[-1], parts, keep_dir=False)
            node["ino"], _ = self.inodes.create(txn, parent, parts[-1], mode, 0, 0, rdev=rdev, target=target)
        except FsError as e:
            self._skip(name, e)

    def _write(self, txn: Txn, node: dict, blocks: list, size: int) -> None:
        if "ino" in node:
            self.inodes.write_blocks(txn, node["ino"], blocks, size)

    def _finish_node(self, txn: Txn, node: dict, attrs: dict, xattrs: list) -> None:
        if "ino" in node:
            self._set(txn, node["ino"], attrs, xattrs)

    def _set(self, txn: Txn, ino: int, attrs: dict, xattrs: list) -> None:
        for key, value in xattrs:
            self.inodes.setxattr(txn, ino, key, value)
        self.inodes.setattr(txn, ino, **attrs)

    def _link(self, txn: Txn, name: str, parts: tuple, target_name: str, target: tuple) -> None:
        try:
            ino = self._dir_ino(txn, target[:-1])
            ino = self.inodes.lookup(txn, ino, target[-1]) if target else ROOT_INO
            if target == parts:
                return  # a link to itself: tar keeps the file as it is
            parent = self._dir_ino(txn, parts[:-1])
            self._clear(txn, parent, parts[-1], parts, keep_dir=False)
            self.inodes.link(txn, ino, parent, parts[-1])
        except FsError as e:
            self.warn(f"{name}: cannot hard link to {target_name}: {os.strerror(e.errno)}, skipped")

    def _set_dir_times(self, txn: Txn, parts: tuple, atime: int, mtime: int) -> None:
        ino = self.dirs.get(parts)
        if ino is not None:
            self.inodes.setattr(txn, ino, atime_ns=atime, mtime_ns=mtime)


def import_tar(store: Store, volume: str, fileobj, *, opts: dict | None = None, strip: int = 0,
               size: int | None = None, progress: Progress | None = None) -> dict:
    """Make volume from the tar archive read from fileobj; return its record.
    On any failure the volume is removed again and the store is as before.
    `progress` has one phase, "import", in bytes of the archive (`size` of
    them, if known)."""
    progress = progress or NoProgress()
    if volumes.parse_options(opts)["source"]:
        raise InvalidArgument("an archive is imported into a volume of its own, not a view (source=...)")
    with store.write() as txn:
        record = volumes.create(txn, volume, opts)
    importer = _Importer(store, record, strip, progress.warn)
    progress.start("import", size)
    try:
        tar = _open_stream(fileobj, progress.advance)
        try:
            while (info := tar.next()) is not None:
                importer.add(tar, info)
                tar.members.clear()  # tarfile keeps every member otherwise
        except (tarfile.TarError, EOFError, zstandard.ZstdError) as e:
            raise BadArchive(f"damaged archive: {e}") from None
        stop = getattr(tar, "fusevol_stop", None)
        if not isinstance(stop, tarfile.EOFHeaderError):
            where = f" after {tar.offset} bytes" if tar.offset else ""
            reason = "it is truncated" if isinstance(stop, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)) \
                else f"damaged header ({stop})"
            raise BadArchive(f"archive has no end marker{where}: {reason}")
        importer.finish()
    except BaseException:
        _remove(store, volume)
        raise
    return record


def _remove(store: Store, volume: str) -> None:
    with store.write() as txn:
        volumes.remove(txn, volume)
