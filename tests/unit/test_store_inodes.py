"""Inodes on a temporary store: POSIX rules of names, links and attributes,
and the block maps with the counters they keep (no FUSE)."""

import errno
import os
import stat

import pytest

from fusevol.errors import FsError, NoSpace
from fusevol.store import Txn, chunks, check
from fusevol.store.schema import NO_TREE, ROOT_INO, ino_key

from .conftest import BS, DIR, FILE


def fails(err: int, fn, *args, **kw):
    with pytest.raises(FsError) as info:
        fn(*args, **kw)
    assert info.value.errno == err, errno.errorcode.get(info.value.errno)


def names(inodes, txn, ino=ROOT_INO) -> list[bytes]:
    return [name for name, _ in inodes.list_dir(txn, ino)]


def assert_store_consistent(store):
    with store.read() as txn:
        report = check.verify(txn)
    assert report["ok"], report["problems"]


# -- create and lookup --------------------------------------------------------

def test_create_links_the_name_and_counts_it(store, inodes):
    with store.write() as txn:
        before = inodes.get(txn, ROOT_INO)
        ino, node = inodes.create(txn, ROOT_INO, b"f", FILE, 1000, 1000)
        d, dnode = inodes.create(txn, ROOT_INO, b"d", DIR, 0, 0)
        root = inodes.get(txn, ROOT_INO)
        assert inodes.lookup(txn, ROOT_INO, b"f") == ino
        assert inodes.get(txn, ino) == node
        assert (node.nlink, node.uid, node.size) == (1, 1000, 0)
        assert (dnode.nlink, dnode.parent) == (2, ROOT_INO)
        assert root.nlink == before.nlink + 1  # the new folder's `..`
        assert root.mtime_ns >= before.mtime_ns and root.mtime_ns == root.ctime_ns
        assert inodes.usage(txn).inodes == 3
        assert names(inodes, txn) == [b"d", b"f"]  # sorted: a prefix scan
    with store.read() as txn:
        assert inodes.usage(txn).inodes == 3  # folded in at commit


def test_create_refuses_bad_names_and_places(store, inodes):
    with store.write() as txn:
        f, _ = inodes.create(txn, ROOT_INO, b"f", FILE, 0, 0)
        fails(errno.EEXIST, inodes.create, txn, ROOT_INO, b"f", FILE, 0, 0)
        fails(errno.ENAMETOOLONG, inodes.create, txn, ROOT_INO, b"x" * 256, FILE, 0, 0)
        for bad in (b".", b"..", b"a/b", b""):
            fails(errno.EINVAL, inodes.create, txn, ROOT_INO, bad, FILE, 0, 0)
        fails(errno.ENOTDIR, inodes.create, txn, f, b"g", FILE, 0, 0)
        inodes.create(txn, ROOT_INO, b"x" * 255, FILE, 0, 0)  # NAME_MAX itself is fine


def test_setgid_folder_passes_its_group_down(store, inodes):
    with store.write() as txn:
        d, _ = inodes.create(txn, ROOT_INO, b"d", DIR | stat.S_ISGID, 0, 50)
        _, f = inodes.create(txn, d, b"f", FILE, 1000, 1000)
        _, sub = inodes.create(txn, d, b"sub", DIR, 1000, 1000)
    assert f.gid == 50 and not f.mode & stat.S_ISGID
    assert sub.gid == 50 and sub.mode & stat.S_ISGID


def test_lookup_dots_and_missing_names(store, inodes):
    with store.write() as txn:
        d, _ = inodes.create(txn, ROOT_INO, b"d", DIR, 0, 0)
        f, _ = inodes.create(txn, d, b"f", FILE, 0, 0)
        assert inodes.lookup(txn, d, b".") == d
        assert inodes.lookup(txn, d, b"..") == ROOT_INO
        assert inodes.lookup(txn, ROOT_INO, b"..") == ROOT_INO
        fails(errno.ENOENT, inodes.lookup, txn, d, b"nope")
        fails(errno.ENAMETOOLONG, inodes.lookup, txn, d, b"n" * 256)
        fails(errno.ENOTDIR, inodes.lookup, txn, f, b"x")
        assert inodes.resolve(txn, "d") == d
        fails(errno.ENOTDIR, inodes.resolve, txn, "d/f")


