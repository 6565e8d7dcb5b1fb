"""Large folders as trees of pieces: same listing as one object, equal folders
equal ids, a change costs a bounded number of objects, old stores still work.

Everything runs on real LMDB stores (and, at the end, a real FUSE mount)."""

import io
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import needs_fuse, run_cli
from fusevol.errors import FsError
from fusevol.store import Inodes, Store, check, pieces, snapshots, stream, trees, volumes
from fusevol.store.diff import diff
from fusevol.store.schema import ROOT_INO, Inode

FIXED_NS = 1_700_000_000 * 10**9


def objects_count(txn) -> int:
    return trees.counted(txn)  # every stored object has its count row


def file_ids(txn, n: int) -> list[bytes]:
    """n distinct file objects, stored (a piece's items must exist)."""
    return [trees.put(txn, trees.TreeObject(trees.FILE, i, Inode(mode=0o100644, uid=0, gid=0)))
            for i in range(n)]


def head(built: pieces.Built) -> trees.TreeObject:
    return trees.TreeObject(trees.DIR, 1, Inode(mode=0o40755, uid=0, gid=0),
                            pieces=built.top, count=built.count, level=built.height)


names = st.sets(st.integers(0, 5000), min_size=1, max_size=1500)
edits = st.lists(st.tuples(st.integers(0, 5000), st.one_of(st.none(), st.integers(0, 99))),
                 min_size=1, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=names, batches=st.lists(edits, min_size=1, max_size=4))
def test_pieces_updated_in_any_steps_equal_pieces_built_at_once(tmp_path_factory, start, batches):
    store = Store.open(str(tmp_path_factory.mktemp("store")))
    try:
        with store.write() as txn:
            ids = file_ids(txn, 100)
            live = {b"n%05d" % k: ids[k % 100] for k in start}
            built = pieces.build(sorted(live.items()))
            built.store(txn)
            first = trees.put(txn, head(built))
            for batch in batches:
                changes = {}
                for k, v in batch:
                    changes[b"n%05d" % k] = ids[v] if v is not None else None
                for name, value in changes.items():
                    if value is None:
                        live.pop(name, None)
                    else:
                        live[name] = value
                if not live:
                    return
                built = pieces.update(txn, built.top, built.height, built.count, sorted(changes.items()))
                at_once = pieces.build(sorted(live.items()))
                assert (built.top, built.height, built.count) == (at_once.top, at_once.height, at_once.count)
                built.store(txn)
            last = trees.put(txn, head(built))
            # The pieces list what a single object would, and diff pairs them.
            assert trees.entries(txn, trees.get(txn, last)) == sorted(live.items())
            old = dict(trees.entries(txn, trees.get(txn, first)))
            want = sorted((k, old.get(k), live.get(k)) for k in old.keys() | live.keys()
                          if old.get(k) != live.get(k))
            assert list(pieces.changed_entries(txn, trees.get(txn, first), trees.get(txn, last))) == want
    finally:
        Store._instances.pop(store.path, None)
        store.close()


def test_no_changes_keep_a_tree_of_one_piece(store):
    """A folder whose own attributes changed (no entry did) keeps its pieces,
    also when they are a single leaf (no name among them is a boundary)."""
    with store.write() as txn:
        ids = file_ids(txn, 3)
        names = [b"%05d" % i for i in range(400) if not pieces.is_boundary(0, b"%05d" % i)][:20]
        built = pieces.build([(n, ids[0]) for n in names])
        assert built.height == 0
        same = pieces.update(txn, built.top, built.height, built.count, [])
        assert (same.top, same.height, same.count) == (built.top, 0, 20)


def test_small_folders_keep_the_bytes_they_always_had():
    """Ids computed by the code before pieces: existing snapshots' folders stay equal."""
    f = trees.TreeObject(trees.FILE, 7, Inode(mode=0o100644, uid=1, gid=2, size=5, mtime_ns=10**18),
                         blocks=[(0, bytes(range(32)))])
    fid = trees.object_id(trees.encode(f))
    d = trees.TreeObject(trees.DIR, 2, Inode(mode=0o40755, uid=0, gid=0, nlink=2, mtime_ns=5),
                         entries=[(b"n%04d" % i, fid) for i in range(300)])
    assert fid.hex() == "9f6dced1a259d4b1cd416660e90d87111af7a611f8449f1a3a9b6195aa4687d2"
    assert trees.object_id(trees.encode(d)).hex() == \
        "f2d295b4eefad1dbdaedae3cbcede2efda469fbcc5e72e2254effe2d5f37faee"


