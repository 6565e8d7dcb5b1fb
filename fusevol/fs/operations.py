"""The pyfuse3 Operations of one mounted volume.

Handlers are thin: they translate kernel inode numbers, call the synchronous
store helpers (fusevol.store.Inodes) through the runner (reads from the
worker's rows, changes worked out on the trio thread and applied by the store
thread later, data on the store thread), and keep the little state the kernel
protocol needs in memory (lookup counts, open files, directory listings). An inode with no name left gives its data back once no
file handle holds it, and its row once the kernel forgets its number. Only FUSEError leaves a handler: pyfuse3 ends the mount on anything
else, so unexpected errors are logged and answered with EIO.
"""

import errno
import functools
import logging
import os
import stat
import time
from time import monotonic_ns
from collections import Counter

import pyfuse3
import trio

from ..errors import FusevolError, StoreDamaged
from ..store import ROOT_INO, Inode, Inodes, datafiles
from ..store.inodes import set_attrs
from . import acl, metrics, pagepush
from .attributes import attr_builder
from .filedata import SPACE_ERRORS, FileData
from .registry import FLUSH_XATTR, SNAPSHOT_XATTR
from .runner import TxnRunner
from .space import SpaceBudget

log = logging.getLogger(__name__)

# All changes reach the volume through this one mount, so the kernel's caches
# stay true for long; they are dropped explicitly when the store changes under us.
ENTRY_TIMEOUT = 60.0
ATTR_TIMEOUT = 60.0
# A file's dirty bytes that start a background flush (FUSEVOL_FLUSH_AT: tests make
# it small so that flushes meet the writes they race with more often)... 4 MiB by
# measurement: a streaming write's peak RssAnon 121-128 MiB against 154-167 at
# 8 MiB, at the same rate and CPU; 2 MiB took more of the FUSE thread's CPU.
FLUSH_AT = int(os.environ.get("FUSEVOL_FLUSH_AT", 4 << 20))
BLOCK_WRITES_AT = 3 * FLUSH_AT  # ...and that make writers wait (bounds memory)
FLUSH_INTERVAL = 5.0       # seconds dirty data may stay in memory
POSIX_ACL_PREFIX = b"system.posix_acl_"
ACL_ACCESS = POSIX_ACL_PREFIX + b"access"
TRUSTED_PREFIX = b"trusted."
XATTR_NAMESPACES = (b"user.", TRUSTED_PREFIX, b"security.", POSIX_ACL_PREFIX)
MAX_ATTRS = 100_000        # attributes answered kept for the next getattr
READDIR_BATCH = 64         # entries read per store call while answering readdir
DOTS = (b".", b"..")       # listed first by readdir
RELATIME_AGE_NS = 24 * 3600 * 10**9  # relatime: an atime older than this is renewed


def _cache_knobs() -> dict:
    """The kernel-cache settings, read at mount time. The defaults are the design's;
    the FUSEVOL_* knobs turn each one off to measure what it buys (see bench/)."""
    env = os.environ.get
    return {
        "writeback": env("FUSEVOL_WRITEBACK_CACHE", "1") != "0",
        "entry_timeout": float(env("FUSEVOL_ENTRY_TIMEOUT", ENTRY_TIMEOUT)),
        "attr_timeout": float(env("FUSEVOL_ATTR_TIMEOUT", ATTR_TIMEOUT)),
        "keep_cache": env("FUSEVOL_KEEP_CACHE", "1") != "0",
        "push_pages": env("FUSEVOL_PUSH_PAGES", "1") != "0",  # filedata.py, pagepush.py
    }


def handler(fn, changes: bool = False):
    """Map domain errors to errnos and keep unexpected ones from killing the mount;
    with `changes`, answer EROFS on a read-only mount. One coroutine frame per
    request: the wrapper runs for every request the kernel sends. It counts each
    request, and times one in 16 (metrics.py)."""
    at = metrics.slot(fn.__name__)
    first_bucket, total, mask = at + metrics.FIRST_BUCKET, at + metrics.SUM, metrics.SAMPLE_MASK

    @functools.wraps(fn)
    async def wrapper(self, *args):
        if changes and self.readonly:
            raise pyfuse3.FUSEError(errno.EROFS)
        hist = self._hist
        n = hist[at] + 1
        hist[at] = n
        started = 0 if n & mask else monotonic_ns()
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except StoreDamaged as e:  # the store, not the caller: say so in the log
            log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except FusevolError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if started:
                took = monotonic_ns() - started
                hist[first_bucket + took.bit_length()] += 1
                hist[total] += took

    return wrapper