def test_inode_numbers_are_never_reused(store, inodes):
    with store.write() as txn:
        a, _ = inodes.create(txn, ROOT_INO, b"a", FILE, 0, 0)
        inodes.unlink(txn, ROOT_INO, b"a")
        inodes.purge(txn, a)
        b, _ = inodes.create(txn, ROOT_INO, b"a", FILE, 0, 0)
    assert b > a


# -- rename ---------------------------------------------------------------------

@pytest.fixture
def tree(store, inodes):
    """/a/{f, g, sub/{x}}, /b/, /e/ (empty), /h (file)"""
    ino = {}
    with store.write() as txn:
        ino["a"], _ = inodes.create(txn, ROOT_INO, b"a", DIR, 0, 0)
        ino["b"], _ = inodes.create(txn, ROOT_INO, b"b", DIR, 0, 0)
        ino["e"], _ = inodes.create(txn, ROOT_INO, b"e", DIR, 0, 0)
        ino["h"], _ = inodes.create(txn, ROOT_INO, b"h", FILE, 0, 0)
        ino["f"], _ = inodes.create(txn, ino["a"], b"f", FILE, 0, 0)
        ino["g"], _ = inodes.create(txn, ino["a"], b"g", FILE, 0, 0)
        ino["sub"], _ = inodes.create(txn, ino["a"], b"sub", DIR, 0, 0)
        ino["x"], _ = inodes.create(txn, ino["sub"], b"x", FILE, 0, 0)
    return ino


def test_rename_moves_a_name_and_folder_link_counts(store, inodes, tree):
    with store.write() as txn:
        assert inodes.rename(txn, tree["a"], b"sub", tree["b"], b"moved") is None
        assert inodes.lookup(txn, tree["b"], b"moved") == tree["sub"]
        fails(errno.ENOENT, inodes.lookup, txn, tree["a"], b"sub")
        assert inodes.get(txn, tree["sub"]).parent == tree["b"]
        assert inodes.lookup(txn, tree["sub"], b"..") == tree["b"]
        assert inodes.get(txn, tree["a"]).nlink == 2
        assert inodes.get(txn, tree["b"]).nlink == 3
    assert_store_consistent(store)


def test_rename_over_a_file_returns_it_when_it_lost_its_last_name(store, inodes, tree):
    with store.write() as txn:
        inodes.link(txn, tree["g"], ROOT_INO, b"g2")
        assert inodes.rename(txn, tree["a"], b"f", tree["a"], b"g") is None  # g2 still names it
        assert inodes.get(txn, tree["g"]).nlink == 1
        gone = inodes.rename(txn, tree["a"], b"g", ROOT_INO, b"g2")
        assert gone == tree["g"]
        assert inodes.get(txn, gone).nlink == 0
        assert inodes.orphans(txn) == [gone]
        assert inodes.lookup(txn, ROOT_INO, b"g2") == tree["f"]


def test_rename_type_rules(store, inodes, tree):
    with store.write() as txn:
        fails(errno.ENOTDIR, inodes.rename, txn, ROOT_INO, b"e", ROOT_INO, b"h")
        fails(errno.EISDIR, inodes.rename, txn, ROOT_INO, b"h", ROOT_INO, b"e")
        fails(errno.ENOTEMPTY, inodes.rename, txn, ROOT_INO, b"e", ROOT_INO, b"a")
        fails(errno.EINVAL, inodes.rename, txn, ROOT_INO, b"a", tree["sub"], b"a")  # into itself
        fails(errno.ENOENT, inodes.rename, txn, ROOT_INO, b"nope", ROOT_INO, b"x")
        # a folder over an empty folder: replaced, the parent loses its `..` count
        root = inodes.get(txn, ROOT_INO).nlink
        gone = inodes.rename(txn, ROOT_INO, b"b", ROOT_INO, b"e")
        assert gone == tree["e"]
        assert inodes.get(txn, ROOT_INO).nlink == root - 1


