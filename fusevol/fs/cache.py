"""The worker's copy of its volume's rows, so that requests rarely leave the trio thread.

The worker is the only writer of its volume's rows (a snapshot only records
tree ids in them). Every store operation it runs records the rows it writes;
they are applied here in the order the operations ran, before the operation's
caller resumes, each with the operation's sequence number. A row is then read
from here, or, when it is not here, from a read transaction of what is
committed: a row missing here was not changed by any operation that has
answered and is not on disk yet.

So lookups, getattr, getxattr and the block maps of reads are answered on the
trio thread without waiting for the store thread, even while it commits; and
changes are worked out here first (speculate.py). Anything that would write
from a read (a lazily cloned folder reached for the first time) raises
NeedsStore and runs on the store thread instead.
"""

import collections

from .. import native
from ..store import Store
from ..store.workerrows import WORKER_TABLES
# Rows kept once on disk; rows of operations not yet committed always stay.
MAX_ROWS = 200_000


class NeedsStore(Exception):
    """The operation cannot be answered here: run it on the store thread."""


class CacheCorePy:
    """The reads of the cache (get, decoded, decoded_if_held): a dozen calls a
    small file, in C when it was built (native/_fusevol_rows.c CacheCore);
    this is its twin. RowCache fills in the rest."""

    __slots__ = ("rows", "later", "_decoded", "_first_fresh", "owner", "__dict__")

    def get(self, table: str, key: bytes, reader: "CachedTxn"):
        if self.later:
            self._catch_up()
        entry = self.rows.get((table, key))
        if entry is not None:
            return entry[0]
        first_fresh = self._first_fresh
        if first_fresh is not None and self.owner is not None:
            owner = self.owner(table, key)
            if owner is not None and owner >= first_fresh:
                return None  # a row of an inode this worker made: here, or none
        return self._get_missing(table, key, reader)

    def decoded(self, key: bytes, raw, decode):
        """decode(raw) of row `raw` (under key), shared: not to be changed."""
        if raw is None:
            return None
        seen = self._decoded.get(key)
        if seen is not None and seen[0] is raw and seen[1] is decode:
            return seen[2]
        value = decode(raw)
        decoded = self._decoded
        if len(decoded) >= MAX_ROWS:
            decoded.clear()
        decoded[key] = (raw, decode, value)
        return value

    def decoded_if_held(self, table: str, key: bytes, decode):
        """decode(row) of the row under (table, key), shared as `decoded` gives
        it, when the cache holds that row; else None (then ask a reader):
        getattr in one step. The trio thread's, as every reader's."""
        if self.later:
            self._catch_up()
        entry = self.rows.get((table, key))
        if entry is None or entry[0] is None:
            return None
        raw = entry[0]
        seen = self._decoded.get(key)
        if seen is not None and seen[0] is raw and seen[1] is decode:
            return seen[2]
        return self.decoded(key, raw, decode)


if native.rows is not None:
    native.rows.cache_configure(MAX_ROWS)
    CacheCore = native.rows.CacheCore
else:
    CacheCore = CacheCorePy


class RowCache(CacheCore):
    def __init__(self, store: Store):
        self.store = store
        # (table, key) -> (value or None for deleted, sequence number of the
        # operation that wrote it; 0 for a row read from what is committed)
        self.rows: dict[tuple[str, bytes], tuple[bytes | None, int]] = {}
        self.committed = 0  # operations up to this number are on disk
        # Rows of operations nobody waited for, handed over by the store
        # thread; applied before the next read (sequence numbers order them):
        # a reader that looks in `rows` itself looks here first.
        self.later: collections.deque = collections.deque()
        # Inodes numbered from `_first_fresh` on were made by this worker: all
        # their rows are here (none evicted since), so a row of theirs missing
        # here does not exist, and the store is not asked (see know_fresh).
        self._first_fresh: int | None = None
        self._next_ino = None
        self.owner = self.counter_row = None  # (see know_fresh; speculate.unchanged reads them too)
        # key -> (row, its decoder, what it decodes to): readers that only look
        # (getattr, lookup, a flush's checks) share one decoded copy per row.
        self._decoded: dict[bytes, tuple] = {}

    def know_fresh(self, owner, next_ino, counter_row=None) -> None:
        """owner(table, key): the inode a row belongs to, or None; next_ino(txn):
        the number the next new inode gets, kept in row `counter_row` (table,
        key). Call before serving requests."""
        self.owner, self._next_ino, self.counter_row = owner, next_ino, counter_row
        with self.reader() as txn:
            self._first_fresh = next_ino(txn)

    def apply_later(self, writes, seq: int) -> None:
        """From the store thread: rows for `apply`, applied before the next read."""
        self.later.append((writes, seq))

    def _catch_up(self) -> None:
        later = self.later
        while later:
            self.apply(*later.popleft())

    def apply(self, writes, seq: int) -> None:
        """Rows operation `seq` wrote, as (table, key, value or None). A row a
        later operation wrote already stays (a correction arriving late)."""
        rows = self.rows
        for table, key, value in writes:
            old = rows.get((table, key))
            if old is None or old[1] <= seq:
                rows[table, key] = (value, seq)
        if len(rows) > MAX_ROWS:
            self._evict()

    def apply_newest(self, entries: dict) -> None:
        """apply, for the rows of the operation queued last, given as this
        cache keeps them ((table, key) -> (value or None, seq)): no row here
        is newer, so they replace what is here in one step."""
        rows = self.rows
        rows.update(entries)
        if len(rows) > MAX_ROWS:
            self._evict()

    def _evict(self) -> None:
        committed = self.committed
        self.rows = {k: v for k, v in self.rows.items() if v[1] > committed}
        self._decoded.clear()
        if self._first_fresh is not None:  # rows of inodes made so far may be gone now
            with self.reader() as txn:
                self._first_fresh = self._next_ino(txn)

    def _get_missing(self, table: str, key: bytes, reader: "CachedTxn"):
        """get, for a row not here that may be stored."""
        value = reader.committed(table, key)
        if table in WORKER_TABLES:
            self.rows[table, key] = (value, 0)
        return value

    def reader(self) -> "CachedTxn":
        return CachedTxn(self)


class CachedTxn:
    """The read side of a Txn: rows from the cache, else from what is committed."""

    write = False
    now_ns = None
    buffers = False
    packs = None  # what packs.py asks of a transaction: it adds to none
    data = None   # nor stages in a data file (datafiles.py)

    def __init__(self, cache: RowCache):
        self.cache = cache
        self._txn = None
        self.pack_cache = None  # packs read in the current read transaction

    def root(self) -> "CachedTxn":
        return self

    @property
    def store(self):
        return self.cache.store

    def get(self, table: str, key: bytes):
        return self.cache.get(table, key, self)

    def peek(self, table: str, key: bytes, decode):
        cache = self.cache
        return cache.decoded(key, cache.get(table, key, self), decode)

    def committed(self, table: str, key: bytes):
        if self._txn is None:
            self._txn = self.cache.store.begin_read()
        return self._txn.get(table, key)

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        self.pack_cache = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # Everything else is the store thread's.
    def put(self, *args, **kw):
        raise NeedsStore

    delete = delete_prefix = scan = cursor = vstats = add_vstats = check_space = put