def modifying(fn):
    """A handler that changes the volume: EROFS on a read-only mount."""
    return handler(fn, changes=True)


class VolumeOperations(pyfuse3.Operations):
    enable_writeback_cache = True
    supports_dot_lookup = True

    def __init__(self, runner: TxnRunner, inodes: Inodes, space: SpaceBudget, *,
                 readonly: bool = False, root_ino: int = ROOT_INO, atime: str = "noatime",
                 intent=None, xattrs: bool = True, volume: str | None = None):
        super().__init__()
        self.volume = volume  # the data volume's name: snapshots taken here (take_snapshot)
        self.intent = intent  # fs/intent.py: fsync of small writes (None: read-only)
        self.xattrs = xattrs  # the volume's xattr option (off: no xattr requests answered)
        self.atime = None if readonly or atime == "noatime" else atime
        self.metrics = metrics.WorkerMetrics()
        self._hist = self.metrics.hist  # the request counters (handler)
        self.runner = runner
        self.inodes = inodes
        self.block_size = inodes.block_size
        runner.cache.know_fresh(inodes.row_owner, inodes.next_ino, inodes.counter_row)
        self.readonly = readonly
        self.root_ino = root_ino  # a subpath view serves this directory as its root
        self.space = space
        self.lookups: Counter[int] = Counter()  # references the kernel holds, per ino
        self.files: dict[int, FileData] = {}
        self.handles: dict[int, FileData] = {}
        self._writing: set[int] = set()  # handles that may write
        self.dir_handles: dict[int, list | None] = {}
        # ino -> (inode, its attributes as last answered), while no file is open
        self._attrs: dict[int, tuple[Inode, pyfuse3.EntryAttributes]] = {}
        # Let-gos of unnamed inodes the kernel still knew (_purge_if_unused):
        # the last one queued per inode, and those the store thread has not
        # claimed yet (a forget may take one over: _hand_purge_over).
        self._letting_go: dict[int, _LetGo] = {}
        self._unclaimed: set[_LetGo] = set()
        self.nursery: trio.Nursery | None = None
        self._next_fh = 1
        knobs = _cache_knobs()
        # pyfuse3 reads it at init. A volume with a quota goes without: the
        # quota is enforced at write(2), with EDQUOT, only if write(2) reaches
        # the worker (space.py); the page cache would accept what the quota
        # cannot take and report it at close, as EIO.
        self.enable_writeback_cache = knobs["writeback"] and space.quota is None
        self.entry_timeout = knobs["entry_timeout"]
        # The answer to every lookup of a missing name (pyfuse3 only reads it).
        self._negative = pyfuse3.EntryAttributes()
        self._negative.st_ino = 0
        self._negative.entry_timeout = self.entry_timeout
        self.attr_timeout = knobs["attr_timeout"]
        self._build_attrs = attr_builder(self.entry_timeout, self.attr_timeout,
                                         self.block_size).build
        self.keep_cache = knobs["keep_cache"]
        self.push_pages = knobs["push_pages"]

    # -- inode numbers: a view's root is the kernel's ROOT_INO --------------

    def _real(self, kino: int) -> int:
        return self.root_ino if kino == pyfuse3.ROOT_INODE else kino

    def _kernel(self, ino: int) -> int:
        return pyfuse3.ROOT_INODE if ino == self.root_ino else ino

    def _new_fh(self) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        return fh

    # -- attributes ---------------------------------------------------------

    def _entry(self, ino: int, inode: Inode) -> pyfuse3.EntryAttributes:
        fd = self.files.get(ino)
        kino = ino if ino != self.root_ino else pyfuse3.ROOT_INODE  # _kernel(ino)
        if fd is not None:
            return self._build_attrs(kino, inode, fd.size, inode.data_bytes + fd.dirty_bytes)
        # The same shared inode (Inodes.peek) gives the same answer: getattr
        # of an unchanged file builds no new one (pyfuse3 only reads it).
        seen = self._attrs.get(ino)
        if seen is not None and seen[0] is inode:
            return seen[1]
        e = self._build_attrs(kino, inode, inode.size, inode.data_bytes)
        attrs = self._attrs
        if len(attrs) >= MAX_ATTRS:
            attrs.clear()
        attrs[ino] = (inode, e)
        return e

    def _entry_counted(self, ino: int, inode: Inode) -> pyfuse3.EntryAttributes:
        """Attributes handed to the kernel with a new reference to the inode."""
        self.lookups[ino] += 1
        return self._entry(ino, inode)

    async def _get(self, ino: int) -> Inode:
        """The inode, to read only (see Inodes.peek)."""
        return await self.runner.read(self.inodes.peek, ino)

    @handler
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._real(parent_inode)
        if name == b".." and parent == self.root_ino:
            name = b"."  # no way out of a view
        ino, inode = await self.runner.read(_found, self.inodes, parent, name)
        if ino is None:
            return self._negative  # cached by the kernel as a negative entry
        return self._entry_counted(ino, inode)

    @handler
    async def getattr(self, inode, ctx=None):
        ino = inode if inode != pyfuse3.ROOT_INODE else self.root_ino  # _real(inode)
        node = self.runner.cache.decoded_if_held(*self.inodes.inode_row(ino))
        return self._entry(ino, node if node is not None else await self._get(ino))

    @modifying
    async def setattr(self, inode, attr, fields, fh, ctx):
        ino = self._real(inode)
        if not (fields.update_size or fields.update_mode or fields.update_uid
                or fields.update_gid):
            return await self._set_times(
                ino, attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
                attr.st_ctime_ns if fields.update_ctime else None)
        kw = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        if fields.update_size and self.intent is not None:
            await self.intent.before_truncate(ino, self.files)
        fd = self.files.get(ino)
        if fields.update_size:
            kw["size"] = attr.st_size
            if fd is not None:
                fd.truncate(attr.st_size)
            # The kernel cuts its pages once answered: no push may land after.
            await pagepush.settled(self.runner, ino)
            opened = self.files.get(ino)
            if opened is not fd and opened is not None:
                # Opened while the pushes settled: it read the size before the cut.
                opened.truncate(attr.st_size)
            fd = opened
        if fd is None and not fields.update_size:
            node = self._unnamed(ino)
            if node is not None:
                return self._unstored_entry(ino, node, time.time_ns(), kw)
        change = functools.partial(self.inodes.setattr, ino=ino, **kw)
        if fd is not None and (fields.update_size or
                               (fields.update_mtime and not fd.writeback_cache)):
            # The store's size must not lag behind a size we now report, nor
            # a later flush set the mtime given here: the buffered data goes
            # first, in the same store call.
            new = await fd.flush(then=change)
        else:
            new = await self.runner.change(change)
        return self._entry(ino, new)

    async def _set_times(self, ino: int, atime_ns, mtime_ns, ctime_ns):
        """setattr of times alone (None: not set), most of all the kernel's:
        with the writeback cache it keeps a file's mtime and ctime and sends
        them after writes, and again for a deleted file it still caches."""
        fd = self.files.get(ino)
        if fd is None:
            node = self._unnamed(ino)
            if node is not None:
                return self._unstored_entry(ino, node, time.time_ns(), {
                    "atime_ns": atime_ns, "mtime_ns": mtime_ns, "ctime_ns": ctime_ns})
        elif mtime_ns is not None and not fd.writeback_cache:
            # A later flush must not set the mtime given here: the buffered
            # data goes first, in the same store call.
            return self._entry(ino, await fd.flush(then=functools.partial(
                self.inodes.set_times, ino=ino, atime_ns=atime_ns, mtime_ns=mtime_ns,
                ctime_ns=ctime_ns)))
        # Times alone may go ahead of an fsync through the intent log.
        new = await self.runner.change(self.inodes.set_times, ino, atime_ns, mtime_ns, ctime_ns,
                                       loggable=True)
        return self._entry(ino, new)

    def _unstored_entry(self, ino: int, node: Inode, now_ns: int, kw: dict):
        """The answer to a setattr of a deleted file (node: its row, to read
        only) that the kernel still caches: no one can see it again, so what
        is set is not stored."""
        return self._entry(ino, set_attrs(node.copy(), now_ns, **kw))

    # -- names ----------------------------------------------------------------

    async def _create(self, parent_inode, name, mode, ctx, rdev=0, target=b""):
        parent = self._real(parent_inode)
        return await self.runner.change(
            self.inodes.create, parent, name, mode, ctx.uid, ctx.gid, rdev, target)

    @modifying
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        ino, inode = await self._create(parent_inode, name, mode, ctx, rdev=rdev)
        return self._entry_counted(ino, inode)

    @modifying
    async def mkdir(self, parent_inode, name, mode, ctx):
        ino, inode = await self._create(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx)
        return self._entry_counted(ino, inode)

    @modifying
    async def symlink(self, parent_inode, name, target, ctx):
        ino, inode = await self._create(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target)
        return self._entry_counted(ino, inode)

    @handler
    async def readlink(self, inode, ctx=None):
        node = await self._get(self._real(inode))
        if not stat.S_ISLNK(node.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    @modifying
    async def link(self, inode, new_parent_inode, new_name, ctx):
        ino = self._real(inode)
        node = await self.runner.change(self.inodes.link, ino, self._real(new_parent_inode),
                                        new_name)
        return self._entry_counted(ino, node)

    @modifying
    async def unlink(self, parent_inode, name, ctx):
        await self._remove(self.inodes.unlink, self._real(parent_inode), name)

    @modifying
    async def rmdir(self, parent_inode, name, ctx):
        parent = self._real(parent_inode)
        if name == b".." and parent == self.root_ino:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        await self._remove(self.inodes.rmdir, parent, name)

    async def _remove(self, remove, parent: int, name: bytes) -> None:
        """Remove a name, then what it held if that was its last name and
        nothing else holds it (see _purge_if_unused)."""
        ino, gone = await self.runner.change(remove, parent, name)
        if gone:
            self._purge_if_unused(ino)

    @modifying
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        known = pyfuse3.RENAME_EXCHANGE | pyfuse3.RENAME_NOREPLACE
        if flags & ~known or flags == known:
            raise pyfuse3.FUSEError(errno.EINVAL)
        gone = await self.runner.change(
            functools.partial(self.inodes.rename, old_parent=self._real(parent_inode_old),
                              old_name=name_old, new_parent=self._real(parent_inode_new),
                              new_name=name_new,
                              noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
                              exchange=bool(flags & pyfuse3.RENAME_EXCHANGE)))
        if gone is not None:
            self._purge_if_unused(gone)

    def _purge_if_unused(self, ino: int) -> None:
        """Give back the space of an inode that lost its last name, once no
        open file holds it; its row goes once the kernel forgets the number
        too. In the background: nobody waits for it."""
        if ino in self.files:
            return
        if not self.lookups.get(ino):
            self.runner.submit(_let_go, self.inodes, ino, None, None)
            return
        # The kernel's forget usually comes right after: a forget that finds
        # this let-go still queued, and the last operation queued, leaves the
        # purge to it (see _hand_purge_over), one store operation for both.
        token = _LetGo()
        self._letting_go[ino] = token
        self._unclaimed.add(token)
        self.runner.submit(_let_go, self.inodes, ino, token, self._unclaimed)
        token.seq = self.runner.queued

    @handler
    async def forget(self, inode_list):
        gone = []
        for kino, nlookup in inode_list:
            ino = self._real(kino)
            left = self.lookups[ino] - nlookup
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)
                self._attrs.pop(ino, None)
                if ino not in self.files and not self._hand_purge_over(ino):
                    gone.append(ino)
        if gone:
            self.runner.submit(_purge_forgotten, self.inodes, gone)

    def _hand_purge_over(self, ino: int) -> bool:
        """Whether the let-go of ino's data is still queued and now purges
        its row too (the store thread has not claimed it: see _let_go).
        Only while nothing was queued after it: the kernel may still change
        the deleted file it holds (an xattr set through a descriptor's path,
        an open by number), and the purge must come after such a change, as
        the forget does, not ahead of it."""
        token = self._letting_go.pop(ino, None)
        if token is None or token.seq != self.runner.queued:
            return False
        try:
            self._unclaimed.remove(token)  # one step under the GIL, as the store thread's
        except KeyError:  # it ran, or runs now: the forget purges as usual
            return False
        return True

    # -- files ----------------------------------------------------------------

    async def _open_file(self, ino: int, size: int | None = None,
                         writing: bool = True) -> pyfuse3.FileInfo:
        fd = self.files.get(ino)
        if fd is None:
            if size is None:
                size = (await self._get(ino)).size
            fd = self.files[ino] = FileData(ino, size, self.inodes, self.runner, self.space,
                                            writeback_cache=self.enable_writeback_cache,
                                            intent=self.intent, push_pages=self.push_pages)
        fd.opens += 1
        fh = self._new_fh()
        self.handles[fh] = fd
        if writing:
            self._writing.add(fh)
            await fd.open_writer()
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.keep_cache)

    @handler
    async def open(self, inode, flags, ctx):
        if self.readonly and (flags & os.O_ACCMODE) != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        ino = self._real(inode)
        node = await self._get(ino)
        if stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        info = await self._open_file(ino, node.size, writing=(
            (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)))
        if self.atime and (flags & os.O_ACCMODE) != os.O_WRONLY:
            await self._accessed(ino, node)
        if flags & os.O_TRUNC and stat.S_ISREG(node.mode):
            # libfuse asks for atomic O_TRUNC: the kernel leaves the truncation
            # to us (it only drops its own pages and size).
            if self.readonly:
                raise pyfuse3.FUSEError(errno.EROFS)
            fd = self.handles[info.fh]
            try:
                if self.intent is not None:
                    await self.intent.before_truncate(ino, self.files)
                fd.truncate(0)
                await fd.flush(then=functools.partial(self.inodes.setattr, ino=ino, size=0))
            except BaseException:
                await self.release(info.fh)  # the kernel will not: the open failed
                raise
        return info

    @modifying
    async def create(self, parent_inode, name, mode, flags, ctx):
        ino, inode = await self._create(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        info = await self._open_file(ino, 0)
        return info, self._entry_counted(ino, inode)

    @handler
    async def read(self, fh, off, size):
        data = await self.handles[fh].read(off, size)
        self.metrics.bytes_read += len(data)
        return data

    @modifying
    async def write(self, fh, off, buf):
        fd = self.handles[fh]
        try:
            await self._admit(fd, off, len(buf))
            n = await fd.write(off, buf)
        except (pyfuse3.FUSEError, FusevolError) as e:
            if e.errno in SPACE_ERRORS:
                await self._cut_after_refusal(fd, off)
            raise
        self.metrics.bytes_written += n
        if fd.dirty_bytes >= BLOCK_WRITES_AT:
            await fd.flush()  # back-pressure: the store is behind
        elif fd.dirty_bytes >= FLUSH_AT and not fd.flush_lock.locked() and self.nursery:
            self.nursery.start_soon(self._flush_quietly, fd)
        return n

    @property
    def buffered_bytes(self) -> int:
        """Bytes written and held in memory by all open files."""
        return sum(f.buffered_bytes for f in self.files.values())

    async def _admit(self, fd: FileData, off: int, length: int) -> None:
        """Take a write only if it can be stored (quota, disk): ENOSPC or
        EDQUOT now rather than data dropped later."""
        if fd.error is not None:
            raise pyfuse3.FUSEError(fd.error)
        incoming = fd.new_bytes(off, length)
        if not incoming or self.space.shortfall(incoming, self.buffered_bytes) is None:
            return
        # Short by the quick count: store what is buffered, count exactly, decide.
        # The commit first: LMDB reuses the pages a batch freed (a deleted
        # file's data, given back in the background) only once it committed.
        for other in list(self.files.values()):
            await self._flush_quietly(other)
        await self.runner.sync()
        self.space.used, self.space.store_slack = await self.runner.run(
            _usage_and_slack, self.inodes, foreseen=True)
        err = fd.error or self.space.shortfall(incoming, self.buffered_bytes)
        if err is not None:
            fd.refuse(err)
            raise pyfuse3.FUSEError(err)

    async def _cut_after_refusal(self, fd: FileData, off: int) -> None:
        """A write at `off` was refused: what the worker took past it must not
        stay behind a hole (filedata.py). The kernel's pages of what is cut go
        too, so that it does not go on showing them."""
        try:
            cut = await fd.cut_unstored(off)
        except FusevolError as e:
            log.error("inode %d: cannot cut the file after a refused write: %s", fd.ino, e)
            return
        if cut and self.nursery:
            self.nursery.start_soon(self._forget_pages, fd.ino)

    async def _flush_quietly(self, fd: FileData) -> None:
        try:
            await fd.flush()
        except Exception as e:  # kept dirty; reported by the next close or fsync
            log.warning("background flush of inode %d failed: %s", fd.ino, e)

    @handler
    async def flush(self, fh):
        fd = self.handles[fh]
        await fd.flush()
        fd.take_error()

    @handler
    async def fsync(self, fh, datasync):
        fd = self.handles[fh]
        size = fd.size
        if self.intent is not None:
            await self.intent.fsync(fd, self.files)
        else:
            await fd.flush(durable=True)
        fd.take_error()
        fd.synced(size)

    @handler
    async def release(self, fh):
        fd = self.handles.pop(fh)
        fd.opens -= 1
        if fh in self._writing:
            self._writing.discard(fh)
            fd.close_writer()
        try:
            await fd.flush()
        except Exception as e:
            if fd.opens == 0:
                # close(2) got this error from flush already; nobody is left to retry for.
                log.warning("dropping unstored data of inode %d: %s", fd.ino, e)
                lowest = min(fd.dirty, default=None)
                fd.drop()
                if lowest is not None and getattr(e, "errno", None) in SPACE_ERRORS:
                    # A range past it may be stored already.
                    await self._cut_after_refusal(fd, lowest * fd.bs)
                if self.nursery:  # the kernel's pages of it were never stored
                    self.nursery.start_soon(self._forget_pages, fd.ino)
        finally:
            if fd.opens == 0 and not fd.dirty and self.files.get(fd.ino) is fd:
                del self.files[fd.ino]
                if self._unnamed(fd.ino) is not None:
                    self._purge_if_unused(fd.ino)

    def _unnamed(self, ino: int) -> Inode | None:
        """The inode (to read only) if it has no name left, else None."""
        node = self.runner.cache.decoded_if_held(*self.inodes.inode_row(ino))
        if node is None:
            with self.runner.cache.reader() as txn:
                try:
                    node = self.inodes.peek(txn, ino)
                except FusevolError:
                    return None
        return node if node.nlink == 0 else None

    async def _accessed(self, ino: int, node: Inode) -> None:
        """Keep atime as relatime or strictatime asks. The kernel leaves atime of
        FUSE inodes to us and serves cached pages without asking, so an open for
        reading (or of a folder) stands for the reads that follow it."""
        now = time.time_ns()
        if self.atime == "relatime" and node.mtime_ns < node.atime_ns and \
                node.ctime_ns < node.atime_ns and now - node.atime_ns < RELATIME_AGE_NS:
            return
        await self.runner.change(functools.partial(
            self.inodes.setattr, ino=ino, atime_ns=now, ctime_ns=node.ctime_ns))
        # The kernel's copy of the attributes is stale now. Dropping only attributes
        # waits on no page, so it is safe while the kernel waits for this open.
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, self._kernel(ino), True)
        except OSError:
            pass  # the kernel forgot the inode already

    async def _forget_pages(self, ino: int) -> None:
        # Not from inside a handler: the kernel may wait on this very loop.
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, self._kernel(ino), False)
        except OSError:
            pass  # the kernel forgot the inode already

    async def flush_all(self, durable: bool = False, last=None):
        """Store every open file's buffers; with `durable`, commit durably.
        `last`: an async function that does that commit itself (after work of
        its own); flush_all returns what it returns."""
        if durable and self.intent is not None:
            return await self.intent.checkpoint(self.files, last)  # the same, and the log covered
        for fd in list(self.files.values()):
            await fd.flush()
        if durable:
            return await (last() if last is not None else self.runner.sync())

    async def take_snapshot(self, name: str | None) -> str:
        """The CLI's snapshot of this volume (registry.snapshot_by_worker):
        what this worker holds stored, then the snapshot taken, in one durable
        commit (one sync; the CLI's own snapshot after a flush took two). Its name."""
        if self.volume is None or self.readonly:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        from ..store import snapshots  # the tree writer: not for workers that take none

        snap = await self.flush_all(durable=True, last=functools.partial(
            self.runner.run_unrecorded, snapshots.create, self.volume, name, self.inodes.vid,
            durable=True))
        return snap.name

    async def run_flusher(self) -> None:
        """Bound how long written data stays only in memory."""
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            for fd in list(self.files.values()):
                if fd.dirty or fd.times_pending:
                    await self._flush_quietly(fd)

    # -- directories ----------------------------------------------------------

    @handler
    async def opendir(self, inode, ctx):
        ino = self._real(inode)
        node = await self._get(ino)
        if not stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self.atime:
            await self._accessed(ino, node)
        fh = self._new_fh()
        self.dir_handles[fh] = (ino, None)
        return fh

    @handler
    async def readdir(self, fh, start_id, token):
        ino, listing = self.dir_handles[fh]
        if listing is None or start_id == 0:
            listing = await self.runner.run(self.inodes.list_dir, ino)
            self.dir_handles[fh] = (ino, listing)
        # `.` and `..` come first (offsets 1 and 2). The kernel makes no dentry
        # for them and takes no lookup reference (fuse_direntplus_link skips
        # both names), so they must not count one here either: forget() would
        # never give it back.
        if start_id < len(DOTS):
            parent_of = self.root_ino if ino == self.root_ino else None  # `..` stays in the view
            dots = await self.runner.read(_dot_entries, self.inodes, ino, parent_of)
            for index in range(start_id, len(DOTS)):
                name, dot_ino, node = dots[index]
                if not pyfuse3.readdir_reply(token, name, self._entry(dot_ino, node), index + 1):
                    return
        # The listing fixes the names and their order (offsets stay valid while
        # entries come and go); what the kernel learns of each entry is read
        # when it is sent, as readdirplus makes it a cached lookup: an entry
        # removed since must not come back to life in the kernel's cache.
        for first in range(max(start_id - len(DOTS), 0), len(listing), READDIR_BATCH):
            part = listing[first:first + READDIR_BATCH]
            current = await self.runner.read(_current_entries, self.inodes, ino, first, part)
            for index, name, child, node in current:
                offset = len(DOTS) + index + 1
                if not pyfuse3.readdir_reply(token, name, self._entry(child, node), offset):
                    return
                self.lookups[child] += 1

    @handler
    async def releasedir(self, fh):
        self.dir_handles.pop(fh, None)

    @handler
    async def fsyncdir(self, fh, datasync):
        await self.runner.sync()

    # -- the filesystem -----------------------------------------------------

    @handler
    async def statfs(self, ctx):
        st = os.statvfs(self.runner.store.path)
        used = await self.runner.run(self.inodes.usage, foreseen=True)
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        disk_free = st.f_bavail * st.f_frsize
        quota = self.space.quota
        if quota is not None:
            total = quota
            free = max(0, min(disk_free, quota - used.logical_bytes))
        else:
            total = st.f_blocks * st.f_frsize
            free = disk_free
        s.f_blocks = total // 4096
        s.f_bfree = s.f_bavail = free // 4096
        s.f_files = used.inodes + (1 << 32)
        s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 255
        return s

    # -- extended attributes ------------------------------------------------
    # A volume with xattr=off answers ENOSYS: the kernel then answers every later
    # request of that kind itself with EOPNOTSUPP (fc->no_getxattr and its like),
    # the security.capability it asks before every write(2) among them, so writes
    # cost no round trip here. removexattr still comes, for the CLI's flush.

    @handler
    async def getxattr(self, inode, name, ctx):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        _check_xattr_name(name)
        if name == FLUSH_XATTR:
            # The CLI's way to make this worker store everything before a
            # snapshot (trusted.* names are for root only, the kernel checks).
            await self.flush_all(durable=True)
            return b"ok"
        if name.startswith(SNAPSHOT_XATTR):
            # Answered with the name it chose when the request named none (a
            # short one): os.getxattr asks again with a larger buffer for an
            # answer of more than 128 bytes, which would take a second snapshot.
            asked = name[len(SNAPSHOT_XATTR):].decode(errors="surrogateescape")
            made = await self.take_snapshot(asked or None)
            return b"" if asked else made.encode()
        value = await self.runner.read(self.inodes.find_xattr, self._real(inode), name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    @modifying
    async def setxattr(self, inode, name, value, ctx):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        _check_xattr_name(name)
        if name.startswith(POSIX_ACL_PREFIX):
            # Permissions are the kernel's mode checks (default_permissions): an
            # ACL kept as a plain xattr would look in force and not be. One that
            # says no more than a mode is that mode, as on other filesystems.
            bits = acl.mode_bits(value) if name == ACL_ACCESS else None
            if bits is None:
                raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
            await self.runner.change(_chmod_bits, self.inodes, self._real(inode), bits)
            pyfuse3.invalidate_inode(inode, attr_only=True)  # the kernel's mode is stale
            return
        await self.runner.change(self.inodes.setxattr, self._real(inode), name, value)

    @handler
    async def listxattr(self, inode, ctx):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        names = await self.runner.run(self.inodes.listxattr, self._real(inode))
        if ctx.uid != 0:
            # trusted.* is for the administrator (the kernel refuses the rest of
            # them reading one); other filesystems leave them out of listings too.
            names = [n for n in names if not n.startswith(TRUSTED_PREFIX)]
        return names

    @modifying
    async def removexattr(self, inode, name, ctx):
        if name == FLUSH_XATTR:
            # The CLI's flush where getxattr cannot reach this worker (xattr=off):
            # ENODATA once everything is stored (success would make the kernel
            # renew the folder's ctime and write it back here).
            await self.flush_all(durable=True)
            raise pyfuse3.FUSEError(errno.ENODATA)
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)  # not ENOSYS: the flush above needs it
        _check_xattr_name(name)
        if name.startswith(POSIX_ACL_PREFIX):
            # No ACL is ever kept, so removing one succeeds: the kernel turns an
            # ACL equal to the mode (`setfacl -b`) into this removal.
            return
        await self.runner.change(self.inodes.removexattr, self._real(inode), name)


