"""Snapshots, clones, rollbacks and diffs on a temporary store (no FUSE)."""

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusevol.errors import AlreadyExists, InvalidArgument, NotFound, StoreDamaged
from fusevol.store import Inodes, Store, check, chunks, diff, snapshots, trees, volumes
from fusevol.store.schema import IN_PIECES, LAZY, MODE_MAX, ROOT_INO, TIME_MAX_NS, TIME_MIN_NS, Inode, row_with_tree, vkey

from .conftest import BS, DIR, FILE


def listing(txn, inodes: Inodes, ino: int = ROOT_INO, path: bytes = b"") -> dict:
    """path -> what a reader sees of it: mode, owner, size, content or target,
    xattrs, link count (lazy rows are filled in on the way: a write txn)."""
    out = {}
    for name, child in inodes.list_dir(txn, ino):
        sub = path + b"/" + name
        node = inodes.get(txn, child)
        seen = [node.mode, node.uid, node.size, node.nlink,
                sorted((n, inodes.getxattr(txn, child, n)) for n in inodes.listxattr(txn, child))]
        if stat.S_ISREG(node.mode):
            blocks = -(-node.size // BS)
            seen.append(b"".join(inodes.read_block(txn, child, i) or b"" for i in range(blocks)))
        elif stat.S_ISLNK(node.mode):
            seen.append(node.target)
        out[sub] = seen
        if stat.S_ISDIR(node.mode):
            out.update(listing(txn, inodes, child, sub))
    return out


def populate(txn, inodes: Inodes) -> dict:
    ino = {}
    ino["docs"], _ = inodes.create(txn, ROOT_INO, b"docs", DIR, 1000, 1000)
    ino["deep"], _ = inodes.create(txn, ino["docs"], b"deep", DIR, 0, 0)
    ino["a"], _ = inodes.create(txn, ino["docs"], b"a.txt", FILE, 1000, 1000)
    inodes.write_blocks(txn, ino["a"], [(0, b"hello " * 100)], 600)
    ino["big"], _ = inodes.create(txn, ino["deep"], b"big", FILE, 0, 0)
    inodes.write_blocks(txn, ino["big"], [(0, os.urandom(BS)), (2, b"tail")], 2 * BS + 4)
    inodes.setxattr(txn, ino["big"], b"user.tag", b"v1")
    inodes.create(txn, ROOT_INO, b"link", stat.S_IFLNK | 0o777, 0, 0, target=b"docs/a.txt")
    inodes.link(txn, ino["a"], ROOT_INO, b"hard")
    return ino


@pytest.fixture
def filled(store, inodes):
    with store.write() as txn:
        return populate(txn, inodes)


def _inodes_of(txn, name):
    return snapshots.inodes_of(txn, volumes.get(txn, name))


def assert_verified(store):
    with store.read() as txn:
        report = check.verify(txn)
    assert report["ok"], report["problems"]


def test_a_clone_lists_what_the_snapshot_saw(store, inodes, filled):
    with store.write() as txn:
        before = listing(txn, inodes)
        snapshots.create(txn, "vol", "s1")
    with store.write() as txn:  # changes after the snapshot are not in it
        inodes.unlink(txn, filled["docs"], b"a.txt")
        inodes.write_blocks(txn, filled["big"], [(0, b"new")], 3)
    with store.write() as txn:
        snapshots.clone(txn, "vol", "s1", "copy")
    with store.write() as txn:
        copy = _inodes_of(txn, "copy")
        assert listing(txn, copy) == before
        assert copy.lookup(txn, ROOT_INO, b"hard") == copy.lookup(txn, filled["docs"], b"a.txt")
        assert copy.usage(txn).inodes == 6
    assert_verified(store)


def test_a_clone_is_a_volume_of_its_own(store, inodes, filled):
    with store.write() as txn:
        snapshots.create(txn, "vol", "s1")
        snapshots.clone(txn, "vol", "s1", "copy")
    with store.write() as txn:
        copy = _inodes_of(txn, "copy")
        # Rows of a clone come to be as the names are reached (as the kernel does).
        assert copy.lookup(txn, copy.lookup(txn, ROOT_INO, b"docs"), b"a.txt") == filled["a"]
        copy.write_blocks(txn, filled["a"], [(0, b"changed")], 7)
        copy.create(txn, ROOT_INO, b"only-in-copy", FILE, 0, 0)
        assert listing(txn, inodes)[b"/docs/a.txt"][-1] == b"hello " * 100
        assert b"/only-in-copy" not in listing(txn, inodes)
        # New numbers continue above every number the source had used.
        assert copy.lookup(txn, ROOT_INO, b"only-in-copy") > max(filled.values())
    assert_verified(store)


def test_rollback_returns_to_the_snapshot(store, inodes, filled):
    with store.write() as txn:
        before = listing(txn, inodes)
        snapshots.create(txn, "vol", "s1")
    with store.write() as txn:
        inodes.rename(txn, ROOT_INO, b"docs", ROOT_INO, b"papers")
        inodes.create(txn, ROOT_INO, b"new", FILE, 0, 0)
        snapshots.rollback(txn, "vol", "s1")
    with store.write() as txn:
        assert listing(txn, inodes) == before
    assert_verified(store)


def test_snapshot_names_and_refs(store, inodes, filled):
    with store.write() as txn:
        snap = snapshots.create(txn, "vol", "s1")
        assert snap.inodes == 6 and snap.logical_bytes == 600 + BS + 4
        with pytest.raises(AlreadyExists):
            snapshots.create(txn, "vol", "s1")
        with pytest.raises(InvalidArgument):
            snapshots.create(txn, "vol", "bad name")
        with pytest.raises(NotFound):
            snapshots.get(txn, "vol", "nope")
        with pytest.raises(NotFound):
            snapshots.get(txn, "novol", "s1")
        auto = snapshots.create(txn, "vol")
        assert [s.name for s in snapshots.list_all(txn, "vol")] == ["s1", auto.name]
    assert snapshots.parse_ref("vol@s1") == ("vol", "s1")
    assert snapshots.parse_ref("vol", need_snapshot=False) == ("vol", None)
    for bad in ("vol", "vol@", "vol@a b", "-v@s"):
        with pytest.raises(InvalidArgument):
            snapshots.parse_ref(bad)


@pytest.mark.parametrize("name", ["s1\n", "s1\r", "s\x00", "a/b", ""])
def test_snapshot_names_with_control_characters_are_refused(store, inodes, name):
    # `$` of a pattern also matches before a final newline: "s1\n" once passed.
    with pytest.raises(InvalidArgument):
        snapshots.parse_ref(f"vol@{name}")
    with store.write() as txn, pytest.raises(InvalidArgument):
        snapshots.create(txn, "vol", name or "\n")


def test_removing_snapshots_frees_what_only_they_held(store, inodes, filled):
    with store.write() as txn:
        snapshots.create(txn, "vol", "s1")
        inodes.setattr(txn, filled["big"], size=0)  # its chunks now live in s1 alone
    with store.read() as txn:
        snap = snapshots.get(txn, "vol", "s1")
        only_s1 = snapshots.unique_bytes(txn, snap)
        stored = chunks.totals(txn)["stored_bytes"]
        assert only_s1 > BS  # the random block, stored raw
    with store.write() as txn:
        snapshots.remove(txn, "vol", "s1")
    with store.read() as txn:
        assert chunks.totals(txn)["stored_bytes"] == stored - only_s1
        assert trees.stored(txn, bytes.fromhex(snap.root)) is None
    assert_verified(store)


def test_equal_trees_have_equal_ids(store, inodes, filled):
    with store.write() as txn:
        one = snapshots.create(txn, "vol", "s1").root
        two = snapshots.create(txn, "vol", "s2").root
        assert one == two
        assert trees._count(txn, bytes.fromhex(one)) == 3  # two snapshots and the live root
        paths = [p for p, _, _ in trees.walk(txn, bytes.fromhex(one))]
    assert paths == [b"", b"docs", b"docs/a.txt", b"docs/deep", b"docs/deep/big", b"hard", b"link"]


def test_tree_objects_round_trip_and_reject_garbage(store, inodes, filled):
    with store.write() as txn:
        root = bytes.fromhex(snapshots.create(txn, "vol", "s1").root)
        for _, oid, obj in trees.walk(txn, root):
            assert trees.object_id(trees.encode(obj)) == oid
            assert trees.decode(trees.encode(obj)) == obj
        with pytest.raises(StoreDamaged):
            trees.get(txn, bytes(32))
    with pytest.raises(StoreDamaged):
        trees.decode(b"X" + bytes(200))


def _diff(txn, a: str, b: str) -> list[str]:
    return [c.line() for c in diff.diff(txn, snapshots.resolve_tree(txn, a),
                                         snapshots.resolve_tree(txn, b))]


def test_diff_names_each_kind_of_change(store, inodes, filled):
    with store.write() as txn:
        snapshots.create(txn, "vol", "s1")
        inodes.rename(txn, filled["deep"], b"big", ROOT_INO, b"big-moved")   # R
        inodes.write_blocks(txn, filled["a"], [(0, b"bye")], 3)               # M (both names)
        inodes.unlink(txn, ROOT_INO, b"link")                                 # D
        inodes.create(txn, filled["deep"], b"new", FILE, 0, 0)                # A
        inodes.setattr(txn, filled["docs"], mode=0o700)                       # M of a folder
        snapshots.create(txn, "vol", "s2")
    with store.write() as txn:
        assert _diff(txn, "vol@s1", "vol@s2") == [
            "M\tdocs/", "M\tdocs/a.txt", "R\tdocs/deep/big\tbig-moved",
            "A\tdocs/deep/new", "M\thard", "D\tlink"]
        assert _diff(txn, "vol@s1", "vol@s1") == []
        # The live volume, written as objects first.
        inodes.create(txn, ROOT_INO, b"later", DIR, 0, 0)
        assert _diff(txn, "vol@s2", "vol") == ["A\tlater/"]
    assert_verified(store)


times = st.integers(TIME_MIN_NS, TIME_MAX_NS)  # beyond int64 nanoseconds too (wide rows)
inode_fields = st.fixed_dictionaries({
    "mode": st.integers(0, MODE_MAX), "uid": st.integers(0, 2**32 - 1), "gid": st.integers(0, 2**32 - 1),
    "nlink": st.integers(0, 2**32 - 1), "size": st.integers(0, 2**64 - 1), "atime_ns": times,
    "mtime_ns": times, "ctime_ns": times, "rdev": st.integers(0, 2**64 - 1), "parent": st.integers(0, 2**64 - 1),
    "data_bytes": st.integers(0, 2**64 - 1), "flags": st.sampled_from([0, LAZY, IN_PIECES]),
    "tree_id": st.binary(min_size=32, max_size=32), "target": st.binary(max_size=40)})
ids = st.binary(min_size=32, max_size=32)
names = st.binary(min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(fields=inode_fields, ino=st.integers(0, 2**64 - 1),
       xattrs=st.lists(st.tuples(names, st.binary(max_size=30)), max_size=3),
       blocks=st.lists(st.tuples(st.integers(0, 2**64 - 1), ids), max_size=3),
       entries=st.lists(st.tuples(names, ids), max_size=3),
       pieced=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 255), ids), new_id=ids)
