"""The worker's copy of its volume's rows, so that reads never leave the trio thread.

The worker is the only writer of its volume's inodes, entries, xattrs and
block maps. Every store operation it runs records the rows it writes; they
are applied here, in the order the operations ran, before the operation's
caller resumes. A row is then read from here, or, when it is not here, from a
read transaction of what is committed: a row missing here was not changed by
any operation that has answered and is not on disk yet.

So lookups, getattr, getxattr and the block maps of reads are answered on the
trio thread without waiting for the store thread, even while it commits.
Anything that would write (a lazily cloned folder reached for the first time)
raises NeedsStore and runs on the store thread instead.
"""

from ..store import Store

# The tables whose rows of this volume only this worker writes.
CACHED_TABLES = frozenset({"inodes", "dirents", "xattrs", "blocks"})
# Rows kept once on disk; rows written by batches not yet committed always stay.
MAX_ROWS = 200_000


class NeedsStore(Exception):
    """The operation writes: run it on the store thread."""


class RowCache:
    def __init__(self, store: Store):
        self.store = store
        self.rows: dict[tuple[str, bytes], tuple[bytes | None, int]] = {}
        self.committed = 0  # batches up to this number are on disk

    def apply(self, writes: list, batch: int) -> None:
        """Rows an operation of `batch` wrote (None: deleted)."""
        rows = self.rows
        for table, key, value in writes:
            rows[table, key] = (value, batch)
        if len(rows) > MAX_ROWS:
            self._evict()

    def _evict(self) -> None:
        committed = self.committed
        self.rows = {k: v for k, v in self.rows.items() if v[1] > committed}

    def clear(self) -> None:
        self.rows = {}

    def reader(self) -> "CachedTxn":
        return CachedTxn(self)


class CachedTxn:
    """The read side of a Txn: rows from the cache, else from what is committed."""

    write = False

    def __init__(self, cache: RowCache):
        self.cache = cache
        self._txn = None

    def get(self, table: str, key: bytes):
        entry = self.cache.rows.get((table, key))
        if entry is not None:
            return entry[0]
        store = self.cache.store
        if self._txn is None:
            self._txn = store._begin(write=False)
        value = self._txn.get(key, db=store.dbs[table])
        if table in CACHED_TABLES:
            self.cache.rows[table, key] = (value, 0)
        return value

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # Everything else is the store thread's.
    def put(self, *args, **kw):
        raise NeedsStore

    delete = delete_prefix = scan = cursor = vstats = add_vstats = check_space = put