def make_volume(store: Store, name: str) -> Inodes:
    with store.write() as txn:
        record = volumes.create(txn, name)
    return Inodes(record.vid, store.block_size, record.compression)


def fill(store: Store, inodes: Inodes, n: int, per_txn: int = 20_000) -> tuple[int, list[int]]:
    with store.write() as txn:
        txn.now_ns = FIXED_NS
        folder, _ = inodes.create(txn, ROOT_INO, b"big", stat.S_IFDIR | 0o755, 0, 0)
    files = []
    for start in range(0, n, per_txn):
        with store.write() as txn:
            txn.now_ns = FIXED_NS
            for i in range(start, min(n, start + per_txn)):
                ino, _ = inodes.create(txn, folder, b"f%07d" % i, stat.S_IFREG | 0o644, 0, 0)
                inodes.write_blocks(txn, ino, [(0, b"file %d\n" % i)], 8 + len(str(i)))
                files.append(ino)
    return folder, files


def test_one_change_in_a_folder_of_100000_writes_a_bounded_number_of_objects(store):
    inodes = make_volume(store, "big")
    folder, files = fill(store, inodes, 100_000)
    with store.write() as txn:
        snapshots.create(txn, "big", "s0")
        before = {oid for oid, _ in trees.stored_rows(txn)}
    with store.write() as txn:
        inodes.write_blocks(txn, files[54_321], [(0, b"changed")], 7)
    with store.write() as txn:
        snapshots.create(txn, "big", "s1")
        new = [len(v) for oid, v in trees.stored_rows(txn) if oid not in before]
        written = len(new)
        old = bytes.fromhex(snapshots.get(txn, "big", "s0").root)
        new = bytes.fromhex(snapshots.get(txn, "big", "s1").root)
        changes = diff(txn, old, new)
    # The file, a leaf or two, one index piece per level, the folder, the root.
    assert written <= 12, written
    assert sum(new) < 30_000, new  # not the folder's 100,000 entries again
    assert [c.line() for c in changes] == ["M\tbig/f0054321"]
    # An incremental stream carries the change, not the folder.
    out = io.BytesIO()
    sent = stream.send(store, "big", "s1", out, base=("big", "s0"))
    assert sent["objects"] <= 10 and sent["chunks"] == 1, sent
    assert len(out.getvalue()) < 20_000


def test_one_change_in_a_folder_of_100000_changes_counts_in_few_places(store, monkeypatch):
    """The new pieces take a reference on each of their entries (dozens of
    counts): those counts must sit together, not one on each page of a table
    keyed by random ids, which made a snapshot in a big folder write 2-3x the
    pages of one in a small folder."""
    from fusevol.store import env
    inodes = make_volume(store, "big")
    folder, files = fill(store, inodes, 100_000)
    with store.write() as txn:
        snapshots.create(txn, "big", "s0")
    written = []
    real_put = env.Txn.put

    def put(txn, table, key, value, overwrite=True):
        written.append((table, bytes(key)))
        return real_put(txn, table, key, value, overwrite)

    for k, index in enumerate((54_321, 7, 99_990)):
        with store.write() as txn:
            inodes.write_blocks(txn, files[index], [(0, b"changed")], 7)
        written.clear()
        monkeypatch.setattr(env.Txn, "put", put)
        with store.write() as txn:
            snapshots.create(txn, "big", f"s{k + 1}")
        monkeypatch.setattr(env.Txn, "put", real_put)
        by_id = [key for table, key in written if table == "orefs"]
        by_place = {key for table, key in written if table == "ocounts"}
        packs_touched = {key[:8] for key in by_place}
        # Rows by id: one per new object (the file, pieces, the folder, the root).
        assert len(by_id) <= 12, len(by_id)
        # Counts: dozens (each new piece holds all its entries), in a few packs.
        assert len(by_place) >= 20, len(by_place)
        assert len(packs_touched) <= 10, (len(by_place), len(packs_touched))