def test_objects_from_row_bytes_equal_objects_from_inodes(fields, ino, xattrs, blocks, entries, pieced, new_id):
    """A snapshot encodes objects from the bytes of inode rows: the same bytes
    (so the same ids) as from the rows unpacked, whatever the fields hold."""
    node = Inode(**fields)
    row = node.pack()
    as_rows = [(i.to_bytes(8, "big"), cid) for i, cid in blocks]
    as_file = trees.encode(trees.TreeObject(trees.FILE, ino, node, xattrs=xattrs, blocks=blocks))
    assert trees.encode_row(ino, row, xattrs, blocks=as_rows) == as_file
    assert trees.encode_file_row(ino, row, xattrs, as_rows) == as_file
    assert trees.encode_file_row(ino, row, [], as_rows) == trees.encode(trees.TreeObject(trees.FILE, ino, node, blocks=blocks))
    assert trees.encode_row(ino, row, xattrs, entries=entries) == trees.encode(
        trees.TreeObject(trees.DIR, ino, node, xattrs=xattrs, entries=entries))
    count, height, top = pieced
    assert trees.encode_row(ino, row, xattrs, pieced=pieced) == trees.encode(
        trees.TreeObject(trees.DIR, ino, node, xattrs=xattrs, pieces=top, count=count, level=height))
    # A row given a tree id (and IN_PIECES set or cleared) keeps every other field.
    for flags in ({}, {"set_flags": IN_PIECES}, {"clear_flags": IN_PIECES}):
        changed = Inode.unpack(row_with_tree(row, new_id, **flags))
        want = Inode(**{**fields, "tree_id": new_id})
        want.flags = (want.flags | flags.get("set_flags", 0)) & ~flags.get("clear_flags", 0)
        assert changed == want


