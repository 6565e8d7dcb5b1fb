"""Changes worked out on the trio thread, applied by the store thread later.

A metadata change (create, rename, setattr, ...) is a store function run on a
transaction. The worker runs it first on a SpecTxn: reads come from the
worker's rows (cache.py), writes are collected. The kernel gets its answer at
once, the written rows join the cache, and the store thread applies the same
change later, in order with everything else the worker asked of it.

The store thread checks every row the first run read: when each still holds
what the first run saw, it keeps the collected rows (no Python logic again);
when one differs (a snapshot recorded a tree id meanwhile) it runs the
function again on the real transaction, at the first run's time. The rows
kept are written to the batch once each, the last value of each row, in key
order, before anything else reads the batch and before its commit: a file's
inode and its folder's row, which every change of a small file rewrites,
cost one write per batch, and each write to LMDB lets go of the GIL, which
the trio thread then waits to take back. Either way the operation is atomic
and reaches the disk in order: a crash loses only operations no fsync
covered, never part of one (a batch commits whole or not at all).

The check also covers operations queued before that change an inode's data
or attributes (a flush, an unlinked file's data given back): a change worked
out from a row such an operation then rewrote runs again after it, which is
the order the store thread applies them in anyway.

What a SpecTxn cannot serve raises NeedsStore and the operation waits for the
store thread instead: tables other workers share (chunks, trees: reference
counts), scans, and free space unless `room` says the bytes fit with a margin.
A reference to a chunk is the exception: taking one changes nothing the
operation reads, so it is deferred (Txn.defer) and taken by the store thread.
"""

from .. import native
from ..store.workerrows import MADE_BY_NAME_CHANGES, NAME_TABLES, WORKER_TABLES, numbers_between
from .cache import NeedsStore, RowCache


class SpecCorePy:
    """A change's state, and its reads and writes (get, put, delete): about
    35 calls a small file, in C when it was built (native/_fusevol_rows.c
    SpecCore); this is its twin. SpecTxn fills in the rest."""

    __slots__ = ("cache", "now_ns", "seq", "room", "deferred", "deferred_bytes", "reads",
                 "writes", "vstat_delta", "_reader")

    def __init__(self, cache: RowCache, now_ns: int, seq: int = 0, room=None, reader=None):
        self.cache = cache
        self.now_ns = now_ns
        self.seq = seq
        self.room = room  # room(incoming) -> True if that many bytes surely fit
        self.deferred: list = []
        self.deferred_bytes = 0
        self.reads: dict[tuple[str, bytes], bytes | None] = {}
        # The rows it wrote: (table, key) -> (value or None, seq), RowCache.rows' entries.
        self.writes: dict[tuple[str, bytes], tuple] = {}
        self.vstat_delta: dict[int, list[int]] = {}
        self._reader = reader if reader is not None else cache.reader()

    def get(self, table: str, key: bytes):
        k = (table, key)
        entry = self.writes.get(k)
        if entry is not None:
            return entry[0]
        reads = self.reads
        value = reads.get(k, _ABSENT)
        if value is not _ABSENT:  # what this run saw of it, and what the store thread checks
            return value
        cache = self.cache
        # The cache's row as RowCache.get would answer it (most rows a change
        # reads are there): one dictionary lookup. Only rows of WORKER_TABLES
        # are ever there.
        entry = None if cache.later else cache.rows.get(k)
        if entry is not None:
            value = entry[0]
        elif table in WORKER_TABLES:
            value = cache.get(table, key, self._reader)
            if value is not None and type(value) is not bytes:
                value = bytes(value)
        else:
            raise NeedsStore
        reads[k] = value
        return value

    def put(self, table: str, key: bytes, value: bytes, overwrite: bool = True) -> bool:
        if not overwrite:
            raise NeedsStore
        if table not in NAME_TABLES:
            # The row it replaces is part of what this run saw: the store
            # thread checks it (rows of names it does not, see `unchanged`).
            self.get(table, key)
        if type(key) is not bytes:
            key = bytes(key)
        self.writes[table, key] = (value if type(value) is bytes else bytes(value), self.seq)
        return True

    def delete(self, table: str, key: bytes) -> bool:
        if self.get(table, key) is None:
            # Nothing to delete (unlink's mark of a file with several names,
            # for most files): the store holds no such row when the change
            # is applied either (it is checked, or a row of names), so
            # nothing is written, and the store thread makes no LMDB call.
            return False
        self.writes[table, bytes(key)] = (None, self.seq)
        return True


if native.rows is not None:
    native.rows.spec_configure(NeedsStore, WORKER_TABLES, NAME_TABLES, MADE_BY_NAME_CHANGES)
    SpecCore = native.rows.SpecCore
else:
    SpecCore = SpecCorePy


class SpecTxn(SpecCore):
    """A change's transaction on the trio thread. `seq`: the sequence number
    the change gets if it is answered ahead; its rows are kept as the cache
    keeps them, (value or None, seq), so that they join the cache in one step."""

    __slots__ = ()
    write = True

    def peek(self, table: str, key: bytes, decode):
        return self.cache.decoded(key, self.get(table, key), decode)

    def defer(self, fn, *args) -> None:
        self.deferred.append((fn, args))

    def check_space(self, incoming: int) -> None:
        if self.room is None or not self.room(incoming):
            raise NeedsStore
        self.deferred_bytes += incoming

    def add_vstats(self, vid: int, logical_bytes: int = 0, inodes: int = 0) -> None:
        d = self.vstat_delta.setdefault(vid, [0, 0])
        d[0] += logical_bytes
        d[1] += inodes

    def row_writes(self) -> list:
        return [(table, key, value) for (table, key), (value, _) in self.writes.items()]

    def close(self) -> None:
        self._reader.close()

    def needs_store(self, *args, **kw):
        raise NeedsStore

    scan = cursor = delete_prefix = vstats = needs_store