def test_a_folder_written_step_by_step_equals_one_written_at_once(store):
    """Two volumes, the same operations at the same times: one snapshotted
    after every step (each folder rewritten from its pieces and the names that
    changed), one only at the end (listed whole). The folder has one id."""
    steps = make_volume(store, "steps")
    once = make_volume(store, "once")
    ops = [("create", i) for i in range(900)] + [("unlink", i) for i in range(0, 900, 7)] + \
          [("create", i) for i in range(900, 1300)] + [("write", i) for i in range(3, 1300, 11)] + \
          [("unlink", i) for i in range(1, 700)]  # shrinks below FLAT_MAX: one object again
    for inodes in (steps, once):
        with store.write() as txn:
            txn.now_ns = FIXED_NS
            inodes.create(txn, ROOT_INO, b"d", stat.S_IFDIR | 0o755, 0, 0)
    for n, chunk in enumerate(range(0, len(ops), 150)):
        for name, inodes in (("steps", steps), ("once", once)):
            with store.write() as txn:
                txn.now_ns = FIXED_NS
                folder = inodes.lookup(txn, ROOT_INO, b"d")
                for op, i in ops[chunk: chunk + 150]:
                    fname = b"f%05d" % i
                    if op == "create":
                        inodes.create(txn, folder, fname, stat.S_IFREG | 0o644, 0, 0)
                    elif op == "unlink":
                        try:
                            inodes.unlink(txn, folder, fname)
                        except FsError:
                            pass
                    else:
                        try:
                            ino = inodes.lookup(txn, folder, fname)
                        except FsError:
                            continue
                        inodes.write_blocks(txn, ino, [(0, b"x%d" % i)], 2 + len(str(i)))
                if name == "steps":
                    snapshots.create(txn, name, f"s{n}")
    with store.write() as txn:
        txn.now_ns = FIXED_NS
        snapshots.create(txn, "once", "end")
        folders = [dict(trees.get(txn, bytes.fromhex(snapshots.get(txn, v, s).root)).entries)[b"d"]
                   for v, s in (("steps", f"s{n}"), ("once", "end"))]
        assert folders[0] == folders[1]  # (the roots differ: made at each volume's own time)
        report = check.verify(txn)
    assert report["ok"], report["problems"]


def listing(store: Store, root: bytes) -> list[tuple[bytes, bytes]]:
    with store.read() as txn:
        return [(path, obj.kind + obj.inode.size.to_bytes(8, "big")) for path, _, obj in trees.walk(txn, root)]


def test_a_store_of_flat_folders_opens_snapshots_diffs_sends_and_verifies(store_path, tmp_path, monkeypatch):
    """A store written before pieces (every folder one object, as FLAT_MAX
    this high makes them) keeps working with pieces: its folders become
    pieces at their next snapshot."""
    monkeypatch.setattr(pieces, "FLAT_MAX", 10**9)
    store = Store.open(store_path)
    inodes = make_volume(store, "old")
    folder, files = fill(store, inodes, 2000)
    with store.write() as txn:
        snapshots.create(txn, "old", "flat")
        flat_root = bytes.fromhex(snapshots.get(txn, "old", "flat").root)
        assert all(obj.pieces is None for _, _, obj in trees.walk(txn, flat_root))
    Store._instances.pop(store_path).close()
    monkeypatch.setattr(pieces, "FLAT_MAX", 256)

    store = Store.open(store_path)
    inodes = Inodes(inodes.vid, store.block_size)
    with store.write() as txn:
        inodes.write_blocks(txn, files[10], [(0, b"new")], 3)
        inodes.unlink(txn, folder, b"f0000020")
        inodes.create(txn, folder, b"g-new", stat.S_IFREG | 0o644, 0, 0)
    with store.write() as txn:
        snapshots.create(txn, "old", "pieced")
        new_root = bytes.fromhex(snapshots.get(txn, "old", "pieced").root)
        assert trees.get(txn, dict(trees.get(txn, new_root).entries)[b"big"]).pieces is not None
        lines = [c.line() for c in diff(txn, flat_root, new_root)]
    assert lines == ["M\tbig/f0000010", "D\tbig/f0000020", "A\tbig/g-new"]
    # One more change: the folder is rewritten from its pieces now.
    with store.write() as txn:
        inodes.write_blocks(txn, files[30], [(0, b"again")], 5)
    with store.write() as txn:
        snapshots.create(txn, "old", "third")

    # Full and incremental streams, old form and new, into another store.
    full, inc = io.BytesIO(), io.BytesIO()
    stream.send(store, "old", "flat", full)
    stream.send(store, "old", "third", inc, base=("old", "flat"))
    other = Store.open(str(tmp_path / "other"))
    full.seek(0)
    inc.seek(0)
    stream.receive(other, "copy", full)
    stream.receive(other, "copy", inc)
    with other.read() as txn:
        root = bytes.fromhex(snapshots.get(txn, "copy", "third").root)
    with store.read() as txn:
        mine = bytes.fromhex(snapshots.get(txn, "old", "third").root)
    assert root == mine and listing(other, root) == listing(store, mine)
    for s in (store, other):
        with s.write() as txn:
            assert check.verify(txn)["ok"]
            report = check.gc(txn, set())
            assert not report["counts_fixed"] and report["objects_freed"] == 0, report
    Store._instances.pop(str(tmp_path / "other")).close()