class _LetGo:
    """A queued let-go of an unnamed inode's data, claimed by whichever comes
    first: the store thread running it, or the kernel's forget of the number.
    `seq`: its place in the store thread's queue."""
    __slots__ = ("seq",)


def _let_go(txn, inodes: Inodes, ino: int, token: _LetGo | None, unclaimed: set | None) -> None:
    """Give back an unnamed, closed inode's data; its row too once forgotten:
    at once (no token: the kernel held no reference), or when the forget
    claimed the token before this ran."""
    if token is not None:
        try:
            unclaimed.remove(token)  # one step under the GIL, as the trio thread's
        except KeyError:  # the forget came first and left the purge to this
            # It has no name (none can come back to a number without one),
            # so no read of its orphan mark first: purge clears it.
            inodes.purge(txn, ino)
            return
        inodes.free_data(txn, ino)
        return
    inodes.purge(txn, ino)


def _usage_and_slack(txn, inodes: Inodes) -> tuple[int, int]:
    # The data files' dead ranges (a deleted file's large chunks) given back
    # to the disk now, where the next commits would: the last commit made
    # durable first, as punching what it let go of needs.
    txn.store.sync()
    datafiles.reclaim(txn, synced=True)
    return inodes.usage(txn).logical_bytes, txn.free_pages_bytes()