def test_rename_between_two_names_of_one_file_does_nothing(store, inodes, tree):
    with store.write() as txn:
        inodes.link(txn, tree["f"], tree["a"], b"f2")
        assert inodes.rename(txn, tree["a"], b"f", tree["a"], b"f2") is None
        assert names(inodes, txn, tree["a"]) == [b"f", b"f2", b"g", b"sub"]
        assert inodes.get(txn, tree["f"]).nlink == 2


def test_rename_noreplace(store, inodes, tree):
    with store.write() as txn:
        fails(errno.EEXIST, inodes.rename, txn, tree["a"], b"f", tree["a"], b"g", noreplace=True)
        assert inodes.rename(txn, tree["a"], b"f", tree["a"], b"new", noreplace=True) is None
        assert inodes.lookup(txn, tree["a"], b"new") == tree["f"]


def test_rename_exchange(store, inodes, tree):
    with store.write() as txn:
        fails(errno.ENOENT, inodes.rename, txn, tree["a"], b"f", tree["a"], b"nope", exchange=True)
        # A folder cannot be swapped with a file inside itself.
        fails(errno.EINVAL, inodes.rename, txn, tree["sub"], b"x", ROOT_INO, b"a", exchange=True)
        # A file and a folder in different folders: both names stay, the
        # inodes swap, and the folder counts follow the folder.
        a_links, root_links = inodes.get(txn, tree["a"]).nlink, inodes.get(txn, ROOT_INO).nlink
        assert inodes.rename(txn, ROOT_INO, b"h", tree["a"], b"sub", exchange=True) is None
        assert inodes.lookup(txn, tree["a"], b"sub") == tree["h"]
        assert inodes.lookup(txn, ROOT_INO, b"h") == tree["sub"]
        assert inodes.get(txn, tree["sub"]).parent == ROOT_INO
        assert inodes.get(txn, tree["a"]).nlink == a_links - 1
        assert inodes.get(txn, ROOT_INO).nlink == root_links + 1
    assert_store_consistent(store)


# -- links ------------------------------------------------------------------------

def test_link_and_unlink_keep_nlink(store, inodes, tree):
    with store.write() as txn:
        assert inodes.link(txn, tree["f"], tree["b"], b"l1").nlink == 2
        assert inodes.link(txn, tree["f"], ROOT_INO, b"l2").nlink == 3
        fails(errno.EPERM, inodes.link, txn, tree["sub"], ROOT_INO, b"dirlink")
        fails(errno.EEXIST, inodes.link, txn, tree["f"], tree["a"], b"g")
        assert inodes.unlink(txn, tree["a"], b"f") == (tree["f"], False)
        assert inodes.unlink(txn, tree["b"], b"l1") == (tree["f"], False)
        assert inodes.get(txn, tree["f"]).nlink == 1
        assert inodes.unlink(txn, ROOT_INO, b"l2") == (tree["f"], True)
        assert inodes.get(txn, tree["f"]).nlink == 0
        assert inodes.orphans(txn) == [tree["f"]]
        fails(errno.ENOENT, inodes.link, txn, tree["f"], ROOT_INO, b"back")  # no name left
        fails(errno.EISDIR, inodes.unlink, txn, ROOT_INO, b"a")


def test_rmdir_rules(store, inodes, tree):
    with store.write() as txn:
        fails(errno.ENOTEMPTY, inodes.rmdir, txn, ROOT_INO, b"a")
        fails(errno.ENOTDIR, inodes.rmdir, txn, ROOT_INO, b"h")
        fails(errno.EINVAL, inodes.rmdir, txn, tree["a"], b".")
        fails(errno.ENOTEMPTY, inodes.rmdir, txn, tree["a"], b"..")
        links = inodes.get(txn, ROOT_INO).nlink
        assert inodes.rmdir(txn, ROOT_INO, b"e") == (tree["e"], True)
        assert inodes.get(txn, ROOT_INO).nlink == links - 1


