"""The parts of a volume's metadata on a temporary store (no FUSE): the tree
ids a change clears (treerows), a clone's rows made only as they are reached,
the inode counter (inoderows), and what the store promises the worker's copy
of its rows (workerrows): which tables its operations write, and whose rows
they are."""

import os

import pytest

from fusevol.store import check, chunks, snapshots, volumes, workerrows
from fusevol.store.schema import LAZY, NO_TREE, ROOT_INO, TABLES, ino_key, u64

from .conftest import BS, DIR, FILE
from .test_store_trees import _inodes_of, assert_verified, listing, populate


@pytest.fixture
def snapped(store, inodes):
    """A volume with a few folders and files, snapshotted as vol@s."""
    with store.write() as txn:
        ino = populate(txn, inodes)
        ino["other"], _ = inodes.create(txn, ROOT_INO, b"other", DIR, 0, 0)
        ino["o"], _ = inodes.create(txn, ino["other"], b"o", FILE, 0, 0)
        inodes.link(txn, ino["big"], ino["other"], b"big2")  # two names in two folders
        snapshots.create(txn, "vol", "s")
    return ino


def tree_id(txn, inodes, ino) -> bytes:
    return inodes.get(txn, ino).tree_id


# -- a change clears tree ids, up to the root ---------------------------------------

def test_a_snapshot_leaves_every_row_with_its_object(store, inodes, snapped):
    with store.read() as txn:
        assert all(tree_id(txn, inodes, ino) != NO_TREE for ino in [ROOT_INO, *snapped.values()])


def test_a_change_clears_the_ids_of_the_inode_and_the_folders_above_it(store, inodes, snapped):
    with store.write() as txn:
        inodes.write_blocks(txn, snapped["a"], [(0, b"changed")], 7)
        cleared = {name for name, ino in snapped.items() if tree_id(txn, inodes, ino) == NO_TREE}
        assert cleared == {"a", "docs"}  # and the root; never a sibling
        assert tree_id(txn, inodes, ROOT_INO) == NO_TREE
    assert_verified(store)  # the objects the cleared rows held were let go, once


def test_a_file_with_names_in_two_folders_clears_both(store, inodes, snapped):
    with store.write() as txn:
        inodes.setxattr(txn, snapped["big"], b"user.tag", b"v2")
        cleared = {name for name, ino in snapped.items() if tree_id(txn, inodes, ino) == NO_TREE}
        assert cleared == {"big", "deep", "docs", "other"}
    assert_verified(store)


def test_the_next_snapshot_writes_what_the_change_cleared(store, inodes, snapped):
    with store.write() as txn:
        unchanged = tree_id(txn, inodes, snapped["other"])
        inodes.rename(txn, snapped["docs"], b"a.txt", snapped["docs"], b"b.txt")
        snapshots.create(txn, "vol", "t")
        assert tree_id(txn, inodes, snapped["other"]) == unchanged
        assert tree_id(txn, inodes, snapped["docs"]) != NO_TREE
    assert_verified(store)


# -- a clone's rows, made as they are reached -----------------------------------------

def rows_of(txn, vid: int, table: str) -> int:
    return sum(1 for _ in txn.scan(table, u64(vid)))


def test_a_clone_starts_as_its_root_row_alone(store, inodes, snapped):
    with store.write() as txn:
        clone = snapshots.clone(txn, "vol", "s", "copy")
        assert rows_of(txn, clone.vid, "inodes") == 1
        assert rows_of(txn, clone.vid, "dirents") == rows_of(txn, clone.vid, "blocks") == 0
        assert _inodes_of(txn, "copy").get(txn, ROOT_INO).flags & LAZY


def test_reaching_a_folder_makes_its_entries_rows_and_no_more(store, inodes, snapped):
    with store.write() as txn:
        clone = snapshots.clone(txn, "vol", "s", "copy")
        cinodes = _inodes_of(txn, "copy")
        docs = cinodes.lookup(txn, ROOT_INO, b"docs")
        assert docs == snapped["docs"]  # numbers are the tree's
        assert cinodes.get(txn, docs).flags & LAZY  # listed in the root, not reached yet
        assert rows_of(txn, clone.vid, "dirents") == 4  # the root's names alone
        cinodes.list_dir(txn, docs)
        assert not cinodes.get(txn, docs).flags & LAZY
        assert rows_of(txn, clone.vid, "blocks") == 0  # no file was read
        assert cinodes.read_block(txn, snapped["a"], 0) == b"hello " * 100
        assert rows_of(txn, clone.vid, "blocks") == 1
    assert_verified(store)


def test_a_clone_reads_and_changes_as_the_volume_it_came_from(store, inodes, snapped):
    with store.write() as txn:
        snapshots.clone(txn, "vol", "s", "copy")
        cinodes = _inodes_of(txn, "copy")
        assert listing(txn, cinodes) == listing(txn, inodes)  # every folder reached
        cinodes.unlink(txn, snapped["other"], b"big2")
        cinodes.write_blocks(txn, snapped["big"], [(1, os.urandom(BS))], 3 * BS)
        assert cinodes.get(txn, snapped["big"]).nlink == 1
        assert inodes.get(txn, snapped["big"]).nlink == 2  # the source is its own
    assert_verified(store)


