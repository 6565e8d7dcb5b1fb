"""A store made denser at rest: gc compresses what was written since the last gc
again, harder (recompress.py), and writes the store file again without its free
pages when no other process has it open (compaction.py). Every byte is kept:
every row of every table, every file of every snapshot, verify clean."""

import os
import random
import subprocess
import sys

import pytest

from fusevol.store import (Inodes, Store, check, chunks, compaction, countrows, freepages, packs, recompress, repack,
                           schema, snapshots, trees, volumes)

from .conftest import BS, FILE


def _text(rng: random.Random, size: int) -> bytes:
    """Source-like text: compresses, and more at a higher level."""
    words = [b"def ", b"return ", b"self.", b"import ", b"(x, y)", b"\n    ", b"# why\n"]
    words += [rng.randbytes(3).hex().encode() for _ in range(40)]
    return b"".join(rng.choice(words) for _ in range(size // 4 + 1))[:size]


def _fill(store, inodes, seed: int = 1, files: int = 30) -> None:
    """Files of whole blocks (written at level 1) and small ones, a snapshot."""
    rng = random.Random(seed)
    with store.write() as txn:
        for i in range(files):
            ino, _ = inodes.create(txn, 1, b"f%03d-%d" % (i, seed), FILE, 0, 0)
            size = 2 * BS + 5000 if i % 3 == 0 else rng.randint(100, 30_000)
            data = _text(rng, size)
            inodes.write_blocks(txn, ino, [(k // BS, data[k:k + BS]) for k in range(0, size, BS)], size)
        snapshots.create(txn, "vol", f"s{seed}")


def _files(txn, root: bytes) -> dict[bytes, bytes]:
    out = {}
    for path, _, obj in trees.walk(txn, root):
        if obj.kind == trees.FILE:
            out[path] = b"".join(chunks.read(txn, cid) for _, cid in sorted(obj.blocks))[:obj.inode.size]
    return out


def _snapshot_files(store) -> dict:
    with store.read() as txn:
        return {name: _files(txn, bytes.fromhex(snapshots.get(txn, "vol", name).root))
                for name in ("s1", "s2")}


def _fixed(name: str, value: bytes) -> bytes:
    """A row in the fixed form its readers see (count rows and inode records
    are written short at rest, format 5)."""
    if name in countrows.TABLES and value[0]:
        return countrows.expand(value)
    return bytes(schema.full_row(value)) if name == "inodes" else value


def _rows_of(txn, raw: bool = False) -> dict[str, list]:
    """Every row of every table (in its fixed form unless `raw`)."""
    return {name: [(bytes(k), bytes(v) if raw else _fixed(name, bytes(v))) for k, v in txn.scan(name, b"")]
            for name in schema.TABLES}


def _rows(path: str, raw: bool = False) -> dict[str, list]:
    """Every row of every table, read from the file as it is."""
    store = Store.open(path)
    try:
        with store.read() as txn:
            return _rows_of(txn, raw)
    finally:
        Store._instances.pop(store.path, None)
        store.close()


def test_new_chunks_are_compressed_again_once_and_every_byte_kept(store, inodes, monkeypatch):
    monkeypatch.setattr(recompress, "BATCH_PACKS", 2)  # several transactions
    _fill(store, inodes, 1)
    _fill(store, inodes, 2)
    before = _snapshot_files(store)
    with store.read() as txn:
        totals = chunks.totals(txn)
        assert len(packs.numbers(txn)) > 4
    rec = recompress.recompress(store)
    assert rec["chunks_recompressed"] > 20 and rec["stored_bytes_saved"] > 0
    with store.read() as txn:
        after = chunks.totals(txn)
        assert after["chunks"] == totals["chunks"] and after["unique_bytes"] == totals["unique_bytes"]
        assert after["stored_bytes"] == totals["stored_bytes"] - rec["stored_bytes_saved"]
        assert sum(packs.dead_bytes(txn).values()) <= packs.JOIN_MAX  # the packs written again
        assert check.verify(txn)["ok"]
        assert packs.miscounted(txn) == []
    assert _snapshot_files(store) == before
    # Once is enough: the next run goes through the last pack only, which
    # holds chunks already dense.
    again = recompress.recompress(store)
    assert again["stored_bytes_saved"] == 0 and again["packs_rewritten"] == 0
    # What is written after it is compressed again by the next run, and gc
    # leaves the store as verify wants it.
    _fill(store, inodes, 3, files=6)
    rec = recompress.recompress(store)
    assert 0 < rec["chunks_recompressed"] <= 10  # the six files' chunks
    with store.write() as txn:
        report = check.gc(txn, set())
        assert report["totals_fixed"] is None and report["counts_fixed"] == []
    with store.read() as txn:
        assert check.verify(txn)["ok"]
        assert schema.read_u64(txn.get("meta", recompress.WATERMARK)) > 1


def _churn(store, inodes) -> None:
    """Many small commits that change rows all over: pages LMDB frees."""
    _fill(store, inodes, 1)
    _fill(store, inodes, 2)
    rng = random.Random(9)
    for _ in range(20):
        with store.write() as txn:
            for _ in range(20):
                ino, _ = inodes.create(txn, 1, rng.randbytes(8).hex().encode(), FILE, 0, 0)
                inodes.write_blocks(txn, ino, [(0, rng.randbytes(300))], 300)


def test_the_store_file_is_written_again_with_every_row_and_no_free_pages(store, inodes):
    _churn(store, inodes)
    before = _snapshot_files(store)
    path = store.path
    Store._instances.pop(path, None)
    store.close()
    rows = _rows(path)
    data = os.path.join(path, "db", "data.mdb")
    size = os.stat(data).st_size
    # The copy alone (its volume's unchanged parts dropping their rows first:
    # test_store_resttree.py).
    report = compaction.rewrite_file(path, min_share=0, rest=False)
    assert report["rewritten"], report
    assert report["file_bytes_after"] == os.stat(data).st_size < size
    assert report["rows"] == sum(len(r) for r in rows.values())
    assert _rows(path) == rows
    # Count rows and inode records are written short (format 5), each shorter than it was.
    short = _rows(path, raw=True)
    for name in countrows.TABLES + ("inodes",):
        assert short[name] and all(v[0] for _, v in short[name]), name
        assert sum(map(len, (v for _, v in short[name]))) < sum(map(len, (v for _, v in rows[name])))
    again = Store.open(path)
    try:
        assert _snapshot_files(again) == before
        with again.read() as txn:
            assert check.verify(txn)["ok"]
            assert txn.free_pages_bytes() <= 4 * 4096
        with again.write() as txn:  # and it takes writes as before
            snapshots.create(txn, "vol", "after")
        with again.read() as txn:
            assert check.verify(txn)["ok"]
    finally:
        Store._instances.pop(path, None)
        again.close()
    assert not os.path.exists(os.path.join(path, compaction.COPY_DIR))


HOLD = """
import sys, time
from fusevol.store import Store
Store.open(sys.argv[1])
print("open", flush=True)
sys.stdin.read()
"""


def test_a_store_open_in_any_process_is_not_written_again(store, inodes):
    _churn(store, inodes)
    path = store.path
    data = os.path.join(path, "db", "data.mdb")
    size = os.stat(data).st_size
    # Open here: this process would keep reading the old file.
    report = compaction.rewrite_file(path, min_share=0)
    assert not report["rewritten"] and "open elsewhere" in report["reason"]
    Store._instances.pop(path, None)
    store.close()
    # Open in another process.
    holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "open"
        report = compaction.rewrite_file(path, min_share=0)
        assert not report["rewritten"] and "open elsewhere" in report["reason"]
        assert os.stat(data).st_size == size
    finally:
        holder.communicate("")
    # Nobody: written again, unless too little of it is free.
    assert not compaction.rewrite_file(path, min_share=1.0)["rewritten"]
    assert compaction.rewrite_file(path, min_share=0)["rewritten"]


def test_compressing_again_grows_the_file_by_a_few_batches_not_by_the_store(store, inodes, monkeypatch):
    """LMDB reuses what a commit freed two commits later: one transaction for
    every pack would hold old and new copies of all of them at once."""
    for seed in range(1, 5):
        _fill(store, inodes, seed, files=60)
    data = os.path.join(store.path, "db", "data.mdb")
    with store.read() as txn:
        pack_bytes = packs.stats(txn)["pack_bytes"]
        assert len(packs.numbers(txn)) >= 30
    size = os.stat(data).st_size
    monkeypatch.setattr(recompress, "BATCH_PACKS", 2)
    assert recompress.recompress(store)["packs_rewritten"] >= 30
    assert os.stat(data).st_size - size < pack_bytes / 4


def test_chunks_kept_raw_stay_raw(store):
    """A volume made with compression=none: its reads are not to decompress."""
    with store.write() as txn:
        record = volumes.create(txn, "plain", {"compression": "none"})
    plain = Inodes(record.vid, store.block_size, record.compression)
    text = _text(random.Random(4), 20_000)
    with store.write() as txn:
        ino, _ = plain.create(txn, 1, b"text", FILE, 0, 0)
        plain.write_blocks(txn, ino, [(0, text)], len(text))
        cid = chunks.chunk_id(text)
        assert chunks.stored(txn, cid)[0] == chunks.RAW
    assert recompress.recompress(store)["chunks_recompressed"] == 0
    with store.read() as txn:
        assert chunks.stored(txn, cid) == bytes((chunks.RAW,)) + text


def test_punched_free_pages_are_never_ones_a_reader_still_sees(store, inodes):
    """A reader keeps its snapshot of the store: the pages that later commits
    freed are still its pages, and are not punched out of the file while it
    reads; those no reader sees go back to the disk, and nothing is lost."""
    _fill(store, inodes, 1)
    with store.read() as txn:
        old = {cid: chunks.read(txn, cid) for cid, *_ in chunks.count_rows(txn)}
    reader = store.begin_read()  # sees every chunk of s1
    try:
        with store.write() as txn:
            snapshots.remove(txn, "vol", "s1")
        with store.write() as txn:
            for name, ino in inodes.list_dir(txn, 1):
                inodes.unlink(txn, 1, name)
                inodes.purge(txn, ino)
        data = os.path.join(store.path, "db", "data.mdb")
        before = os.stat(data).st_blocks * 512
        report = freepages.punch(store)
        assert report["punched"]
        assert {cid: chunks.read(reader, cid) for cid in old} == old
    finally:
        reader.abort()
    report = freepages.punch(store)
    assert report["punched"] and report["free_pages"] > 0
    assert os.stat(data).st_blocks * 512 < before - sum(map(len, old.values())) // 8
    with store.read() as txn:
        assert check.verify(txn)["ok"]


def test_tables_of_random_keys_are_written_again_full_with_every_row(store, inodes):
    """With the store held open gc writes its tables of small rows again in
    key order where they are: fewer leaves, the same rows."""
    _churn(store, inodes)

    def leaves() -> dict[str, int]:
        with store.read() as txn:
            return {name: txn.txn.stat(store.dbs[name])["leaf_pages"] for name in repack.TABLES}

    def rows(raw: bool = False) -> dict[str, list]:
        with store.read() as txn:
            return _rows_of(txn, raw)

    before, content = leaves(), rows()
    assert not any(v[0] for name in countrows.TABLES + ("inodes",) for _, v in rows(raw=True)[name])  # fixed
    report = repack.repack(store)
    after = leaves()
    assert "refs" in report and after["refs"] < before["refs"] * 0.85, (before, after)
    assert sum(after.values()) < sum(before.values())
    assert all(after[name] <= before[name] for name in repack.TABLES)
    assert rows() == content
    short = rows(raw=True)  # count rows and inodes of the tables written again are short (format 5)
    assert all(v[0] for name in countrows.TABLES + ("inodes",) if name in report for _, v in short[name])
    assert repack.repack(store) == {}  # full already
    with store.read() as txn:
        assert check.verify(txn)["ok"]
    _fill(store, inodes, 3)  # and it takes writes as before
    with store.read() as txn:
        assert check.verify(txn)["ok"]


class _ReaderTable:
    """A store whose LMDB reader table reads as `text` (LMDB never writes a
    line out of its format: only a stand-in can show what one would do)."""

    def __init__(self, text: str):
        self.env = type("Env", (), {"readers": lambda _self: text})()


def test_a_reader_table_that_does_not_read_as_expected_stops_the_punch(store):
    """A reader missed would have pages it still sees punched out of the file:
    every line is read or nothing is punched."""
    with store.read():
        live = store.env.readers()
    assert freepages.oldest_reader(store) is None  # no transaction now
    assert isinstance(freepages.oldest_reader(_ReaderTable(live)), int)
    for text in ("", "pid thread\n", live.replace("txnid", "txn"), live + "   12 7f00 abc\n",
                 live + "garbage\n"):
        with pytest.raises(freepages.Unreadable):
            freepages.oldest_reader(_ReaderTable(text))


def test_a_store_file_of_another_lmdb_format_is_not_punched(store, inodes):
    """The free list is read as LMDB 0.9 lays it out: a meta page of another
    version is refused, not read as if it were 0.9's."""
    _fill(store, inodes, 1)
    data = os.path.join(store.path, "db", "data.mdb")
    psize = store.env.stat()["psize"]
    fd = os.open(data, os.O_RDONLY)
    try:
        pages = [bytearray(os.pread(fd, psize, n * psize)) for n in (0, 1)]
    finally:
        os.close(fd)
    for page in pages:
        page[20:24] = (2).to_bytes(4, "little")  # mm_version
    file = freepages._File(None, psize)
    file.page = lambda pgno, count=1: bytes(pages[pgno])
    with pytest.raises(freepages.Unreadable, match="format 2"):
        freepages._meta(file)