# Rows only changes of names write (the store's NAME_TABLES): a change answered
# ahead wrote them to the cache at once, and one run by the store thread holds
# back every change answered ahead until its rows are in the cache (runner.py:
# it is not `foreseen`); nothing else writes them (see the store's note). So
# what a change read of them is what the store holds when it is applied: they
# are not read again.


def unchanged(txn, spec: SpecTxn, pending: dict, counter_row=None, owner=None,
              written=None) -> bool:
    """On the store thread: whether every row the first run read still holds
    what it saw (then `apply` collects its rows; else the change runs again,
    at spec.now_ns). `pending`: rows collected and not written yet, which the
    store is read behind; `written`: rows the open batch holds, as it holds
    them (the same form), read before the store too. `counter_row`, `owner`:
    the row of the volume's next inode number and owner(table, key), the
    inode a row belongs to (see `numbered`)."""
    first, end = numbered(spec, counter_row)
    return _reads_unchanged(spec.reads, pending, written, first, end, owner, txn.get)


def reads_unchanged_py(reads: dict, pending: dict, written, first: int, end: int, owner,
                       get) -> bool:
    """unchanged's loop over the rows a change read (about 8 a small file, on
    the store thread); in C when it was built (native/_fusevol_rows.c)."""
    for k, seen in reads.items():
        table, key = k
        if table in NAME_TABLES:
            continue
        entry = pending.get(k)
        if entry is None and written is not None:
            entry = written.get(k)
        if entry is not None:
            now = entry[0]
        elif seen is None and (table in MADE_BY_NAME_CHANGES or (
                first < end and first <= (owner(table, key) or 0) < end)):
            # Absent still: a row only changes of names make (the store's
            # note), or a row of an inode this change numbered (a new file's
            # row, which its put read first), of which none can exist (below).
            continue
        else:
            now = get(table, key)  # (an LMDB call lets go of the GIL)
            if now is not None:
                now = bytes(now)
        if now != seen:
            return False
    return True


def numbered(spec: SpecTxn, counter_row) -> tuple[int, int]:
    """The inode numbers a change handed out, first to end (none: first ==
    end). The counter is a row of names (NAME_TABLES): the store holds what
    the change read of it when it is applied, and numbers are never handed
    out twice, so no operation before it can have written a row of those
    inodes, and the store holds none."""
    after = spec.writes.get(counter_row) if counter_row is not None else None
    if after is None:  # most changes number nothing: one lookup
        return 0, 0
    before = spec.reads.get(counter_row)
    if before is None or after[0] is None:
        return 0, 0
    return numbers_between(before, after[0])


def apply(txn, spec: SpecTxn, pending: dict) -> None:
    """Collect what `spec` wrote into `pending`, (table, key) -> (value or
    None, seq), for write_rows: a row several changes of a batch write (a file's inode,
    its folder's) then costs one write to the store, of its last value. Its
    counters and chunk references go to the transaction now; they read no
    row of `pending`'s tables."""
    pending.update(spec.writes)
    for vid, (logical_bytes, inodes) in spec.vstat_delta.items():
        txn.add_vstats(vid, logical_bytes, inodes)
    for fn, args in spec.deferred:
        fn(txn, *args)


def write_rows(txn, pending: dict, written: dict | None = None) -> None:
    """Write the rows `apply` collected, table by table in key order (B-tree
    pages touched in sequence, puts in one call per table), and empty it
    (into `written`: the rows the batch holds).
    Puts that cannot fail half way on their own: an error breaks the batch.
    The keys are sorted per table, as bytes: a sort of the (table, key)
    pairs compared tuples, three times the cost for a batch of small files."""
    if not pending:
        return
    for table, deletes, puts in _rows_by_table(pending):
        for key in deletes:
            txn.delete(table, key)
        if puts:
            txn.cursor(table).putmulti(puts)
    if written is not None:
        written.update(pending)
    pending.clear()


def rows_by_table_py(pending: dict) -> list:
    """write_rows' rows, [(table, deleted keys, [(key, value) put])], tables
    and each one's keys in order; in C when it was built (native/_fusevol_rows.c)."""
    tables: dict = {}
    for table, key in pending:
        keys = tables.get(table)
        if keys is None:
            keys = tables[table] = []
        keys.append(key)
    out = []
    for table in sorted(tables):
        keys = tables[table]
        keys.sort()
        deletes, puts = [], []
        for key in keys:
            value = pending[table, key][0]
            if value is None:
                deletes.append(key)
            else:
                puts.append((key, value))
        out.append((table, deletes, puts))
    return out


if native.rows is not None:
    _reads_unchanged, _rows_by_table = native.rows.reads_unchanged, native.rows.rows_by_table
else:
    _reads_unchanged, _rows_by_table = reads_unchanged_py, rows_by_table_py

_ABSENT = object()
