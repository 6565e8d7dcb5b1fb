"""The one walk of two trees side by side that diff and send share
(store/treepairs.py), on a temporary store."""

import io

from fusevol.store import Store, diff, snapshots, stream, trees
from fusevol.store.schema import ROOT_INO

from .conftest import DIR, FILE


def _root(snap) -> bytes:
    return bytes.fromhex(snap.root)


def test_the_walk_reads_only_what_differs(store, inodes):
    from fusevol.store import treepairs

    with store.write() as txn:
        d, _ = inodes.create(txn, ROOT_INO, b"d", DIR, 0, 0)
        files = [inodes.create(txn, d if i % 2 else ROOT_INO, b"f%03d" % i, FILE, 0, 0)[0]
                 for i in range(200)]
        s1 = snapshots.create(txn, "vol", "s1")
        inodes.write_blocks(txn, files[1], [(0, b"changed")], 7)
        s2 = snapshots.create(txn, "vol", "s2")
    read = []
    with store.read() as txn:
        def get(oid):
            read.append(oid)
            return trees.get(txn, oid)

        events = [(event, pair.path) for event, pair in
                  treepairs.walk(lambda: txn, get, _root(s1), _root(s2))]
    assert [p for e, p in events if e == treepairs.ENTER] == [b"", b"d", b"d/f001"]
    assert [p for e, p in events if e == treepairs.LEAVE] == [b"d/f001", b"d", b""]
    assert len(read) == 6  # both sides of three paths, nothing of the 199 others


def test_a_replaced_kind_is_every_name_gone_and_every_name_come(store, inodes):
    with store.write() as txn:
        x, _ = inodes.create(txn, ROOT_INO, b"x", DIR, 0, 0)
        inside, _ = inodes.create(txn, x, b"in", FILE, 0, 0)
        inodes.write_blocks(txn, inside, [(0, b"old")], 3)
        inodes.create(txn, ROOT_INO, b"y", FILE, 0, 0)
        s1 = snapshots.create(txn, "vol", "s1")
        inodes.unlink(txn, x, b"in")
        inodes.rmdir(txn, ROOT_INO, b"x")
        now_file, _ = inodes.create(txn, ROOT_INO, b"x", FILE, 0, 0)
        inodes.write_blocks(txn, now_file, [(0, b"new")], 3)
        inodes.unlink(txn, ROOT_INO, b"y")
        y, _ = inodes.create(txn, ROOT_INO, b"y", DIR, 0, 0)
        z, _ = inodes.create(txn, y, b"z", FILE, 0, 0)
        inodes.write_blocks(txn, z, [(0, b"zz")], 2)
        s2 = snapshots.create(txn, "vol", "s2")
    with store.read() as txn:
        assert [c.line() for c in diff.diff(txn, _root(s1), _root(s2))] == [
            "A\tx", "D\tx/", "D\tx/in", "D\ty", "A\ty/", "A\ty/z"]


def test_send_writes_what_the_walk_finds_new_and_receive_takes_it(store, inodes, tmp_path):
    with store.write() as txn:
        d, _ = inodes.create(txn, ROOT_INO, b"d", DIR, 0, 0)
        for i in range(300):  # a folder in pieces
            ino, _ = inodes.create(txn, d, b"f%03d" % i, FILE, 0, 0)
            inodes.write_blocks(txn, ino, [(0, b"%d" % i)], len(b"%d" % i))
        snapshots.create(txn, "vol", "s1")
        ino, _ = inodes.create(txn, d, b"g", FILE, 0, 0)
        inodes.write_blocks(txn, ino, [(0, b"one more")], 8)
        inodes.link(txn, ino, ROOT_INO, b"g-again")  # one object under two names: sent once
        snapshots.create(txn, "vol", "s2")
    full, incr = io.BytesIO(), io.BytesIO()
    stream.send(store, "vol", "s1", full)
    report = stream.send(store, "vol", "s2", incr, base=("vol", "s1"))
    # The root, d, the pieces of d on g's way, g; g's one chunk: not the 300 files.
    assert report["chunks"] == 1 and report["objects"] < 10, report
    other = Store.open(str(tmp_path / "other"))
    try:
        stream.receive(other, "vol", io.BytesIO(full.getvalue()))
        stream.receive(other, "vol", io.BytesIO(incr.getvalue()))
        with other.read() as txn:
            assert snapshots.get(txn, "vol", "s2").root == snapshots.get(txn, "vol", "s1").root \
                or [c.line() for c in diff.diff(txn, _root(snapshots.get(txn, "vol", "s1")),
                                                _root(snapshots.get(txn, "vol", "s2")))] == [
                    "A\td/g", "A\tg-again"]
    finally:
        Store._instances.pop(other.path, None)
        other.close()