def test_an_unnamed_clone_file_purged_unread_lets_go_of_its_object(store, inodes, snapped):
    with store.write() as txn:
        snapshots.clone(txn, "vol", "s", "copy")
        cinodes = _inodes_of(txn, "copy")
        docs = cinodes.lookup(txn, ROOT_INO, b"docs")  # as the kernel reaches it
        ino, gone = cinodes.unlink(txn, docs, b"a.txt")
        assert not gone  # `hard` still names it
        ino, gone = cinodes.unlink(txn, ROOT_INO, b"hard")
        assert gone
        cinodes.purge(txn, ino)
        with pytest.raises(Exception):
            cinodes.get(txn, ino)
    assert_verified(store)


# -- the inode counter -------------------------------------------------------------------

def test_numbers_stay_above_every_one_used_across_rollback(store, inodes, snapped):
    with store.write() as txn:
        ino, _ = inodes.create(txn, ROOT_INO, b"after", FILE, 0, 0)
        snapshots.rollback(txn, "vol", "s")
        assert inodes.next_ino(txn) > ino
        again, _ = inodes.create(txn, ROOT_INO, b"again", FILE, 0, 0)
        assert again > ino
    assert_verified(store)


# -- what the worker may keep of its rows --------------------------------------------------

def test_a_volume_removed_leaves_no_row_in_any_of_its_tables(store, inodes, snapped):
    with store.write() as txn:
        inodes.write_blocks(txn, snapped["o"], [(0, b"only here")], 9)
        ino, _ = inodes.unlink(txn, snapped["other"], b"o")  # an orphan
        snapshots.remove(txn, "vol", "s")
        volumes.remove(txn, "vol")
        left = {t: rows_of(txn, inodes.vid, t) for t in workerrows.WORKER_TABLES - {"meta"}}
        assert set(left.values()) == {0}, left
        assert txn.get("meta", b"next_ino" + u64(inodes.vid)) is None
    with store.read() as txn:
        assert chunks.totals(txn)["chunks"] == 0  # every chunk let go
        assert check.verify(txn)["ok"]


def recorded(store, fn) -> set[str]:
    """The tables fn(txn) writes."""
    with store.write() as txn:
        txn.writes, txn.recorded = [], frozenset(TABLES)
        fn(txn)
        return {table for table, _, _ in txn.writes}


def test_a_volume_s_operations_write_only_its_worker_s_tables(store, inodes):
    def everything(txn):
        d, _ = inodes.create(txn, ROOT_INO, b"d", DIR, 0, 0)
        f, _ = inodes.create(txn, d, b"f", FILE, 0, 0)
        inodes.write_blocks(txn, f, [(0, b"x" * 100)], 100)
        inodes.setxattr(txn, f, b"user.a", b"1")
        inodes.link(txn, f, ROOT_INO, b"f2")
        inodes.rename(txn, ROOT_INO, b"f2", d, b"f3")
        inodes.setattr(txn, f, size=10)
        inodes.unlink(txn, d, b"f")
        inodes.unlink(txn, d, b"f3")
        inodes.purge(txn, f)

    written = recorded(store, everything)
    # A chunk's count and the volume's counters are the store's, folded in at commit.
    assert written - workerrows.WORKER_TABLES <= {"refs", "chunks", "packs", "packdead"}
    assert written >= workerrows.NAME_TABLES | {"inodes", "blocks", "xattrs", "orphans"}


def test_changes_of_data_and_attributes_write_no_rows_of_names(store, inodes):
    with store.write() as txn:
        f, _ = inodes.create(txn, ROOT_INO, b"f", FILE, 0, 0)
        inodes.write_blocks(txn, f, [(0, b"x" * 100)], 100)
        inodes.unlink(txn, ROOT_INO, b"f")
    def data_and_attributes(txn):
        inodes.write_blocks(txn, f, [(0, b"y" * 200)], 200)
        inodes.setattr(txn, f, size=50, mode=0o600)
        inodes.setxattr(txn, f, b"user.a", b"1")
        inodes.free_data(txn, f)

    assert recorded(store, data_and_attributes) & workerrows.NAME_TABLES == set()


def test_each_row_of_a_volume_belongs_to_its_inode(store, inodes):
    owner = workerrows.row_owner(inodes.vid)
    with store.write() as txn:
        d, _ = inodes.create(txn, ROOT_INO, b"d", DIR, 0, 0)
        f, _ = inodes.create(txn, d, b"f", FILE, 0, 0)
        inodes.write_blocks(txn, f, [(3, b"x")], 3 * BS + 1)
        owners = {table: {owner(table, bytes(k)) for k, _ in txn.scan(table, u64(inodes.vid))}
                  for table in ("inodes", "dirents", "parents", "blocks")}
    assert owners == {"inodes": {ROOT_INO, d, f}, "dirents": {ROOT_INO, d},
                      "parents": {d, f}, "blocks": {f}}
    assert owner("meta", b"next_ino" + u64(inodes.vid)) is None
    assert owner("inodes", ino_key(inodes.vid + 1, f)) is None  # another volume's
