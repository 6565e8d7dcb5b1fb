"""The LMDB environment: where it lives, how it is opened, grown and written.

One environment per host holds every volume. Several processes open it at
once (the driver daemon, one FUSE worker per mounted volume, the CLI); LMDB
lets them read in parallel and queues writers on a lock in ``lock.mdb``.
"""

import contextlib
import errno
import os
import threading
import time

import lmdb

from ..errors import FusevolError, NoSpace
from ..logs import logger
from . import datafiles, schema
from .names import DEFAULT_STORE, resolve_path  # noqa: F401 (callers take them from here too)

log = logger(__name__)

# A huge map costs only address space; it is doubled when half used.
INITIAL_MAP_SIZE = int(os.environ.get("FUSEVOL_MAP_SIZE", 1 << 40))
# Writers get ENOSPC while less than this is free, so a commit never meets a full disk.
SPACE_RESERVE = 64 << 20


class Txn:
    """An LMDB transaction with table lookup by name and counters to fold in at commit.

    Counters (store-wide chunk totals, per-volume usage) are kept as deltas and
    written once per transaction, so hot rows are not rewritten per chunk.
    """

    def __init__(self, store: "Store", txn: lmdb.Transaction, write: bool,
                 parent: "Txn | None" = None, buffers: bool = False):
        self.store = store
        self.txn = txn
        self.write = write
        self.parent = parent
        self.buffers = buffers  # values are views into the map (read transactions only)
        self.packs = None       # on a root write transaction: the packs it adds to (packs.py)
        self.data = None        # on a root write transaction: the data file writer it stages in
        self.pack_cache = None  # packs read without buffers, kept for the next reads
        self.chunk_delta = [0, 0, 0]  # chunks, raw bytes, stored bytes
        self.vstat_delta: dict[int, list[int]] = {}
        # When a list: every (table, key, value or None) this transaction
        # writes to the tables in `recorded`, for a reader that keeps a copy
        # of those rows (fs/cache.py).
        self.writes: list | None = None
        self.recorded: frozenset[str] = frozenset()
        self.now_ns: int | None = None  # the time operations record (None: the clock's)

    def get(self, table: str, key: bytes):
        return self.txn.get(key, db=self.store.dbs[table])

    def abort(self) -> None:
        """End a read transaction of Store.begin_read."""
        self.txn.abort()

    def peek(self, table: str, key: bytes, decode):
        """The row under key decoded, or None: to read only (a worker's reader
        hands out one decoded copy of a row to every reader, fs/cache.py)."""
        raw = self.txn.get(key, db=self.store.dbs[table])
        return decode(raw) if raw is not None else None

    def root(self) -> "Txn":
        txn = self
        while txn.parent is not None:
            txn = txn.parent
        return txn

    def defer(self, fn, *args) -> None:
        """fn(self, *args), for a change whose outcome the caller does not read
        (a chunk reference taken): a change worked out ahead applies it later
        (fs/speculate.py); here it runs now."""
        fn(self, *args)

    def put(self, table: str, key: bytes, value: bytes, overwrite: bool = True) -> bool:
        done = self.txn.put(key, value, db=self.store.dbs[table], overwrite=overwrite)
        if done and self.writes is not None and table in self.recorded:
            self.writes.append((table, bytes(key), bytes(value)))
        return done

    def put_many(self, table: str, rows: list[tuple[bytes, bytes]]) -> None:
        """put() of each (key, value), in one call (rows in key order share pages)."""
        if not rows:
            return
        self.txn.cursor(db=self.store.dbs[table]).putmulti(rows)
        if self.writes is not None and table in self.recorded:
            self.writes.extend((table, bytes(key), bytes(value)) for key, value in rows)

    def delete(self, table: str, key: bytes) -> bool:
        if self.writes is not None and table in self.recorded:
            self.writes.append((table, bytes(key), None))
        return self.txn.delete(key, db=self.store.dbs[table])

    def cursor(self, table: str) -> lmdb.Cursor:
        return self.txn.cursor(db=self.store.dbs[table])

    def scan(self, table: str, prefix: bytes, start: bytes | None = None):
        """Yield (key, value) of every row whose key starts with prefix, from start on."""
        cur = self.cursor(table)
        if not cur.set_range(start if start is not None else prefix):
            return
        n = len(prefix)
        for key, value in cur:
            if key[:n] != prefix:  # (keys may be views: no startswith)
                return
            yield key, value

    def delete_prefix(self, table: str, prefix: bytes) -> int:
        cur = self.cursor(table)
        n = 0
        if cur.set_range(prefix):
            while cur.key().startswith(prefix):
                n += 1
                if self.writes is not None and table in self.recorded:
                    self.writes.append((table, bytes(cur.key()), None))
                if not cur.delete():
                    break
        return n

    def pending_bytes(self) -> int:
        """Chunk bytes this transaction (and its parents) will write at commit."""
        txn, total = self, 0
        while txn is not None:
            total += txn.chunk_delta[2]
            txn = txn.parent
        return total

    def check_space(self, incoming: int) -> None:
        """Raise NoSpace unless the store can take `incoming` more bytes: free
        space on its disk plus pages LMDB has freed inside its file."""
        need = incoming + max(0, self.pending_bytes()) + SPACE_RESERVE
        if self.store.disk_free() >= need:
            return
        # Room that comes back: pages LMDB has freed inside its file, and the
        # data files' dead ranges (punched by the next commits: datafiles.py).
        if self.store.disk_free() + self.free_pages_bytes() + datafiles.dead_bytes(self) < need:
            raise NoSpace("no space left on the store's disk")

    def free_pages_bytes(self) -> int:
        env = self.store.env
        used = 0
        for stats in [env.stat()] + [self.txn.stat(db) for db in self.store.dbs.values()]:
            used += stats["branch_pages"] + stats["leaf_pages"] + stats["overflow_pages"]
        file_pages = env.info()["last_pgno"] + 1
        return max(0, file_pages - used - 2) * env.stat()["psize"]  # 2 meta pages

    def add_vstats(self, vid: int, logical_bytes: int = 0, inodes: int = 0) -> None:
        d = self.vstat_delta.setdefault(vid, [0, 0])
        d[0] += logical_bytes
        d[1] += inodes

    def vstats(self, vid: int) -> schema.VolumeStats:
        """A volume's counters as this transaction sees them (pending changes included)."""
        raw = self.get("vstats", schema.u64(vid))
        st = schema.VolumeStats.unpack(raw) if raw else schema.VolumeStats()
        txn = self
        while txn is not None:
            lb, ino = txn.vstat_delta.get(vid, (0, 0))
            st.logical_bytes += lb
            st.inodes += ino
            txn = txn.parent
        return st

    def merge_into(self, parent: "Txn") -> None:
        for i, v in enumerate(self.chunk_delta):
            parent.chunk_delta[i] += v
        for vid, (lb, ino) in self.vstat_delta.items():
            parent.add_vstats(vid, lb, ino)

    def chunk_totals(self) -> list[int]:
        """The store's chunks, their raw and their stored bytes, as committed."""
        raw = self.get("meta", b"chunk_totals")
        return [schema.read_u64(raw, i * 8) for i in range(3)] if raw else [0, 0, 0]

    def set_chunk_totals(self, totals: list[int]) -> None:
        """Write the totals whole (gc's recount): what this transaction added is in them."""
        self.chunk_delta = [0, 0, 0]
        self.put("meta", b"chunk_totals", b"".join(schema.u64(t) for t in totals))

    def fold_counters(self) -> None:
        if any(self.chunk_delta):
            raw = self.get("meta", b"chunk_totals")
            totals = [schema.read_u64(raw, i * 8) for i in range(3)] if raw else [0, 0, 0]
            totals = [t + d for t, d in zip(totals, self.chunk_delta)]
            self.put("meta", b"chunk_totals", b"".join(schema.u64(t) for t in totals))
            self.chunk_delta = [0, 0, 0]
        for vid, (lb, ino) in self.vstat_delta.items():
            raw = self.get("vstats", schema.u64(vid))
            st = schema.VolumeStats.unpack(raw) if raw else schema.VolumeStats()
            st.logical_bytes += lb
            st.inodes += ino
            self.put("vstats", schema.u64(vid), st.pack())
        self.vstat_delta = {}