def test_purge_frees_data_and_the_row(store, inodes, tree):
    with store.write() as txn:
        inodes.write_blocks(txn, tree["f"], [(0, b"data" * 1000)], 4000)
        inodes.setxattr(txn, tree["f"], b"user.k", b"v")
        count = inodes.usage(txn).inodes
        _, gone = inodes.unlink(txn, tree["a"], b"f")
        assert gone
        inodes.free_data(txn, tree["f"])  # the data goes while the number is known
        assert inodes.get(txn, tree["f"]).data_bytes == 0
        assert inodes.usage(txn).logical_bytes == 0
        inodes.purge(txn, tree["f"])
        fails(errno.ENOENT, inodes.get, txn, tree["f"])
        assert inodes.orphans(txn) == []
        assert inodes.usage(txn).inodes == count - 1
    with store.read() as txn:
        assert chunks.totals(txn)["chunks"] == 0
    assert_store_consistent(store)



def test_purge_reads_a_chunks_row_once_and_writes_no_row_it_deletes(store, inodes, tree,
                                                                    monkeypatch):
    """A purge at once (the kernel held no reference) lets go of each block
    with one read of its chunk's row (its count and its length), and does not
    store the inode's row on the way to deleting it."""
    with store.write() as txn:
        inodes.write_blocks(txn, tree["f"], [(0, b"data" * 1000)], 4000)
        inodes.write_blocks(txn, tree["g"], [(0, b"data" * 1000)], 4000)  # the chunk stays
        inodes.unlink(txn, tree["a"], b"f")
    seen = []
    for name in ("get", "put"):
        real = getattr(Txn, name)

        def spy(txn, table, key, *args, _real=real, _name=name, **kw):
            seen.append((_name, table, bytes(key)))
            return _real(txn, table, key, *args, **kw)
        monkeypatch.setattr(Txn, name, spy)
    with store.write() as txn:
        inodes.purge(txn, tree["f"])
    row = ino_key(inodes.vid, tree["f"])
    assert ("put", "inodes", row) not in seen
    assert sum(op == "get" and table == "refs" for op, table, _ in seen) == 1
    monkeypatch.undo()
    with store.read() as txn:
        fails(errno.ENOENT, inodes.get, txn, tree["f"])
        assert inodes.orphans(txn) == []
        assert inodes.usage(txn).logical_bytes == 4000
        assert chunks.totals(txn)["chunks"] == 1
    assert_store_consistent(store)


# -- attributes and xattrs -----------------------------------------------------------

def test_setattr(store, inodes, tree):
    with store.write() as txn:
        before = inodes.get(txn, tree["f"])
        node = inodes.setattr(txn, tree["f"], mode=0o4700 | stat.S_IFDIR, uid=7, gid=8,
                              atime_ns=-5, mtime_ns=10**20)
        assert node.mode == stat.S_IFREG | 0o4700  # the type is the inode's own
        assert (node.uid, node.gid, node.atime_ns, node.mtime_ns) == (7, 8, -5, 10**20)
        assert node.ctime_ns >= before.ctime_ns
        assert inodes.get(txn, tree["f"]) == node
        node = inodes.setattr(txn, tree["f"], mtime_ns=2**80 * 10**9)  # past what the kernel sets
        assert node.mtime_ns == (2**63 - 1) * 10**9 + 10**9 - 1
        fails(errno.EISDIR, inodes.setattr, txn, tree["a"], size=0)
        fails(errno.ENOENT, inodes.setattr, txn, 999, mode=0o600)


WIDE = 2**70  # nanoseconds past 2262: the record keeps such times apart (schema.WIDE_TIMES)


