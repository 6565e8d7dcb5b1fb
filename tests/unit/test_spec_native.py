"""A change's reads and writes (fs/speculate.py's SpecTxn) in C and in its
pure-Python twin: the same answers, errors and collected rows, on a real row cache."""

import pytest

from fusevol import native
from fusevol.fs import speculate
from fusevol.fs.cache import NeedsStore, RowCache

try:
    from fusevol import _fusevol_rows
except ImportError:
    _fusevol_rows = None


def _spec_class(core):
    own = {name: getattr(speculate.SpecTxn, name) for name in ("__init__", "peek", "close")}
    return type("Spec", (core,), {"__slots__": speculate.SpecTxn.__slots__, **own})


def _c_core():
    _fusevol_rows.spec_configure(NeedsStore, speculate.WORKER_TABLES, speculate.NAME_TABLES)
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
