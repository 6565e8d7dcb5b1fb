"""A volume at rest kept as its tree alone (resttree.py, run by gc's copy of
the file): a volume unchanged since its last snapshot keeps its root row
alone, and every row comes back as it was, with the same counts, as it is
reached; a changed volume keeps the rows of what changed alone; a volume
with an intent log waiting keeps its rows; the store verifies, snapshots, diffs and sends the
same before and after, older stores (formats 1-3) included."""

import io
import os
import stat

from fusevol.store import Store, check, compaction, countrows, diff, intentlog, schema, snapshots, stream, volumes
from fusevol.store.inodes import Inodes

from .conftest import BS, DIR, FILE
from .test_store_packs import old_store  # noqa: F401

VOLUME_TABLES = ("inodes", "dirents", "parents", "blocks", "xattrs", "multilinks", "orphans")
COUNT_TABLES = countrows.TABLES


def _tree(store, inodes) -> None:
    """Folders, files of one and several blocks, a sparse one, an empty one,
    a symlink, xattrs and a file with two names; then a snapshot."""
    with store.write() as txn:
        sub, _ = inodes.create(txn, 1, b"sub", DIR, 0, 0)
        deep, _ = inodes.create(txn, sub, b"deep", DIR, 0, 0)
        for i, parent in enumerate((1, sub, deep) * 4):
            ino, _ = inodes.create(txn, parent, b"f%d" % i, FILE, 0, 0)
            data = (b"%d some text " % i) * (50 + 900 * i)
            inodes.write_blocks(txn, ino, [(k // BS, data[k:k + BS]) for k in range(0, len(data), BS)],
                                len(data))
        sparse, _ = inodes.create(txn, sub, b"sparse", FILE, 0, 0)
        inodes.write_blocks(txn, sparse, [(3, b"tail")], 3 * BS + 4)
        inodes.create(txn, deep, b"empty", FILE, 0, 0)
        inodes.create(txn, 1, b"link", stat.S_IFLNK | 0o777, 0, 0, target=b"sub/f1")
        inodes.setxattr(txn, sub, b"user.a", b"on a folder")
        two, _ = inodes.create(txn, sub, b"two", FILE, 0, 0)
        inodes.write_blocks(txn, two, [(0, b"two names")], 9)
        inodes.setxattr(txn, two, b"user.b", b"on a file")
        inodes.link(txn, two, deep, b"other")
        wide, _ = inodes.create(txn, 1, b"wide", DIR, 0, 0)  # written as pieces (IN_PIECES)
        for i in range(300):
            ino, _ = inodes.create(txn, wide, b"w%03d" % i, FILE, 0, 0)
            inodes.write_blocks(txn, ino, [(0, b"%d" % i)], len(b"%d" % i))
        snapshots.create(txn, "vol", "s1")
        assert inodes.peek(txn, wide).flags & schema.IN_PIECES


def _rows(store) -> dict[str, list]:
    """The volume tables' rows (inode records decoded, LAZY aside) and every
    count (count rows in their fixed form)."""
    out = {}
    with store.read() as txn:
        for name in VOLUME_TABLES:
            rows = []
            for k, v in txn.scan(name, b""):
                if name == "inodes":
                    inode = schema.Inode.unpack(v)
                    inode.flags &= ~schema.LAZY
                    v = inode
                rows.append((bytes(k), v if name == "inodes" else bytes(v)))
            out[name] = rows
        for name in COUNT_TABLES:
            out[name] = [(bytes(k), v) for k, v in countrows.scan(txn, name, b"")]
        out["vstats"] = [(bytes(k), bytes(v)) for k, v in txn.scan("vstats", b"")]
    return out


def _reach_all(store, inodes) -> dict[bytes, bytes]:
    """Every folder listed, every file read and its xattrs listed (rows made
    as they are reached): path -> content."""
    out = {}
    with store.write() as txn:
        work = [(b"", 1)]
        while work:
            path, ino = work.pop()
            inodes.listxattr(txn, ino)
            for name, child in inodes.list_dir(txn, ino):
                node = inodes.get(txn, child)
                full = path + b"/" + name
                if stat.S_ISDIR(node.mode):
                    work.append((full, child))
                    continue
                inodes.listxattr(txn, child)
                data = b"".join(inodes.read_block(txn, child, k) or bytes(BS)
                                for k in range(-(-node.size // BS)))
                out[full] = data[:node.size]
    return out


def _gc_at_rest(store) -> tuple[Store, dict]:
    """gc's copy of the file (the store closed here, as gc closes its own),
    and the store opened again."""
    path = store.path
    Store._instances.pop(path, None)
    store.close()
    report = compaction.rewrite_file(path, min_share=0)
    return Store.open(path), report


def _volume_rows(store, vid: int) -> dict[str, int]:
    with store.read() as txn:
        return {name: sum(1 for _ in txn.scan(name, schema.u64(vid))) for name in VOLUME_TABLES}


def test_an_unchanged_volume_keeps_its_root_row_alone_and_gets_every_row_back(store, inodes):
    _tree(store, inodes)
    before_rows = _rows(store)
    files = _reach_all(store, inodes)
    assert _rows(store) == before_rows  # (reading changed nothing)
    store, report = _gc_at_rest(store)
    try:
        assert report["volumes_at_rest"] == ["vol"] and report["rewritten"]
        left = _volume_rows(store, inodes.vid)
        assert left["inodes"] == 1 and left["dirents"] == left["blocks"] == left["xattrs"] == 0
        assert left["parents"] == 2 and left["multilinks"] == 1  # the file with two names
        with store.read() as txn:
            assert check.verify(txn)["ok"]
        # The counts a gc would set are those it keeps (nothing to fix).
        with store.write() as txn:
            fixed = check.gc(txn, set())
            assert fixed["counts_fixed"] == [] and fixed["totals_fixed"] is None
            assert fixed["usage_fixed"] == [] and fixed["chunks_freed"] == fixed["objects_freed"] == 0
        assert _reach_all(store, inodes) == files
        assert _rows(store) == before_rows  # every row, count and counter as it was
        with store.read() as txn:
            assert check.verify(txn)["ok"]
    finally:
        Store._instances.pop(store.path, None)
        store.close()


def test_a_volume_at_rest_snapshots_diffs_sends_and_takes_changes(store, inodes, tmp_path):
    _tree(store, inodes)
    store, _ = _gc_at_rest(store)
    try:
        assert _volume_rows(store, inodes.vid)["inodes"] == 1  # its root row alone
        with store.write() as txn:  # nothing changed: the same tree
            s1 = bytes.fromhex(snapshots.get(txn, "vol", "s1").root)
            same = bytes.fromhex(snapshots.create(txn, "vol", "same").root)
            assert same == s1 and diff.diff(txn, s1, same) == []
        with store.write() as txn:  # a change deep down, reached through lazy folders
            sub = inodes.lookup(txn, 1, b"sub")
            deep = inodes.lookup(txn, sub, b"deep")
            f = inodes.lookup(txn, deep, b"f2")
            inodes.write_blocks(txn, f, [(0, b"changed")], 7)
            other = inodes.lookup(txn, deep, b"other")
            inodes.setattr(txn, other, mode=0o100600)  # both folders of the file with two names
            w = inodes.lookup(txn, 1, b"wide")
            inodes.unlink(txn, w, b"w007")  # a folder in pieces, reached lazily
            s2 = bytes.fromhex(snapshots.create(txn, "vol", "s2").root)
            paths = {c.path for c in diff.diff(txn, s1, s2)}
            assert {b"sub/deep/f2", b"sub/deep/other", b"sub/two", b"wide/w007"} <= paths, paths
        with store.read() as txn:
            assert check.verify(txn)["ok"]
        other = Store.open(str(tmp_path / "other"))
        try:
            for base, name in ((None, "s1"), (("vol", "s1"), "s2")):
                buf = io.BytesIO()
                stream.send(store, "vol", name, buf, base=base)
                buf.seek(0)
                stream.receive(other, "copy", buf)
            with other.read() as txn:
                assert check.verify(txn)["ok"]
                assert bytes.fromhex(snapshots.get(txn, "copy", "s2").root) == s2
        finally:
            Store._instances.pop(other.path, None)
            other.close()
    finally:
        Store._instances.pop(store.path, None)
        store.close()


class _Undone(Exception):
    pass


def _tree_now(store) -> bytes:
    """The id the volume's tree would have, written in a transaction undone."""
    found = []
    try:
        with store.write() as txn:
            found.append(snapshots.resolve_tree(txn, "vol"))
            raise _Undone
    except _Undone:
        return found[0]


def test_a_changed_volume_keeps_the_rows_of_what_changed_and_gets_the_rest_back(store, inodes):
    _tree(store, inodes)
    with store.write() as txn:  # changed since its snapshot: the root, sub and sub/deep
        sub = inodes.lookup(txn, 1, b"sub")
        deep = inodes.lookup(txn, sub, b"deep")
        inodes.write_blocks(txn, inodes.lookup(txn, deep, b"f2"), [(0, b"changed")], 7)
        ino, _ = inodes.create(txn, 1, b"new", FILE, 0, 0)
        inodes.write_blocks(txn, ino, [(0, b"new file")], 8)
    before_rows = _rows(store)
    expected = _tree_now(store)
    files = _reach_all(store, inodes)
    rows_before = _volume_rows(store, inodes.vid)
    store, report = _gc_at_rest(store)
    try:
        assert report["volumes_at_rest"] == ["vol"]
        left = _volume_rows(store, inodes.vid)
        assert left["inodes"] < rows_before["inodes"] - 290  # the folder in pieces' files
        assert left["blocks"] < rows_before["blocks"] - 290
        with store.read() as txn:
            wide = inodes.peek(txn, inodes.lookup(txn, 1, b"wide"))
            assert wide.flags & schema.LAZY
            f0 = inodes.lookup(txn, 1, b"f0")
            assert inodes.peek(txn, f0).flags & schema.LAZY
            assert next(txn.scan("blocks", schema.ino_key(inodes.vid, f0)), None) is None
            two = inodes.lookup(txn, inodes.lookup(txn, 1, b"sub"), b"two")  # several names: kept
            assert not inodes.peek(txn, two).flags & schema.LAZY
            assert check.verify(txn)["ok"]
        with store.write() as txn:
            fixed = check.gc(txn, set())
            assert fixed["counts_fixed"] == [] and fixed["totals_fixed"] is None
            assert fixed["usage_fixed"] == [] and fixed["chunks_freed"] == fixed["objects_freed"] == 0
        assert _tree_now(store) == expected  # the same tree, unchanged parts read from objects
        assert _reach_all(store, inodes) == files
        assert _rows(store) == before_rows
        with store.read() as txn:
            assert check.verify(txn)["ok"]
    finally:
        Store._instances.pop(store.path, None)
        store.close()


def test_a_volume_with_an_intent_log_waiting_keeps_its_rows(store, inodes):
    _tree(store, inodes)
    with store.write() as txn:
        other = volumes.create(txn, "other")
        o = Inodes(other.vid, store.block_size)
        ino, _ = o.create(txn, 1, b"x", FILE, 0, 0)
        o.write_blocks(txn, ino, [(0, b"x")], 1)
        snapshots.create(txn, "other", "s")
    rows = _volume_rows(store, other.vid)
    log = intentlog.file_paths(store.path, other.vid)[0]
    os.makedirs(os.path.dirname(log), exist_ok=True)
    open(log, "wb").close()
    store, report = _gc_at_rest(store)
    try:
        assert report["volumes_at_rest"] == ["vol"]
        assert _volume_rows(store, other.vid) == rows
    finally:
        Store._instances.pop(store.path, None)
        store.close()


def test_an_older_stores_volumes_rest_as_their_tree_with_every_byte_kept(old_store):
    """A store of format 1, 2 or 3: its volumes unchanged since their last
    snapshot keep their root row alone, and read back the same."""
    store = old_store
    with store.write() as txn:
        check.gc(txn, set())  # as `fusevol gc` does first: its orphan purged
    with store.write() as txn:
        records = [r for r in volumes.list_all(txn) if r.vid is not None]
        for r in records:
            snapshots.create(txn, r.name, "now")
    reachers = [Inodes(r.vid, store.block_size, r.compression) for r in records]
    before = [_reach_all(store, i) for i in reachers]
    rows = _rows(store)
    store, report = _gc_at_rest(store)
    try:
        assert sorted(report["volumes_at_rest"]) == sorted(r.name for r in records)
        with store.read() as txn:
            assert check.verify(txn)["ok"]
        assert [_reach_all(store, i) for i in reachers] == before
        assert _rows(store) == rows
        with store.write() as txn:
            for r in records:
                assert snapshots.create(txn, r.name, "again").root == snapshots.get(txn, r.name, "now").root
        with store.read() as txn:
            assert check.verify(txn)["ok"]
    finally:
        Store._instances.pop(store.path, None)
        store.close()
