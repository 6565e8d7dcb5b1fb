"""Rows short at rest (store format 5, restforms.py): count rows
(countrows.py) and inode records (schema.short_row) written short and read
back the same; a store whose count rows are short takes every change of
counts (new chunks and objects, references taken and dropped, packs laid
out again), one whose inode records are short every change of them and
snapshots that find them unchanged, and verifies; a format-4 store is
marked 5 when opened, and a newer one is refused."""

import random
import struct

import pytest

from fusevol.errors import FsError, FusevolError, StoreDamaged
from fusevol.store import Store, check, chunks, countrows, densify, recompress, repack, schema, snapshots, trees
from fusevol.store.schema import NO_TREE, Inode

from .conftest import BS, FILE
from .test_store_packs import old_store  # noqa: F401

EDGES = (0, 1, 127, 128, 300, 16383, 16384, (1 << 32) - 1)


@pytest.mark.parametrize("form", [">Q", ">QII", ">QQII", ">QIIQI"])
def test_every_fixed_form_is_written_shorter_and_read_back_the_same(form):
    s = struct.Struct(form)
    rng = random.Random(5)
    for _ in range(300):
        fields = [rng.choice(EDGES) if rng.random() < 0.5 else rng.randrange(1 << 17) for _ in form[1:]]
        fields[0] = rng.choice((0, 1, 2, 200, (1 << 40) + 3))  # a count or a pack number
        if form[2:3] == "Q":
            fields[1] = rng.choice((1, 70_000, (1 << 40) + 3))
        raw = s.pack(*fields)
        short = countrows.compact(raw)
        assert len(short) < len(raw) or short == raw
        if short != raw:
            assert short[0] == len(raw)  # told from a fixed form by its first byte
            assert countrows.expand(short) == raw
            assert countrows.compact(short) == short  # short already
    assert countrows.compact(struct.pack(">Q", 1)) == bytes((8, 1))


def test_a_damaged_short_row_is_damage_not_a_wrong_count(store):
    with store.write() as txn:
        txn.put("refs", b"\x01" * 32, bytes((28, 1, 2)))  # fields missing
        txn.put("orefs", b"\x02" * 32, bytes((9, 1)))  # no such form
        with pytest.raises(StoreDamaged):
            countrows.get(txn, "refs", b"\x01" * 32)
        with pytest.raises(StoreDamaged):
            countrows.get(txn, "orefs", b"\x02" * 32)
        txn.delete("refs", b"\x01" * 32)
        txn.delete("orefs", b"\x02" * 32)