def row_disk_bytes(psize: int, key_len: int, value_len: int) -> int:
    """What one row takes in the LMDB file (B-tree pages counted full): a node
    in a leaf page (header, key, value, its slot), or, past LMDB's largest
    node, overflow pages of the value's own and a node pointing to them."""
    node = 8 + key_len + value_len
    if node <= ((psize - 16) // 2 & ~1) - 2:
        return node + 2
    return ((16 - 1 + value_len) // psize + 1) * psize + 8 + key_len + 8 + 2


class Store:
    """The host's store. Use ``Store.open(path)``: LMDB forbids opening one
    environment twice in a process, so instances are shared per path."""

    _instances: dict[str, "Store"] = {}
    _instances_lock = threading.Lock()

    @classmethod
    def open(cls, path: str | None = None) -> "Store":
        path = resolve_path(path)
        with cls._instances_lock:
            store = cls._instances.get(path)
            if store is None or store.closed:
                store = cls._instances[path] = cls(path)
                # What fsyncs put in the intent log of a volume whose worker was
                # killed goes into the store before this process reads it.
                from . import intentlog
                intentlog.replay_unserved(store)
            return store

    def __init__(self, path: str, lock: bool = True):
        """`lock=False`: without LMDB's lock file, for a process that holds
        the store alone (compaction.py's exclusive lock)."""
        self.path = path
        self._free_seen = (float("-inf"), 0)  # (when, free bytes on the disk)
        self.closed = False
        self.data_readers = datafiles.Readers(path)
        self._data_writer: datafiles.Writer | None = None
        try:
            _private_dir(path)
            os.makedirs(os.path.join(path, "db"), mode=0o700, exist_ok=True)
        except OSError as e:
            raise FusevolError(f"cannot create store at {path}: {e.strerror}") from None
        try:
            self.env = lmdb.open(
                os.path.join(path, "db"),
                map_size=INITIAL_MAP_SIZE,
                max_dbs=len(schema.TABLES) + 4,
                max_readers=1024,
                # Values are 128 KiB chunks read whole: without the kernel's readahead
                # (MADV_RANDOM) every 4 KiB page of a cold chunk is its own disk read.
                readahead=True,
                mode=0o600,
                sync=True,
                # A commit syncs its pages; the meta page that makes it the newest
                # is synced by the next commit or by commit(durable=True). LMDB's
                # MDB_NOMETASYNC: a system crash may undo the last commit, never
                # damage the store. Batches that no fsync waits for save a sync.
                metasync=False,
                lock=lock,
            )
        except lmdb.Error as e:
            raise FusevolError(f"cannot open store at {path}: {e}") from None
        if lock:
            self.env.reader_check()  # free slots of readers that died
        self.dbs = {name: self.env.open_db(name.encode()) for name in schema.TABLES}
        # A read suffices for a store made before: every worker opens the store
        # on its way to serving, and a write would wait for the write lock.
        with self.read() as txn:
            version = txn.get("meta", b"format")
        if version is None or schema.read_u64(version) in schema.UPGRADES:
            with self.write() as txn:
                found = txn.get("meta", b"format")
                if found is None:
                    txn.put("meta", b"format", schema.u64(schema.FORMAT_VERSION))
                    txn.put("meta", b"block_size", schema.u64(schema.BLOCK_SIZE))
                elif schema.read_u64(found) in schema.UPGRADES:
                    # Every row of an older format reads as it is: only newer
                    # fusevols may open the store from now on.
                    txn.put("meta", b"format", schema.u64(schema.FORMAT_VERSION))
        with self.read() as txn:
            version = schema.read_u64(txn.get("meta", b"format"))
            if version != schema.FORMAT_VERSION:
                raise FusevolError(
                    f"store at {path} has format {version}, "
                    f"this fusevol reads format {schema.FORMAT_VERSION}"
                )
            self.block_size = schema.read_u64(txn.get("meta", b"block_size"))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._data_writer is not None:
                self._data_writer.release()
            self.data_readers.close()
            self.env.close()

    def data_writer(self) -> "datafiles.Writer | None":
        """This process's data file writer, for the write transactions of one
        thread (a worker's store thread): set it as the root Txn's `data`.
        None when data files are off (FUSEVOL_DATA_FILES=0)."""
        if self._data_writer is None and datafiles.enabled():
            self._data_writer = datafiles.Writer(self)
        return self._data_writer

    # -- transactions -------------------------------------------------------

    def _begin(self, write: bool, parent=None, buffers: bool = False) -> lmdb.Transaction:
        for _ in range(3):
            try:
                return self.env.begin(write=write, parent=parent, buffers=buffers)
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size and try again.
                self.env.set_mapsize(0)
        raise FusevolError("store map kept changing size; try again")

    def _grow_if_needed(self) -> None:
        info = self.env.info()
        used = (info["last_pgno"] + 1) * self.env.stat()["psize"]
        if used * 2 > info["map_size"]:
            new = info["map_size"] * 2
            log.info("growing store map to %d bytes", new)
            self.env.set_mapsize(new)

    def disk_free(self, max_age: float = 0.0) -> int:
        """Free bytes on the store's disk; a figure seen up to max_age seconds
        ago will do (a statvfs per write cost a tenth of the write path)."""
        seen_at, free = self._free_seen
        now = time.monotonic()
        if now - seen_at > max_age:
            st = os.statvfs(self.path)
            free = st.f_bavail * st.f_frsize
            self._free_seen = (now, free)  # one tuple: read by several threads
        return free

    def begin_read(self) -> Txn:
        """A read transaction the caller ends with Txn.abort(), for a reader that
        keeps one across calls (the worker's row cache) where read()'s block
        does not fit."""
        return Txn(self, self._begin(write=False), write=False)

    @contextlib.contextmanager
    def read(self, buffers: bool = False):
        """A read transaction; with buffers, values are views into the map,
        valid only until the block ends (no copy of a 128 KiB chunk)."""
        txn = self._begin(write=False, buffers=buffers)
        try:
            yield Txn(self, txn, write=False, buffers=buffers)
        finally:
            txn.abort()

    @contextlib.contextmanager
    def write(self, durable: bool = True, data_files: bool = False):
        """A write transaction committed at the end of the block (durably,
        unless not `durable`: then a system crash may undo it, never half of it).
        `data_files`: the large chunks it adds go to this process's data file
        (see begin_write)."""
        txn = self.begin_write(data_files)
        try:
            yield txn
        except BaseException:
            self.abort(txn)
            raise
        else:
            self.commit(txn, durable)
        finally:
            if txn.data is not None:  # (a daemon's pull would keep the buffer's pages)
                txn.data.give_back()

    def touch(self) -> None:
        """A commit that changes nothing the store reads (its format written
        again): LMDB lets the next writer take what the commit before it freed."""
        with self.write(durable=False) as txn:
            txn.put("meta", b"format", bytes(txn.get("meta", b"format")))

    @contextlib.contextmanager
    def writer_lock(self):
        """LMDB's writer lock, held for the block: a write transaction that
        writes nothing, so no process takes or frees a page meanwhile."""
        txn = self._begin(write=True)
        try:
            yield
        finally:
            txn.abort()

    def begin_write(self, data_files: bool = False) -> Txn:
        """A write transaction the caller ends with commit() or abort().
        `data_files`: the large chunks it adds go to this process's data file
        (data_writer), for transactions that add many (receive, import, pull):
        one thread's at a time, as LMDB's write lock makes them."""
        self._grow_if_needed()
        txn = Txn(self, self._begin(write=True), write=True)
        if data_files:
            txn.data = self.data_writer()
        return txn

    def abort(self, txn: Txn) -> None:
        """End a root write transaction unstored, and what it staged."""
        txn.txn.abort()
        if txn.data is not None:
            txn.data.dropped()

    def commit(self, txn: Txn, durable: bool = True) -> None:
        """Commit; with durable, return only once it survives a system crash."""
        writer, data_end = txn.data, None
        try:
            if txn.packs is not None:
                txn.packs.finish(txn)
                txn.packs = None
            datafiles.reclaim(txn)
            if writer is not None:
                # The staged chunks on the disk before any commit names them.
                data_end = writer.write_out(txn)
            txn.fold_counters()
            txn.txn.commit()
        except BaseException as e:
            txn.txn.abort()
            if writer is not None:
                writer.dropped()
            if not isinstance(e, lmdb.Error):
                raise
            if isinstance(e, lmdb.MapFullError) or _errno_of(e) == errno.ENOSPC:
                raise NoSpace("no space left on the store's disk") from None
            raise FusevolError(f"store commit failed: {e}") from None
        if writer is not None:
            writer.committed(data_end)
        if durable:
            try:
                self.env.sync(True)
            except lmdb.Error as e:
                raise FusevolError(f"store sync failed: {e}") from None

    @contextlib.contextmanager
    def nested(self, parent: Txn):
        """A child of a write transaction: all of it, or none of it, joins the parent."""
        child = Txn(self, self._begin(write=True, parent=parent.txn), write=True, parent=parent)
        root = parent.root()
        packs_mark = root.packs.mark() if root.packs is not None else None
        data_mark = root.data.mark() if root.data is not None else None
        try:
            yield child
        except BaseException:
            child.txn.abort()
            if data_mark is not None:  # what it staged goes too
                root.data.rollback(parent, data_mark)
            # The packs it added to go back to what they held before it.
            if packs_mark is None:
                root.packs = None
            else:
                root.packs.rollback(packs_mark)
            root.pack_cache = None
            raise
        child.txn.commit()
        child.merge_into(parent)

    def sync(self) -> None:
        self.env.sync(True)


class Unreadable(Exception):
    """A file or table does not read as the layout this code knows."""


def oldest_reader(store: "Store") -> int | None:
    """The oldest txn id a reader of the store (in any process) sees. A reader
    missed would have its pages punched: any line not read as LMDB 0.9 writes
    it stops the whole punch."""
    lines = store.env.readers().splitlines()
    if lines == ["(no active readers)"]:
        return None
    if not lines or lines[0].split() != ["pid", "thread", "txnid"]:
        raise Unreadable("LMDB's reader table does not read as expected")
    oldest = None
    for line in lines[1:]:
        fields = line.split()
        if len(fields) != 3 or not (fields[2] == "-" or fields[2].isdigit()):
            raise Unreadable(f"a line of LMDB's reader table does not read as expected: {line!r}")
        if fields[2] != "-":  # "-": a reader slot with no transaction
            txnid = int(fields[2])
            oldest = txnid if oldest is None else min(oldest, txnid)
    return oldest


FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = None


def fallocate(fd: int, offset: int, length: int,
              mode: int = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) -> None:
    global _libc
    if _libc is None:
        import ctypes
        # The process's own symbols (libc's among them): find_library("c")
        # would run ldconfig in a subprocess, from every worker's first upkeep.
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if _libc.fallocate(fd, mode, offset, length):
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _private_dir(path: str) -> None:
    """Create the store's folder for its owner alone, or make it so: it holds
    every volume's data, and every mounted volume (mnt/) is reached through it."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, 0o700)


def _errno_of(e: lmdb.Error) -> int | None:
    text = str(e)
    if "No space left" in text:
        return errno.ENOSPC
    return None
