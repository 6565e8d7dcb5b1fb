"""Snapshots, clones, rollbacks and diffs on a temporary store (no FUSE)."""

import os
import stat

import pytest

from fusevol.errors import AlreadyExists, InvalidArgument, NotFound, StoreDamaged
from fusevol.store import Inodes, check, chunks, diff, snapshots, trees, volumes
from fusevol.store.schema import ROOT_INO

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
        assert snap["inodes"] == 6 and snap["logical_bytes"] == 600 + BS + 4
        with pytest.raises(AlreadyExists):
            snapshots.create(txn, "vol", "s1")
        with pytest.raises(InvalidArgument):
            snapshots.create(txn, "vol", "bad name")
        with pytest.raises(NotFound):
            snapshots.get(txn, "vol", "nope")
        with pytest.raises(NotFound):
            snapshots.get(txn, "novol", "s1")
        auto = snapshots.create(txn, "vol")
        assert [s["name"] for s in snapshots.list_all(txn, "vol")] == ["s1", auto["name"]]
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
        assert trees.stored(txn, bytes.fromhex(snap["root"])) is None
    assert_verified(store)


def test_equal_trees_have_equal_ids(store, inodes, filled):
    with store.write() as txn:
        one = snapshots.create(txn, "vol", "s1")["root"]
        two = snapshots.create(txn, "vol", "s2")["root"]
        assert one == two
        assert trees._count(txn, bytes.fromhex(one)) == 3  # two snapshots and the live root
        paths = [p for p, _, _ in trees.walk(txn, bytes.fromhex(one))]
    assert paths == [b"", b"docs", b"docs/a.txt", b"docs/deep", b"docs/deep/big", b"hard", b"link"]


def test_tree_objects_round_trip_and_reject_garbage(store, inodes, filled):
    with store.write() as txn:
        root = bytes.fromhex(snapshots.create(txn, "vol", "s1")["root"])
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