@pytest.mark.parametrize("before, given", [
    ((1, 2, 3), (None, 20, 30)),             # the kernel's writeback of mtime and ctime
    ((1, 2, 3), (10, None, None)),           # atime alone; ctime is now
    ((-5, 2**63 - 1, 3), (None, -(2**63), 30)),  # the edges of int64 nanoseconds
    ((1, WIDE, 3), (None, 20, 30)),          # a record with wide times
    ((1, 2, 3), (None, WIDE, 30)),           # ...and one that needs them now
    ((1, 2, 3), (None, 2**80 * 10**9, 30)),  # past what the store keeps: clamped
])
def test_set_times_stores_what_setattr_stores(store, inodes, before, given):
    """set_times rewrites the times in the stored record as they lie: the same
    record, byte for byte, as setattr writes for the same times."""
    atime, mtime, ctime = given
    with store.write() as txn:
        txn.now_ns = 777  # one clock for both
        rows = []
        for name, set_them in ((b"a", inodes.set_times), (b"b", None)):
            ino, _ = inodes.create(txn, ROOT_INO, name, FILE, 0, 0)
            inodes.write_blocks(txn, ino, [(0, b"data")], 4)
            inodes.setattr(txn, ino, atime_ns=before[0], mtime_ns=before[1], ctime_ns=before[2])
            if set_them:
                shown = set_them(txn, ino, atime, mtime, ctime)
            else:
                shown = inodes.setattr(txn, ino, atime_ns=atime, mtime_ns=mtime, ctime_ns=ctime)
            assert shown == inodes.get(txn, ino)
            rows.append(bytes(txn.get("inodes", ino_key(inodes.vid, ino))))
    assert rows[0] == rows[1]
    assert_store_consistent(store)


def test_set_times_of_a_snapshotted_file_clears_its_tree_ids(store, inodes, tree):
    """A row that a snapshot wrote as a tree object changes the long way: the
    object is let go of, and the folders above it are written again."""
    from fusevol.store import snapshots
    with store.write() as txn:
        snapshots.create(txn, "vol", "s")
        assert inodes.get(txn, ROOT_INO).tree_id != NO_TREE
        node = inodes.set_times(txn, tree["f"], None, 5, 6)
        assert (node.mtime_ns, node.ctime_ns, node.tree_id) == (5, 6, NO_TREE)
        assert inodes.get(txn, ROOT_INO).tree_id == NO_TREE
    assert_store_consistent(store)
    with store.write() as txn:
        fails(errno.ENOENT, inodes.set_times, txn, 999, None, 1, 2)


def test_xattrs(store, inodes, tree):
    with store.write() as txn:
        f = tree["f"]
        fails(errno.ENODATA, inodes.getxattr, txn, f, b"user.a")
        inodes.setxattr(txn, f, b"user.b", b"2")
        inodes.setxattr(txn, f, b"user.a", b"1")
        inodes.setxattr(txn, f, b"user.a", b"one")
        assert inodes.getxattr(txn, f, b"user.a") == b"one"
        assert inodes.listxattr(txn, f) == [b"user.a", b"user.b"]
        inodes.removexattr(txn, f, b"user.a")
        fails(errno.ENODATA, inodes.removexattr, txn, f, b"user.a")
        assert inodes.listxattr(txn, f) == [b"user.b"]
        fails(errno.ERANGE, inodes.setxattr, txn, f, b"u" * 256, b"")
        fails(errno.ERANGE, inodes.setxattr, txn, f, b"", b"")
        fails(errno.E2BIG, inodes.setxattr, txn, f, b"user.big", bytes(65537))
        inodes.setxattr(txn, f, b"user.max", bytes(65536))


# -- block maps --------------------------------------------------------------------------

def _file(store, inodes, name=b"f"):
    with store.write() as txn:
        return inodes.create(txn, ROOT_INO, name, FILE, 0, 0)[0]