def _objects(txn) -> int:
    return txn.txn.stat(txn.store.dbs["objects"])["entries"]


def test_objects_freed_in_the_batch_that_made_them_are_never_stored(store, inodes, filled):
    with store.write() as txn:
        snapshots.create(txn, "vol", "s1")
        objects, chunk = _objects(txn), chunks.ref_info(txn, txn.get("blocks", inodes_key(inodes, filled["a"])))[0]
        refs = trees.RefBatch(txn)
        cid = bytes(txn.get("blocks", inodes_key(inodes, filled["a"])))
        f = trees.TreeObject(trees.FILE, 99, Inode(mode=FILE, uid=0, gid=0), blocks=[(0, cid)])
        fid = refs.add(trees.encode(f), [], [cid], held=0)
        d = trees.TreeObject(trees.DIR, 98, Inode(mode=DIR, uid=0, gid=0), entries=[(b"f", fid)])
        did = refs.add(trees.encode(d), [fid], [], held=1)
        assert (refs.count(fid), refs.count(did)) == (1, 1)
        refs.decref(did)
        refs.flush()
        assert _objects(txn) == objects
        assert chunks.ref_info(txn, cid)[0] == chunk
        assert not txn.get("orefs", fid) and not txn.get("orefs", did)
    assert_verified(store)


