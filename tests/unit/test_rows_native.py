"""The worker's rows in C and in their pure-Python twins: a change's reads and
writes (fs/speculate.py's SpecTxn) and the row cache's reads (fs/cache.py's
RowCache) give the same answers, errors and collected rows, on a real store."""

import types

import pytest

from fusevol import native
from fusevol.fs import cache as cache_module
from fusevol.fs import speculate
from fusevol.fs.cache import NeedsStore, RowCache

try:
    from fusevol import _fusevol_rows
except ImportError:
    _fusevol_rows = None


def _spec_class(core):
    own = {name: vars(speculate.SpecTxn)[name] for name in ("peek", "close")}
    return type("Spec", (core,), {"__slots__": (), **own})


def _c_core():
    _fusevol_rows.spec_configure(NeedsStore, speculate.WORKER_TABLES, speculate.NAME_TABLES,
                                 speculate.MADE_BY_NAME_CHANGES)
    return _fusevol_rows.SpecCore


CORES = [
    pytest.param(lambda: speculate.SpecCorePy, id="python"),
    pytest.param(_c_core, id="c", marks=pytest.mark.skipif(
        _fusevol_rows is None, reason="C extension not built (python setup.py build_ext --inplace)")),
]

INODE = ("inodes", b"\0" * 15 + b"\2")
GONE = ("inodes", b"\0" * 15 + b"\3")
NAME = ("dirents", b"\0" * 15 + b"\2name")
UNKNOWN = ("inodes", b"\0" * 15 + b"\4")  # neither cached nor stored


def _outcome(fn, *args, **kw):
    try:
        return "ok", fn(*args, **kw)
    except NeedsStore:
        return "needs store", None
    except Exception as e:
        return "error", type(e)


def _session(spec_class, store, later: bool) -> tuple:
    """One change's reads and writes, everything each answered, and what it collected."""
    cache = RowCache(store)
    cache.rows[INODE] = (b"inode row", 3)
    cache.rows[GONE] = (None, 4)
    cache.rows[NAME] = (b"entry", 5)
    if later:  # rows handed over by the store thread, not applied yet
        cache.apply_later([("inodes", INODE[1], b"newer row")], 6)
    spec = spec_class(cache, 123, seq=9)
    answers = [
        _outcome(spec.get, *INODE),
        _outcome(spec.get, *GONE),
        _outcome(spec.get, *UNKNOWN),
        _outcome(spec.get, "chunks", b"id"),  # not the worker's: the store thread's
        _outcome(spec.put, "chunks", b"id", b"v"),
        _outcome(spec.put, *NAME, b"new entry"),  # a row of names: not read first
        _outcome(spec.get, *NAME),
        _outcome(spec.put, *INODE, memoryview(b"changed")),
        _outcome(spec.get, *INODE),
        _outcome(spec.put, "xattrs", memoryview(b"\0" * 16 + b"user.a"), b"x"),
        _outcome(spec.put, *INODE, b"again", overwrite=False),
        _outcome(spec.put, *INODE, b"again", True),
        _outcome(spec.delete, *GONE),  # absent: nothing written
        _outcome(spec.delete, *UNKNOWN),
        _outcome(spec.delete, "blocks", b"\0" * 16),
        _outcome(spec.delete, *INODE),
        _outcome(spec.get, *INODE),
        _outcome(spec.get, "inodes"),
        _outcome(spec.put, "inodes", b"k", b"v", overwrite=True, extra=1),
    ]
    spec.close()
    return answers, dict(spec.reads), dict(spec.writes)


@pytest.mark.parametrize("later", [False, True])
def test_c_reads_and_writes_match_the_python_twin(store, later):
    if _fusevol_rows is None:
        pytest.skip("C extension not built (python setup.py build_ext --inplace)")
    python = _session(_spec_class(speculate.SpecCorePy), store, later)
    c = _session(_spec_class(_c_core()), store, later)
    assert c == python
    answers, reads, writes = python
    assert answers[0] == ("ok", b"newer row" if later else b"inode row")
    assert answers[3] == answers[4] == answers[10] == ("needs store", None)
    assert NAME not in reads and writes[NAME] == (b"new entry", 9)
    assert writes[INODE] == (None, 9) and GONE not in writes and UNKNOWN not in writes
    assert type(next(k for k in writes if k[0] == "xattrs")[1]) is bytes


@pytest.mark.parametrize("core", CORES)
def test_spectxn_runs_on_either_core(store, core):
    spec = _spec_class(core())(RowCache(store), 1, seq=2)
    assert spec.put(*INODE, b"row") is True
    assert spec.peek(*INODE, bytes.upper) == b"ROW"
    assert spec.reads == {INODE: None} and spec.writes == {INODE: (b"row", 2)}
    spec.close()