def _check_xattr_name(name: bytes) -> None:
    """Only names of the namespaces Linux filesystems keep: the kernel passes any
    name on to FUSE, where ext4 answers EOPNOTSUPP (EINVAL for a bare prefix)."""
    if not name.startswith(XATTR_NAMESPACES):
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
    if name in XATTR_NAMESPACES:
        raise pyfuse3.FUSEError(errno.EINVAL)


def _chmod_bits(txn, inodes: Inodes, ino: int, bits: int) -> None:
    """Set the permission bits of ino, keeping its setuid, setgid and sticky bits."""
    mode = inodes.get(txn, ino).mode
    inodes.setattr(txn, ino, mode=(mode & ~0o777) | bits)


def _purge_forgotten(txn, inodes: Inodes, inos: list[int]) -> None:
    """Purge the inodes the kernel forgot that have no name left."""
    for ino in inos:
        inodes.purge_if_orphan(txn, ino)


def _found(txn, inodes: Inodes, parent: int, name: bytes) -> tuple:
    """(ino, inode to read only) of parent/name, or (None, None)."""
    ino = inodes.find(txn, parent, name)
    return (ino, inodes.peek(txn, ino)) if ino is not None else (None, None)


def _dot_entries(txn, inodes: Inodes, ino: int, parent: int | None) -> list:
    """(name, ino, inode) of `.` and `..` of directory ino (parent: its `..`
    when that is not the stored parent)."""
    node = inodes.get(txn, ino)
    if parent is None:
        parent = node.parent
    return [(b".", ino, node), (b"..", parent, node if parent == ino else inodes.get(txn, parent))]


def _current_entries(txn, inodes: Inodes, parent: int, first: int, part) -> list:
    """(offset, name, ino, inode) of the listed names that still exist, as they are now."""
    out = []
    for index, (name, _) in enumerate(part, first):
        try:
            child = inodes.lookup(txn, parent, name)
            out.append((index, name, child, inodes.get(txn, child)))
        except FusevolError as e:
            if e.errno != errno.ENOENT:
                raise
    return out