def inodes_key(inodes, ino):
    return vkey(inodes.vid, ino, 0)


def test_a_snapshot_written_in_small_batches_equals_one_written_at_once(tmp_path, monkeypatch):
    """A batch that holds too many objects stores them as it goes: the tree
    and every count are the same."""
    roots = []
    for hold in (trees.HOLD_OBJECTS, 2):
        monkeypatch.setattr(trees, "HOLD_OBJECTS", hold)
        store = Store.open(str(tmp_path / f"store{hold}"))
        try:
            with store.write() as txn:
                txn.now_ns = 1_700_000_000 * 10**9
                record = volumes.create(txn, "vol")
                vol = Inodes(record.vid, store.block_size, record.compression)
                sub, _ = vol.create(txn, ROOT_INO, b"sub", DIR, 0, 0)
                for i in range(300):  # a folder in pieces, files of equal content among them
                    ino, _ = vol.create(txn, ROOT_INO if i % 3 else sub, b"f%03d" % i, FILE, 0, 0)
                    vol.write_blocks(txn, ino, [(0, b"%d" % (i % 7))], 1)
                vol.setxattr(txn, ino, b"user.tag", b"v1")
                vol.link(txn, ino, ROOT_INO, b"hard")
                vol.create(txn, sub, b"link", stat.S_IFLNK | 0o777, 0, 0, target=b"../f001")
            with store.write() as txn:
                roots.append(snapshots.create(txn, "vol", "s1").root)
            with store.write() as txn:
                vol.unlink(txn, ROOT_INO, b"f007")
                snapshots.create(txn, "vol", "s2")
            assert_verified(store)
        finally:
            Store._instances.pop(store.path, None)
            store.close()
    assert roots[0] == roots[1]