def test_spectxn_is_on_the_c_core_when_built():
    if _fusevol_rows is None or native.rows is None:
        pytest.skip("C extension not built, or FUSEVOL_NATIVE=0")
    assert speculate.SpecCore is _fusevol_rows.SpecCore
    assert issubclass(speculate.SpecTxn, _fusevol_rows.SpecCore)


# -- the row cache's reads (fs/cache.py's RowCache on CacheCore or CacheCorePy) --

def _cache_class(core):
    own = {k: v for k, v in vars(cache_module.RowCache).items() if isinstance(v, types.FunctionType)}
    return type("Cache", (core,), own)


def _c_cache_core():
    _fusevol_rows.cache_configure(cache_module.MAX_ROWS)
    return _fusevol_rows.CacheCore


CACHE_CORES = [
    pytest.param(lambda: cache_module.CacheCorePy, id="python"),
    pytest.param(_c_cache_core, id="c", marks=pytest.mark.skipif(
        _fusevol_rows is None, reason="C extension not built (python setup.py build_ext --inplace)")),
]


class Decode:
    """A decoder that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, raw):
        self.calls += 1
        return [raw]


def _cache_session(cache_class, store) -> list:
    cache = cache_class(store)
    cache.rows[INODE] = (b"inode row", 3)
    cache.rows[GONE] = (None, 4)
    decode, other = Decode(), Decode()
    reader = cache.reader()
    seen = []
    first = cache.decoded_if_held(*INODE, decode)
    seen += [first, cache.decoded_if_held(*INODE, decode) is first,  # shared, decoded once
             cache.decoded(INODE[1], cache.get(*INODE, reader), decode) is first,
             cache.decoded_if_held(*INODE, other) is first,  # another decoder
             cache.decoded(INODE[1], bytes(bytearray(b"inode row")), decode) is first,  # equal, not the same
             cache.decoded_if_held(*GONE, decode), cache.decoded_if_held(*UNKNOWN, decode),
             cache.decoded(b"k", None, decode),
             cache.get(*GONE, reader), cache.get(*UNKNOWN, reader), UNKNOWN in cache.rows,
             cache.get("chunks", b"id", reader), ("chunks", b"id") in cache.rows]
    cache.apply_later([("inodes", INODE[1], b"newer row")], 6)
    seen += [cache.decoded_if_held(*INODE, decode), cache.rows[INODE], not cache.later]
    cache.apply_later([("inodes", GONE[1], b"back")], 7)
    seen += [cache.get(*GONE, reader), not cache.later]
    cache.apply_later([("inodes", INODE[1], None)], 8)
    seen += [cache.decoded_if_held(*INODE, decode), decode.calls, other.calls]
    for bad in ((), (INODE[0],), (*INODE, decode, 1)):
        seen.append(_outcome(cache.decoded_if_held, *bad))
    reader.close()
    return seen


def test_c_cache_reads_match_the_python_twin(store):
    if _fusevol_rows is None:
        pytest.skip("C extension not built (python setup.py build_ext --inplace)")
    python = _cache_session(_cache_class(cache_module.CacheCorePy), store)
    c = _cache_session(_cache_class(_c_cache_core()), store)
    assert c == python
    assert python[:5] == [[b"inode row"], True, True, False, False]
    assert python[5:13] == [None, None, None, None, None, True, None, False]
    assert python[13:18] == [[b"newer row"], (b"newer row", 6), True, b"back", True]


@pytest.mark.parametrize("core", CACHE_CORES)
def test_row_cache_runs_on_either_core(store, core):
    cache = _cache_class(core())(store)
    spec = speculate.SpecTxn(cache, 1, seq=2)
    assert spec.put(*INODE, b"row") is True
    cache.apply_newest(spec.writes)
    spec.close()
    decode = Decode()
    assert cache.decoded_if_held(*INODE, decode) == [b"row"]
    assert cache.decoded_if_held(*INODE, decode) is cache.decoded_if_held(*INODE, decode)
    assert decode.calls == 1


def test_row_cache_is_on_the_c_core_when_built():
    if _fusevol_rows is None or native.rows is None:
        pytest.skip("C extension not built, or FUSEVOL_NATIVE=0")
    assert issubclass(cache_module.RowCache, _fusevol_rows.CacheCore)


# -- the store thread's replay (speculate.unchanged's loop, write_rows' grouping) --

REPLAYS = [pytest.param(lambda: (speculate.reads_unchanged_py, speculate.rows_by_table_py),
                        id="python"),
           pytest.param(lambda: (_c_core() and _fusevol_rows.reads_unchanged,
                                 _fusevol_rows.rows_by_table), id="c", marks=pytest.mark.skipif(
               _fusevol_rows is None,
               reason="C extension not built (python setup.py build_ext --inplace)"))]


def _key(ino: int, rest: bytes = b"") -> bytes:
    return (1).to_bytes(8, "big") + ino.to_bytes(8, "big") + rest


def _owner(table, key):
    return None if table == "meta" or len(key) < 16 else int.from_bytes(key[8:16], "big")


@pytest.mark.parametrize("replay", REPLAYS)
def test_reads_unchanged_as_the_python_twin_decides(replay):
    reads_unchanged, _ = replay()
    stored = {("inodes", _key(2)): memoryview(b"two"), ("orphans", _key(3)): b"mark"}
    asked = []

    def get(table, key):
        asked.append((table, key))
        return stored.get((table, key))

    def check(reads, pending=None, written=None, first=0, end=0):
        expected = speculate.reads_unchanged_py(reads, pending or {}, written, first, end,
                                                _owner, lambda t, k: stored.get((t, k)))
        del asked[:]
        got = reads_unchanged(reads, pending or {}, written, first, end, _owner, get)
        assert got is expected
        return got, list(asked)

    assert check({("inodes", _key(2)): b"two"}) == (True, [("inodes", _key(2))])
    assert check({("inodes", _key(2)): b"old"}) == (False, [("inodes", _key(2))])
    assert check({("dirents", _key(2, b"n")): b"stale"}) == (True, [])  # a row of names
    pend = {("inodes", _key(2)): (b"newer", 5)}
    assert check({("inodes", _key(2)): b"newer"}, pend) == (True, [])  # pending, not stored
    assert check({("inodes", _key(2)): b"two"}, pend) == (False, [])
    assert check({("inodes", _key(2)): b"newer"}, {}, pend) == (True, [])  # written by the batch
    assert check({("orphans", _key(3)): None}) == (True, [])  # made by name changes only
    assert check({("inodes", _key(9)): None}, first=9, end=10) == (True, [])  # numbered here
    assert check({("inodes", _key(9)): None}, first=10, end=12) == (True, [("inodes", _key(9))])
    assert check({("xattrs", b"x"): None, ("inodes", _key(4)): None},  # owned by none
                 first=1, end=2) == (True, [("xattrs", b"x"), ("inodes", _key(4))])
    assert check({("inodes", _key(4)): b"gone"}) == (False, [("inodes", _key(4))])


@pytest.mark.parametrize("replay", REPLAYS)
def test_rows_by_table_as_the_python_twin_groups(replay):
    _, rows_by_table = replay()
    pending = {("inodes", _key(5)): (b"five", 1), ("dirents", _key(1, b"b")): (None, 2),
               ("inodes", _key(2)): (None, 3), ("dirents", _key(1, b"a")): (b"2", 4),
               ("inodes", _key(3)): (b"three", 5), ("blocks", _key(3, b"\0")): (b"c", 6)}
    expected = speculate.rows_by_table_py(pending)
    assert rows_by_table(pending) == expected == [
        ("blocks", [], [(_key(3, b"\0"), b"c")]),
        ("dirents", [_key(1, b"b")], [(_key(1, b"a"), b"2")]),
        ("inodes", [_key(2)], [(_key(3), b"three"), (_key(5), b"five")])]
    assert rows_by_table({}) == []


# -- whose row: store/workerrows.py's row_owner (RowOwner in C) --

def test_row_owner_matches_the_python_twin():
    if _fusevol_rows is None:
        pytest.skip("C extension not built (python setup.py build_ext --inplace)")
    from fusevol.store import workerrows
    py, c = workerrows.row_owner_py(1), _fusevol_rows.RowOwner(1)
    rows = [("inodes", _key(7)), ("dirents", _key(2, b"name")), ("meta", _key(7)),
            ("inodes", b"short"), ("inodes", (2).to_bytes(8, "big") + _key(7)[8:]),
            ("xattrs", memoryview(_key(2**64 - 1, b"user.x"))), ("blocks", b"")]
    for table, key in rows:
        assert c(table, key) == py(table, key), (table, key)
    assert c("inodes", _key(7)) == 7 and c("meta", _key(7)) is None
    for bad in ((), ("inodes",), ("inodes", 12)):
        assert _outcome(c, *bad)[0] == "error"


@pytest.mark.parametrize("core", CACHE_CORES)
def test_rows_of_inodes_the_worker_made_are_not_asked_of_the_store(store, core):
    from fusevol.store import workerrows
    cache = _cache_class(core())(store)
    asked = []
    cache._get_missing = lambda table, key, reader: asked.append(key) or b"stored"
    for owner in (workerrows.row_owner_py(1), workerrows.row_owner(1)):
        cache.owner, cache._first_fresh = owner, 10
        del asked[:]
        assert cache.get("xattrs", _key(10, b"user.a"), None) is None  # made here: none
        assert cache.get("xattrs", _key(9, b"user.a"), None) == b"stored"
        assert cache.get("meta", b"next_ino", None) == b"stored"
        assert asked == [_key(9, b"user.a"), b"next_ino"]
    cache._first_fresh = None
    assert cache.get("xattrs", _key(10, b"user.a"), None) == b"stored"
