"""The intent log's records and how they are applied (store/intentlog.py), on
real files and a temporary store (no FUSE)."""

import os

from fusevol.store import Store, intentlog
from fusevol.store.intentlog import Record
from fusevol.store.schema import ROOT_INO

from .conftest import BS, FILE


def rec(lsn: int, ino: int = 5, size: int = 100, ranges=None) -> Record:
    return Record(lsn, ino, size, 11, 12, ranges if ranges is not None else [(0, b"a" * 100)])


def write_log(store_path: str, vid: int, which: int, records, tail: bytes = b"") -> None:
    os.makedirs(intentlog.log_dir(store_path), exist_ok=True)
    with open(intentlog.file_paths(store_path, vid)[which], "wb") as f:
        f.write(b"".join(intentlog.encode(r) for r in records) + tail)


def test_records_read_back_as_written():
    records = [rec(1), rec(2, ranges=[(5, b"xy"), (BS + 3, b"z" * 5000)]), rec(3, ranges=[])]
    assert intentlog.decode_all(b"".join(map(intentlog.encode, records)) + bytes(64)) == records


def test_a_torn_record_ends_the_file():
    data = b"".join(intentlog.encode(rec(n)) for n in (1, 2, 3))
    last = len(intentlog.encode(rec(3)))
    torn = data[:-last] + data[-last:-10]
    assert [r.lsn for r in intentlog.decode_all(torn)] == [1, 2]
    flipped = bytearray(data)
    flipped[-last - 30] ^= 1  # inside record 2
    assert [r.lsn for r in intentlog.decode_all(bytes(flipped))] == [1]


def test_an_older_record_left_beyond_a_reused_start_ends_the_file():
    old = b"".join(intentlog.encode(rec(n)) for n in (1, 2, 3, 4))
    new = intentlog.encode(rec(9))
    assert [r.lsn for r in intentlog.decode_all(new + old[len(new):])] == [9]
    assert [r.lsn for r in intentlog.decode_all(new + old)] == [9]


def test_records_of_both_files_are_read_in_order_up_to_a_gap(tmp_path):
    path = str(tmp_path)
    write_log(path, 3, 0, [rec(1), rec(2), rec(5), rec(6)][:2])
    write_log(path, 3, 1, [rec(3), rec(4), rec(5)])
    assert [r.lsn for r in intentlog.read_records(path, 3, 0)] == [1, 2, 3, 4, 5]
    assert [r.lsn for r in intentlog.read_records(path, 3, 3)] == [4, 5]
    write_log(path, 3, 1, [rec(4), rec(5)])  # record 3 lost: what follows it is not applied
    assert [r.lsn for r in intentlog.read_records(path, 3, 0)] == [1, 2]


def test_applying_records_patches_blocks_sets_size_and_times(store, inodes):
    with store.write() as txn:
        ino, _ = inodes.create(txn, ROOT_INO, b"f", FILE, 0, 0)
        inodes.write_blocks(txn, ino, [(0, b"o" * BS), (1, b"o" * 10)], BS + 10)
    records = [
        Record(1, ino, 2 * BS + 4, 100, 200, [(BS - 2, b"ABCD"), (2 * BS, b"tail")]),
        Record(2, ino, 2 * BS + 4, 300, 400, [(1, b"x")]),
        Record(3, 999, 10, 1, 1, [(0, b"gone")]),  # a file that is no more: skipped
    ]
    with store.write() as txn:
        intentlog.apply(txn, inodes, records)
    with store.read() as txn:
        node = inodes.get(txn, ino)
        # (a block may end short of its size: the rest reads as zeros)
        data = b"".join((inodes.read_block(txn, ino, i) or b"").ljust(BS, b"\0") for i in range(2))
        data += inodes.read_block(txn, ino, 2)
        assert intentlog.applied(txn, inodes.vid) == 3
    want = bytearray(b"o" * (BS + 10) + bytes(BS - 10) + b"tail")
    want[BS - 2:BS + 2] = b"ABCD"
    want[1:2] = b"x"
    assert node.size == 2 * BS + 4
    assert data == bytes(want)
    assert (node.mtime_ns, node.ctime_ns) == (300, 400)


def test_a_record_shrinks_a_file_a_later_write_grew(store, inodes):
    with store.write() as txn:
        ino, _ = inodes.create(txn, ROOT_INO, b"f", FILE, 0, 0)
        inodes.write_blocks(txn, ino, [(0, b"n" * BS), (1, b"n" * BS)], 2 * BS)
    with store.write() as txn:
        intentlog.apply(txn, inodes, [Record(1, ino, 50, 1, 1, [(0, b"d" * 50)])])
    with store.read() as txn:
        assert inodes.get(txn, ino).size == 50
        assert inodes.read_block(txn, ino, 0) == b"d" * 50
        assert inodes.read_block(txn, ino, 1) is None


def test_opening_the_store_applies_a_log_nobody_holds(tmp_path, inodes, store):
    with store.write() as txn:
        ino, _ = inodes.create(txn, ROOT_INO, b"f", FILE, 0, 0)
    write_log(store.path, inodes.vid, 0, [Record(1, ino, 4, 5, 6, [(0, b"data")])])
    held = intentlog.lock(store.path, inodes.vid)
    try:  # a worker holds the log: left to it
        intentlog.replay_unserved(store)
        with store.read() as txn:
            assert inodes.get(txn, ino).size == 0
    finally:
        os.close(held)
    path = store.path
    Store._instances.pop(path)
    store.close()
    reopened = Store.open(path)
    try:
        with reopened.read() as txn:
            assert inodes.read_block(txn, ino, 0) == b"data"
        assert os.listdir(intentlog.log_dir(path)) == []
    finally:
        Store._instances.pop(path, None)
        reopened.close()