def test_write_blocks_keeps_the_map_and_the_counters(store, inodes):
    f = _file(store, inodes)
    one, two = os.urandom(BS), os.urandom(100)
    with store.write() as txn:
        assert inodes.write_blocks(txn, f, [(0, one), (1, two)], BS + 100) == BS + 100
        node = inodes.get(txn, f)
        assert (node.size, node.data_bytes) == (BS + 100, BS + 100)
        assert inodes.read_block(txn, f, 0) == one and inodes.read_block(txn, f, 1) == two
        assert inodes.read_block(txn, f, 2) is None
        assert inodes.block_ids(txn, f, [0, 1, 2]) == {0: chunks.chunk_id(one),
                                                       1: chunks.chunk_id(two), 2: None}
        # The same bytes again: nothing changes.
        assert inodes.write_blocks(txn, f, [(0, one)], BS + 100) == 0
        # A zero block is a hole: the old chunk's bytes are given back.
        assert inodes.write_blocks(txn, f, [(0, bytes(BS))], BS + 100) == -BS
        assert inodes.read_block(txn, f, 0) is None
        assert inodes.get(txn, f).data_bytes == 100
        assert inodes.usage(txn).logical_bytes == 100
    with store.read() as txn:
        assert inodes.usage(txn).logical_bytes == 100
        assert chunks.totals(txn) == {"chunks": 1, "unique_bytes": 100,
                                      "stored_bytes": chunks.ref_info(txn, chunks.chunk_id(two))[2]}
    assert_store_consistent(store)


def test_equal_blocks_are_stored_once(store, inodes):
    f, g = _file(store, inodes, b"f"), _file(store, inodes, b"g")
    data = os.urandom(BS)
    with store.write() as txn:
        inodes.write_blocks(txn, f, [(0, data), (1, data)], 2 * BS)
        inodes.write_blocks(txn, g, [(5, data)], 6 * BS)
        cid = chunks.chunk_id(data)
        assert chunks.ref_info(txn, cid)[0] == 3
        assert inodes.usage(txn).logical_bytes == 3 * BS  # logical: what the files hold
    with store.read() as txn:
        assert chunks.totals(txn)["chunks"] == 1 and chunks.totals(txn)["unique_bytes"] == BS
    with store.write() as txn:
        inodes.truncate_blocks(txn, f, 0)
        assert chunks.ref_info(txn, cid)[0] == 1
        inodes.setattr(txn, g, size=0)
        assert chunks.stored(txn, cid) is None  # the last reference took the chunk with it
        assert inodes.usage(txn).logical_bytes == 0
    with store.read() as txn:
        assert chunks.totals(txn) == {"chunks": 0, "unique_bytes": 0, "stored_bytes": 0}
    assert_store_consistent(store)


def test_truncate_cuts_the_last_block_and_drops_the_rest(store, inodes):
    f = _file(store, inodes)
    blocks = [(i, os.urandom(BS)) for i in range(3)]
    with store.write() as txn:
        inodes.write_blocks(txn, f, blocks, 3 * BS)
        inodes.setattr(txn, f, size=BS + 10)
        assert inodes.read_block(txn, f, 1) == blocks[1][1][:10]
        assert inodes.read_block(txn, f, 2) is None
        node = inodes.get(txn, f)
        assert (node.size, node.data_bytes) == (BS + 10, BS + 10)
        assert inodes.usage(txn).logical_bytes == BS + 10
        # Growing makes a hole, not data.
        inodes.setattr(txn, f, size=10 * BS)
        assert inodes.get(txn, f).data_bytes == BS + 10
        inodes.truncate_blocks(txn, f, BS)  # on a block boundary: no tail to cut
        assert inodes.block_ids(txn, f, [0, 1]) == {0: chunks.chunk_id(blocks[0][1]), 1: None}
        assert inodes.usage(txn).logical_bytes == BS
    assert_store_consistent(store)


def test_write_refuses_what_the_disk_cannot_take(store, inodes, monkeypatch):
    f = _file(store, inodes)
    monkeypatch.setattr(store, "disk_free", lambda max_age=0.0: 0)
    monkeypatch.setattr(Txn, "free_pages_bytes", lambda self: 0)
    with pytest.raises(NoSpace), store.write() as txn:
        inodes.write_blocks(txn, f, [(0, b"x" * 100)], 100)
    with store.read() as txn:
        assert inodes.block_ids(txn, f, [0]) == {0: None}