def test_deleting_snapshots_and_the_volume_frees_every_piece(store):
    inodes = make_volume(store, "gone")
    folder, files = fill(store, inodes, 3000)
    with store.write() as txn:
        snapshots.create(txn, "gone", "a")
    with store.write() as txn:
        inodes.write_blocks(txn, files[5], [(0, b"b")], 1)
        inodes.create(txn, folder, b"zz", stat.S_IFREG | 0o644, 0, 0)
    with store.write() as txn:
        snapshots.create(txn, "gone", "b")
    with store.write() as txn:
        inodes.write_blocks(txn, files[6], [(0, b"c")], 1)  # a base row holds the last pieces now
        assert check.verify(txn)["ok"]
        snapshots.remove(txn, "gone", "a")
        snapshots.remove(txn, "gone", "b")
        volumes.drop_rows(txn, inodes.vid)
        assert objects_count(txn) == 0
        assert txn.txn.stat(txn.store.dbs["dirchanges"])["entries"] == 0


@needs_fuse
def test_a_big_folder_through_a_mount_snapshots_clones_and_diffs(mounts, store_path):
    mp = mounts.mount("mm")
    os.mkdir(os.path.join(mp, "d"))
    for i in range(600):
        with open(os.path.join(mp, "d", f"f{i:04d}"), "wb") as f:
            f.write(b"%d" % i)
    run_cli(store_path, "snapshot", "create", "mm@one")
    with open(os.path.join(mp, "d", "f0300"), "wb") as f:
        f.write(b"changed")
    os.unlink(os.path.join(mp, "d", "f0007"))
    os.rename(os.path.join(mp, "d", "f0008"), os.path.join(mp, "d", "moved"))
    with open(os.path.join(mp, "d", "new"), "wb") as f:
        f.write(b"new")
    run_cli(store_path, "snapshot", "create", "mm@two")
    out = run_cli(store_path, "diff", "mm@one", "mm@two").stdout.decode().splitlines()
    assert out == ["D\td/f0007", "R\td/f0008\td/moved", "M\td/f0300", "A\td/new"], out
    run_cli(store_path, "clone", "mm@two", "cc")
    copy = mounts.mount("cc", create=False)
    assert sorted(os.listdir(os.path.join(copy, "d"))) == sorted(os.listdir(os.path.join(mp, "d")))
    with open(os.path.join(copy, "d", "f0300"), "rb") as f:
        assert f.read() == b"changed"
    os.unlink(os.path.join(copy, "d", "f0001"))  # a clone's folder in pieces changes too
    run_cli(store_path, "snapshot", "create", "cc@after")
    assert run_cli(store_path, "diff", "mm@two", "cc@after").stdout.decode().splitlines() == ["D\td/f0001"]
    mounts.cleanup()
    assert run_cli(store_path, "verify").returncode == 0


