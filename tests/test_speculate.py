"""Changes answered ahead on the trio thread (fs/speculate.py) end up in the
store exactly as if the store thread had run them: after any sequence, the
worker's rows equal the committed rows, a snapshot taken meanwhile stays
whole, and no change answered ahead fails later."""

import random
import stat

import pytest
import trio

from fusevol.errors import FsError
from fusevol.fs.runner import TxnRunner
from fusevol.store import Inode, Inodes, Store, check, schema, snapshots, trees, volumes

from test_snapshot_tree_refs import CHANGES, build

FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


@pytest.fixture
def store(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    yield store
    Store._instances.pop(store.path, None)
    store.close()


def _open_runner(store) -> TxnRunner:
    runner = TxnRunner(store)
    runner.start()
    return runner


async def _snapshot(store, name: str, runner=None):
    """As the CLI takes one: another writer, while the worker runs; or, given
    the worker's `runner`, as the worker takes one for the CLI (in its batch,
    its rows not recorded: ops.take_snapshot)."""
    if runner is not None:
        return await runner.run_unrecorded(snapshots.create, "vol", name, durable=True)

    def take():
        with store.write() as txn:
            return snapshots.create(txn, "vol", name)
    return await trio.to_thread.run_sync(take)


def _rows(txn, vid: int) -> dict:
    """Every row of the volume, inode rows without their snapshot bookkeeping."""
    out = {}
    for table in ("inodes", "dirents", "parents", "xattrs", "blocks", "orphans", "multilinks"):
        for key, value in txn.scan(table, schema.u64(vid)):
            value = bytes(value)
            if table == "inodes":
                node = Inode.unpack(value)
                node.tree_id, node.flags = schema.NO_TREE, 0
                value = node.pack()
            out[table, bytes(key)] = value
    return out


def _cached_rows(runner, keys) -> dict:
    out = {}
    with runner.cache.reader() as txn:
        for table, key in keys:
            value = txn.get(table, key)
            if value is not None:
                value = bytes(value)
                if table == "inodes":
                    node = Inode.unpack(value)
                    node.tree_id, node.flags = schema.NO_TREE, 0
                    value = node.pack()
                out[table, key] = value
    return out


@pytest.mark.parametrize("by_worker", [False, True], ids=["cli", "worker"])
@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_change_after_a_snapshot_runs_again_and_keeps_it_whole(store, change, by_worker):
    with store.write() as txn:
        inodes, ino = build(txn)
    runner = _open_runner(store)
    try:
        # The worker knows the rows before the snapshot records tree ids in them.
        for name in ("a", "b", "e", "x", "h", "y"):
            await runner.read(inodes.get, ino[name])
        for parent, name in ((1, b"a"), (ino["a"], b"x"), (ino["a"], b"h"), (ino["a"], b"h2"),
                             (ino["a"], b"b"), (ino["a"], b"e"), (ino["b"], b"y")):
            await runner.read(inodes.lookup, parent, name)
        root = bytes.fromhex((await _snapshot(store, "before", runner if by_worker else None)).root)
        await runner.change(lambda txn: CHANGES[change](txn, inodes, ino))
        await runner.sync()
        assert runner.broken is None
        # Answered from rows older than the snapshot: run again, or waited for
        # (rmdir scans the folder, which only the store thread does).
        assert runner.counts["again"] + runner.counts["waited"] == 1
        await _snapshot(store, "after", runner if by_worker else None)
    finally:
        runner.stop()
    with store.read() as txn:
        report = check.verify(txn)
        assert report["ok"], report["problems"]
        names = sorted(path for path, _, _ in trees.walk(txn, root))
    assert names == [b"", b"a", b"a/b", b"a/b/y", b"a/e", b"a/h", b"a/h2", b"a/x"]


def _random_change(rnd, inodes, names: dict):
    """A store function doing one random metadata change (it may fail). Like
    every store function it must do the same when run again."""
    dirs = [1] + [i for i, (is_dir, _) in names.items() if is_dir]
    parent = rnd.choice(dirs)
    name = b"n%d" % rnd.randrange(12)
    some = rnd.choice(list(names) or [1])
    other, new_name = rnd.choice(dirs), b"n%d" % rnd.randrange(12)
    mode, value = rnd.randrange(0o1000), b"v%d" % rnd.randrange(9)
    kind = rnd.choice(["file", "dir", "rename", "unlink", "rmdir", "chmod", "xattr", "link"])
    if kind == "file":
        return lambda txn: inodes.create(txn, parent, name, FILE, 0, 0)
    if kind == "dir":
        return lambda txn: inodes.create(txn, parent, name, DIR, 0, 0)
    if kind == "rename":
        return lambda txn: inodes.rename(txn, parent, name, other, new_name)
    if kind == "unlink":
        return lambda txn: inodes.unlink(txn, parent, name)
    if kind == "rmdir":
        return lambda txn: inodes.rmdir(txn, parent, name)
    if kind == "chmod":
        return lambda txn: inodes.setattr(txn, some, mode=mode)
    if kind == "xattr":
        return lambda txn: inodes.setxattr(txn, some, b"user.k", value)
    return lambda txn: inodes.link(txn, some, parent, name)


@pytest.mark.parametrize("by_worker", [False, True], ids=["cli", "worker"])
@pytest.mark.parametrize("seed", range(4))
async def test_random_changes_ahead_equal_the_store(store, seed, by_worker):
    rnd = random.Random(seed)
    with store.write() as txn:
        vid = volumes.create(txn, "vol").vid
    inodes = Inodes(vid, store.block_size)
    runner = _open_runner(store)
    names: dict[int, tuple[bool, bytes]] = {}
    try:
        for step in range(400):
            try:
                result = await runner.change(_random_change(rnd, inodes, names))
            except FsError:
                continue
            if isinstance(result, tuple) and isinstance(result[1], Inode):
                names[result[0]] = (stat.S_ISDIR(result[1].mode), b"")
            if step % 50 == 25:
                await _snapshot(store, f"s{step}", runner if by_worker else None)
            if step % 7 == 0:  # data too, on the store thread, between changes
                file = next((i for i, (d, _) in names.items() if not d), None)
                if file is not None:
                    await runner.run(lambda txn: inodes.write_blocks(
                        txn, file, [(0, b"d%d" % step)], 3), foreseen=True)
        await runner.sync()
        assert runner.broken is None
        assert runner.counts["ahead"] > 100 and runner.counts["again"] > 0
        with store.read() as txn:
            stored = _rows(txn, vid)
        assert _cached_rows(runner, stored) == stored
        prefix = schema.u64(vid)
        kept = {(t, k) for (t, k), (v, _) in runner.cache.rows.items()
                if v is not None and t != "meta" and k.startswith(prefix)}
        assert kept <= set(stored)  # nothing the store deleted lives on here
    finally:
        runner.stop()
    with store.read() as txn:
        report = check.verify(txn)
    assert report["ok"], report["problems"]


async def test_small_writes_ahead_are_readable_at_once_and_counted_right(store):
    """Blocks written ahead: the store thread takes the chunk references later;
    reading them meanwhile waits behind it; equal blocks share one chunk."""
    from fusevol.store import chunks

    with store.write() as txn:
        vid = volumes.create(txn, "vol").vid
    inodes = Inodes(vid, store.block_size)
    runner = _open_runner(store)
    try:
        files = []
        for i in range(20):
            ino, _ = await runner.change(inodes.create, 1, b"f%d" % i, FILE, 0, 0)
            data = b"same" * 1000 if i % 2 else b"own %d" % i * 500
            await runner.change(inodes.write_blocks, ino, [(0, data)], len(data), foreseen=True)
            files.append((ino, data))
        assert runner.counts["ahead"] == 40 and runner.counts["waited"] == 0
        for ino, data in files:
            ids = await runner.read(inodes.block_ids, ino, [0])
            got = await runner.run(lambda txn: chunks.read(txn, ids[0]), foreseen=True)
            assert got == data
        for i in (1, 2, 3):  # delete some, their data given back in the background
            ino, gone = await runner.change(inodes.unlink, 1, b"f%d" % i)
            assert gone
            runner.submit(inodes.purge, ino)
        await runner.sync()
        assert runner.broken is None
    finally:
        runner.stop()
    with store.read() as txn:
        report = check.verify(txn)
        assert report["ok"], report["problems"]
        assert txn.vstats(vid).logical_bytes == sum(
            len(d) for i, (_, d) in enumerate(files) if i not in (1, 2, 3))


async def test_changes_ahead_around_the_workers_snapshot_in_one_batch_keep_it_whole(store):
    """The worker's snapshot records none of the rows it writes (tree ids): a
    change answered ahead from the rows before it, applied in the same batch,
    is checked against what the batch holds, and runs again."""
    from unit.gate import Gate

    with store.write() as txn:
        inodes, ino = build(txn)
    runner = _open_runner(store)
    gate = Gate()
    try:
        await runner.read(inodes.get, ino["x"])
        await gate.hold(runner)  # all that follows is queued at once, one batch
        await runner.change(lambda txn: inodes.setattr(txn, ino["x"], mode=FILE & ~0o044))
        async with trio.open_nursery() as nursery:
            before = runner.queued
            nursery.start_soon(_snapshot, store, "s", runner)
            while runner.queued == before:  # the snapshot queued (trio runs tasks in any order)
                await trio.sleep(0)
            await runner.change(lambda txn: inodes.setattr(txn, ino["x"], mode=FILE))
            gate.open()
        await runner.sync()
        assert runner.broken is None
        assert runner.counts["again"] == 1
    finally:
        runner.stop()
    with store.read() as txn:
        report = check.verify(txn)
    assert report["ok"], report["problems"]