def _write(store, inodes, seed: int, files: int = 25) -> dict[bytes, bytes]:
    rng = random.Random(seed)
    out = {}
    with store.write() as txn:
        for i in range(files):
            name = b"f%03d-%d" % (i, seed)
            ino, _ = inodes.create(txn, 1, name, FILE, 0, 0)
            size = 2 * BS + 700 if i % 4 == 0 else rng.randint(50, 20_000)
            data = bytes(rng.choice(b"abcdefgh ") for _ in range(size))
            inodes.write_blocks(txn, ino, [(k // BS, data[k:k + BS]) for k in range(0, size, BS)], size)
            out[name] = data
        snapshots.create(txn, "vol", f"s{seed}")
    return out


def _raw_forms(store) -> dict[str, set[bool]]:
    """table -> whether its rows are short (True) or fixed (False)."""
    with store.read() as txn:
        return {name: {bool(v[0]) for _, v in txn.scan(name, b"")} for name in countrows.TABLES}


def test_a_store_with_short_count_rows_takes_every_change_of_counts(store, inodes):
    files = _write(store, inodes, 1)
    repack.repack(store, tables=countrows.TABLES)
    repack.repack(store, tables=countrows.TABLES)
    with store.write() as txn:  # the same rows again in their fixed form: written short
        for name in countrows.TABLES:
            rows = [(bytes(k), bytes(v)) for k, v in txn.scan(name, b"")]
            for key, value in rows:
                txn.txn.put(key, countrows.compact(value), db=store.dbs[name])
    assert _raw_forms(store) == {name: {True} for name in countrows.TABLES}
    with store.read() as txn:
        assert check.verify(txn)["ok"]
    files |= _write(store, inodes, 2)  # the same files again under new names: references taken
    with store.write() as txn:  # half of them deleted, a snapshot dropped: references let go
        for name in sorted(files)[::2]:
            ino = inodes.lookup(txn, 1, name)
            inodes.unlink(txn, 1, name)
            inodes.purge(txn, ino)
            del files[name]
        snapshots.remove(txn, "vol", "s1")
    recompress.recompress(store)  # chunks and objects move: their rows are written again
    densify.densify(store)
    with store.read() as txn:
        assert check.verify(txn)["ok"]
        for name, data in files.items():
            ino = inodes.lookup(txn, 1, name)
            got = b"".join(inodes.read_block(txn, ino, k) or b"" for k in range(-(-len(data) // BS)))
            assert got[:len(data)] == data
        for cid, count, raw_len, stored_len in chunks.count_rows(txn):
            assert count >= 1 and raw_len >= 1 and stored_len >= 1
        assert trees.counted(txn) > 0


@pytest.mark.parametrize("older", [4, 5])
def test_an_older_store_is_marked_current_and_a_newer_one_refused(tmp_path, older):
    path = str(tmp_path / "store")
    store = Store.open(path)
    with store.write() as txn:
        txn.put("meta", b"format", schema.u64(older))
    Store._instances.pop(store.path, None)
    store.close()
    store = Store.open(path)
    with store.read() as txn:
        assert schema.read_u64(txn.get("meta", b"format")) == schema.FORMAT_VERSION == 6
    with store.write() as txn:
        txn.put("meta", b"format", schema.u64(7))
    Store._instances.pop(store.path, None)
    store.close()
    with pytest.raises(FusevolError, match="has format 7"):
        Store.open(path)
    Store._instances.pop(path, None)


INODES = [
    Inode(0o100644, 1000, 1000, 1, 12345, 1_700_000_000_123_456_789, 1_700_000_001_000_000_000,
          1_700_000_002_000_000_001, 0, 0, 16384, 0, bytes(range(32))),
    Inode(0o40755, 0, 0, 7, 4096, -5, 0, 1, 0, 3, 0, 4, NO_TREE),
    Inode(0o120777, 5, 6, 1, 9, 1, 2, 3, 0, 0, 0, 1, b"\xff" * 32, b"target/of/link"),
    Inode(0o20600, 0, 0, 1, 0, 1, 2, 3, (8 << 8) | 1, 0, 0, 0, NO_TREE),
    Inode(0o100600, (1 << 32) - 1, 0, (1 << 32) - 1, (1 << 63) - 1, schema.TIME_MAX_NS, schema.TIME_MIN_NS,
          0, (1 << 64) - 1, (1 << 64) - 1, (1 << 63) - 1, 0, bytes(32)),  # wide times
]


@pytest.mark.parametrize("inode", INODES)
def test_an_inode_record_is_written_shorter_and_read_back_the_same(inode):
    fixed = inode.pack()
    short = schema.short_row(fixed)
    assert short[0] and len(short) < len(fixed)
    assert schema.full_row(short) == fixed
    assert schema.short_row(short) == short
    assert Inode.unpack(short) == Inode.unpack(fixed) == inode
    assert schema.row_flags(short) == schema.row_flags(fixed)
    assert schema.row_with_times(short, 1, 2, 3) is None  # the caller stores the record whole


def test_no_record_takes_a_mode_its_first_byte_would_misread():
    with pytest.raises(FsError):
        Inode(schema.MODE_MAX + 1, 0, 0).pack()
    assert Inode(schema.MODE_MAX, 0, 0).pack()[0] == 0


def test_a_damaged_short_inode_record_is_damage():
    short = schema.short_row(INODES[0].pack())
    for bad in (short[:5], bytes((9,)) + short[1:]):
        with pytest.raises(StoreDamaged):
            Inode.unpack(bad)


def _shorten(store, tables) -> None:
    """Every row of `tables` in its short form, as gc leaves them."""
    with store.write() as txn:
        for name in tables:
            for key, value in [(bytes(k), bytes(v)) for k, v in txn.scan(name, b"")]:
                short = countrows.compact(value) if name in countrows.TABLES else schema.short_row(value)
                txn.txn.put(key, short, db=store.dbs[name])


def test_a_volume_whose_inode_records_are_short_takes_every_change(store, inodes):
    files = _write(store, inodes, 1)
    with store.read() as txn:
        root1 = snapshots.get(txn, "vol", "s1").root
        before = {name: inodes.peek(txn, inodes.lookup(txn, 1, name)) for name in files}
    _shorten(store, ("inodes",))
    with store.read() as txn:
        assert all(v[0] for _, v in txn.scan("inodes", b""))
        assert {name: inodes.peek(txn, inodes.lookup(txn, 1, name)) for name in files} == before
    with store.write() as txn:  # nothing changed: the same tree, read from short records
        assert snapshots.create(txn, "vol", "same").root == root1
    names = sorted(files)
    with store.write() as txn:
        a, b, c = (inodes.lookup(txn, 1, n) for n in names[:3])
        inodes.set_times(txn, a, atime_ns=11, mtime_ns=22)  # in place, or whole when short
        inodes.setattr(txn, b, mode=0o100600, size=3)
        inodes.write_blocks(txn, c, [(0, b"new")], 3)
        files[names[1]] = files[names[1]][:3]
        files[names[2]] = b"new"
        snapshots.create(txn, "vol", "changed")
    _shorten(store, ("inodes",))
    with store.read() as txn:
        assert check.verify(txn)["ok"]
        got = inodes.peek(txn, a)
        assert (got.atime_ns, got.mtime_ns) == (11, 22)
        assert inodes.peek(txn, b).mode == 0o100600
        for name, data in files.items():
            ino = inodes.lookup(txn, 1, name)
            read = b"".join(inodes.read_block(txn, ino, k) or b"" for k in range(-(-len(data) // BS)))
            assert read[:len(data)] == data and inodes.peek(txn, ino).size == len(data)
        assert snapshots.get(txn, "vol", "changed").root != root1


def test_an_older_stores_rows_are_written_short_with_every_byte_kept(old_store):
    """A store of format 1, 2 or 3 (every row fixed): the repack writes its
    count rows and inode records short, each reading back as it was, and the
    store verifies and snapshots the same."""
    store = old_store
    tables = countrows.TABLES + ("inodes",)

    def rows(raw: bool = False) -> dict[str, list]:
        with store.read() as txn:
            out = {}
            for name in tables:
                got = [(bytes(k), bytes(v)) for k, v in txn.scan(name, b"")]
                if not raw:
                    got = [(k, countrows.expand(v) if name != "inodes" and v[0] else
                            bytes(schema.full_row(v))) for k, v in got]
                out[name] = got
            return out

    before = rows(raw=True)
    assert not any(v[0] for name in tables for _, v in before[name])
    report = repack.repack(store, tables=tables, max_bytes=1 << 30)
    short = rows(raw=True)
    for name in tables:
        if name in report:  # (a table full already is left as it is)
            assert all(v[0] for _, v in short[name]), name
    assert "inodes" in report and any(name in report for name in countrows.TABLES)
    assert rows() == before
    with store.write() as txn:
        assert check.verify(txn)["ok"]
        snapshots.create(txn, snapshots.list_all(txn)[0].volume, "after")
    with store.read() as txn:
        assert check.verify(txn)["ok"]