def folder_object(txn, inodes: Inodes, root: bytes, path: list[bytes]) -> trees.TreeObject:
    obj = trees.get(txn, root)
    for name in path:
        obj = trees.get(txn, dict(trees.entries(txn, obj))[name])
    return obj


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_changes_between_snapshots_keep_every_folder_equal_to_its_rows(store, seed, monkeypatch):
    """Creates, unlinks, renames within and across two large folders, hard
    links, writes, chmods, subfolders: after each snapshot every folder's
    object lists what its rows hold, and equals the object written from
    scratch (only the names noted as changed were read to make it)."""
    import random
    rng = random.Random(seed)
    updates = []
    real_update = pieces.update
    monkeypatch.setattr(pieces, "update", lambda *args: updates.append(1) or real_update(*args))
    inodes = make_volume(store, "rand")
    with store.write() as txn:
        txn.now_ns = FIXED_NS
        a, _ = inodes.create(txn, ROOT_INO, b"a", stat.S_IFDIR | 0o755, 0, 0)
        b, _ = inodes.create(txn, ROOT_INO, b"b", stat.S_IFDIR | 0o755, 0, 0)
        for i in range(600):
            inodes.create(txn, a if i % 2 else b, b"n%04d" % i, stat.S_IFREG | 0o644, 0, 0)
    folders = {b"a": a, b"b": b}

    def random_name(folder):
        names = [n for n, _ in inodes.list_dir(txn, folder)]
        return rng.choice(names) if names else None

    for step in range(12):
        with store.write() as txn:
            txn.now_ns = FIXED_NS + step
            for _ in range(rng.randrange(1, 30)):
                folder = folders[rng.choice([b"a", b"b"])]
                other = folders[rng.choice([b"a", b"b"])]
                op = rng.choice(["create", "unlink", "rename", "link", "write", "chmod", "mkdir"])
                name = random_name(folder)
                try:
                    if op == "create":
                        inodes.create(txn, folder, b"c%06d" % rng.randrange(10**6), stat.S_IFREG | 0o644, 0, 0)
                    elif op == "mkdir":
                        sub, _ = inodes.create(txn, folder, b"d%06d" % rng.randrange(10**6),
                                               stat.S_IFDIR | 0o755, 0, 0)
                        inodes.create(txn, sub, b"inside", stat.S_IFREG | 0o644, 0, 0)
                    elif name is None:
                        continue
                    elif op == "unlink":
                        ino = inodes.lookup(txn, folder, name)
                        if stat.S_ISDIR(inodes.get(txn, ino).mode):
                            inodes.unlink(txn, ino, b"inside")
                            inodes.rmdir(txn, folder, name)
                        else:
                            inodes.unlink(txn, folder, name)
                    elif op == "rename":
                        inodes.rename(txn, folder, name, other, b"r%06d" % rng.randrange(10**6))
                    elif op == "link":
                        inodes.link(txn, inodes.lookup(txn, folder, name), other, b"l%06d" % rng.randrange(10**6))
                    else:
                        ino = inodes.lookup(txn, folder, name)
                        if stat.S_ISDIR(inodes.get(txn, ino).mode):
                            ino = inodes.lookup(txn, ino, b"inside")
                        if op == "write":
                            inodes.write_blocks(txn, ino, [(0, b"w%d" % rng.randrange(10**6))], 7)
                        else:
                            inodes.setattr(txn, ino, mode=rng.choice([0o600, 0o644, 0o755]))
                except FsError:
                    pass  # EPERM on a folder's hard link, ENOENT after a rename away: fine
            snapshots.create(txn, "rand", f"s{step}")
            root = bytes.fromhex(snapshots.get(txn, "rand", f"s{step}").root)
            for path, folder in folders.items():
                obj = folder_object(txn, inodes, root, [path])
                live = [(n, inodes.get(txn, child).tree_id) for n, child in inodes.list_dir(txn, folder)]
                assert trees.entries(txn, obj) == live
                if len(live) > pieces.FLAT_MAX:
                    assert obj.pieces == pieces.build(live).top
                else:
                    assert obj.pieces is None
    assert len(updates) >= 12  # the folders were rewritten from their pieces, not listed
    with store.write() as txn:
        assert check.verify(txn)["ok"]
        report = check.gc(txn, set())
        assert not report["counts_fixed"] and report["objects_freed"] == 0 and not report["usage_fixed"], report
