"""TxnRunner under trio with a real store: order, batching, durable and group
commits, changes answered ahead and replayed, and the error mode."""

import errno
import os
import threading

import pytest
import trio
import trio.testing

from fusevol.errors import FsError, FusevolError
from fusevol.fs import heap
from fusevol.fs import runner as runner_module
from fusevol.fs.runner import BATCH_BYTES_MAX, TxnRunner
from fusevol.store import namespace
from fusevol.store.schema import ROOT_INO

from .conftest import BS, FILE
from .gate import Gate


class Commits:
    """Counts the runner's commits (durable or not) and can make the next one fail."""

    def __init__(self, store, monkeypatch):
        self.log: list[bool] = []
        self.fail_next: Exception | None = None
        real = store.commit

        def commit(txn, durable=True):
            if self.fail_next is not None:
                err, self.fail_next = self.fail_next, None
                txn.txn.abort()
                raise err
            real(txn, durable=durable)
            self.log.append(durable)

        monkeypatch.setattr(store, "commit", commit)

    @property
    def durable(self) -> int:
        return sum(self.log)


@pytest.fixture
def commits(store, monkeypatch):
    return Commits(store, monkeypatch)


async def _runner(store, **kw) -> TxnRunner:
    runner = TxnRunner(store, **kw)
    runner.start()
    return runner


def _committed(store, inodes, name: bytes) -> bool:
    """Whether a name exists in what is committed (another reader's view)."""
    with store.read() as txn:
        try:
            inodes.lookup(txn, ROOT_INO, name)
            return True
        except FsError:
            return False


def _create(name: bytes, inodes):
    return lambda txn: inodes.create(txn, ROOT_INO, name, FILE, 0, 0)[0]


async def test_operations_run_in_the_order_they_were_queued(store, inodes):
    runner = await _runner(store)
    try:
        seen = []
        gate = Gate()
        await gate.hold(runner)
        for i in range(20):
            runner.submit(lambda txn, i=i: seen.append(i))
        waited = runner.run(lambda txn: seen.append("run") or len(seen))
        gate.open()
        assert await waited == 21
        assert seen == list(range(20)) + ["run"]
        assert runner.applied == runner._seq
    finally:
        runner.stop()


async def test_results_and_errors_come_back(store, inodes):
    runner = await _runner(store)
    try:
        ino = await runner.run(_create(b"f", inodes))
        assert await runner.read(inodes.lookup, ROOT_INO, b"f") == ino
        with pytest.raises(FsError) as info:
            await runner.run(_create(b"f", inodes))
        assert info.value.errno == errno.EEXIST
        # An operation that failed left nothing behind: its nested transaction went.
        with pytest.raises(FsError):
            await runner.run(lambda txn: (inodes.create(txn, ROOT_INO, b"half", FILE, 0, 0),
                                          inodes.lookup(txn, ROOT_INO, b"nope")))
        with pytest.raises(FsError):
            await runner.read(inodes.lookup, ROOT_INO, b"half")
        # A bug in an operation is EIO, and the runner keeps serving.
        with pytest.raises(FsError) as info:
            await runner.run(lambda txn: 1 / 0)
        assert info.value.errno == errno.EIO
        assert await runner.run(lambda txn: "still here") == "still here"
        assert runner.broken is None
    finally:
        runner.stop()


async def test_operations_are_batched_into_few_commits(store, inodes, commits):
    runner = await _runner(store, linger=0.2, max_age=5.0)
    try:
        for i in range(30):
            await runner.run(_create(b"f%d" % i, inodes))
        assert commits.log == []  # answered before any commit
        assert not _committed(store, inodes, b"f0")
        await trio.sleep(0.5)  # past `linger` without work: committed
        assert commits.log == [False]
        assert _committed(store, inodes, b"f29")
    finally:
        runner.stop()


async def test_a_batch_is_committed_once_max_age_passed(store, inodes, commits):
    runner = await _runner(store, linger=10.0, max_age=0.05)
    try:
        await runner.run(_create(b"a", inodes))
        await trio.sleep(0.3)  # linger is long; the batch's age ends it
        assert commits.log == [False] and _committed(store, inodes, b"a")
        # Work that never pauses is committed at least every max_age too.
        i, until = 0, trio.current_time() + 0.3
        while trio.current_time() < until:
            i += 1
            await runner.run(_create(b"b%d" % i, inodes))
        assert len(commits.log) >= 3
    finally:
        runner.stop()


async def test_a_batch_is_committed_once_it_holds_enough_chunk_bytes(store, inodes, commits):
    # LMDB holds a batch's values in memory until its commit: a stream of
    # flushes must not make one batch of it, however close together they come.
    runner = await _runner(store, linger=10.0, max_age=10.0)
    try:
        blocks = 3 * BATCH_BYTES_MAX // BS
        ino = await runner.run(_create(b"big", inodes))
        for index in range(blocks):
            data = os.urandom(BS)
            await runner.run(inodes.write_blocks, ino, [(index, data)], (index + 1) * BS)
        assert len(commits.log) >= 2
    finally:
        runner.stop()


async def test_the_operation_that_ends_a_batch_is_answered_before_its_commit(
        store, inodes, monkeypatch):
    # No fsync waits for it: a sync of the batch would only hold up its caller
    # (a flush, and the writes behind it).
    release = threading.Event()
    real = store.commit

    def slow_commit(txn, durable=True):
        release.wait(10)
        real(txn, durable=durable)

    monkeypatch.setattr(store, "commit", slow_commit)
    runner = await _runner(store, linger=10.0, max_age=0.0)  # each operation ends its batch
    try:
        with trio.fail_after(5):
            await runner.run(_create(b"a", inodes))
        assert not _committed(store, inodes, b"a")
    finally:
        release.set()
        runner.stop()
    assert _committed(store, inodes, b"a")


async def test_an_idle_store_thread_gives_the_heap_back_after_a_large_write(
        store, inodes, monkeypatch):
    trims = []
    real = heap.give_back
    monkeypatch.setattr(heap, "give_back", lambda: trims.append(1) or real())
    monkeypatch.setattr(runner_module, "GIVE_BACK_AFTER", 0.2)
    runner = await _runner(store, linger=0.01, max_age=10.0)
    try:
        ino = await runner.run(_create(b"big", inodes))
        blocks = 2 * runner_module.GIVE_BACK_BYTES // BS
        for index in range(blocks):  # a stream: no trim while it goes on
            await runner.run(inodes.write_blocks, ino, [(index, os.urandom(BS))], (index + 1) * BS)
            assert not trims
        await trio.sleep(0.6)
        assert len(trims) == 1  # once idle, once
        await runner.run(_create(b"small", inodes))  # too little to trim again
        await trio.sleep(0.6)
        assert len(trims) == 1
    finally:
        runner.stop()


async def test_a_durable_operation_returns_committed(store, inodes, commits):
    runner = await _runner(store, linger=10.0, max_age=10.0)
    try:
        await runner.run(_create(b"a", inodes))
        await runner.run(_create(b"b", inodes), durable=True)
        assert commits.log == [True]
        assert _committed(store, inodes, b"a") and _committed(store, inodes, b"b")
        await runner.run(_create(b"c", inodes))
        await runner.sync()
        assert commits.log == [True, True] and _committed(store, inodes, b"c")
    finally:
        runner.stop()


async def test_a_sync_with_nothing_pending_opens_no_batch(store, inodes, commits, monkeypatch):
    syncs = []
    real_sync = store.sync
    monkeypatch.setattr(store, "sync", lambda: syncs.append(1) or real_sync())
    runner = await _runner(store, linger=0.0, max_age=10.0)
    try:
        await runner.sync()  # at start: a worker killed before may have left commits unsynced
        assert commits.log == [] and syncs == [1]
        await runner.run(_create(b"a", inodes), durable=True)
        await runner.sync()  # the last commit is durable: nothing to do
        assert commits.log == [True] and syncs == [1]
        await runner.run(_create(b"b", inodes))
        while commits.log == [True]:  # committed after `linger`, not durably
            await trio.sleep(0.01)
        await runner.sync()  # that commit's meta page synced, no write transaction
        assert commits.log == [True, False] and syncs == [1, 1]
        assert _committed(store, inodes, b"b")
    finally:
        runner.stop()


async def test_durable_operations_queued_together_share_one_commit(store, inodes, commits):
    runner = await _runner(store, linger=10.0, max_age=10.0)
    try:
        gate = Gate()
        await gate.hold(runner)
        answered = []

        async def fsync(i):
            await runner.run(_create(b"f%d" % i, inodes), durable=True)
            answered.append((i, _committed(store, inodes, b"f%d" % i)))

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(fsync, i)
            await trio.testing.wait_all_tasks_blocked()
            assert runner._seq == 9  # the gate and eight durable operations, all queued
            gate.open()
        assert sorted(answered) == [(i, True) for i in range(8)]
        assert commits.log == [True]
    finally:
        runner.stop()


async def test_stop_commits_what_is_pending(store, inodes):
    runner = await _runner(store, linger=10.0, max_age=10.0)
    await runner.run(_create(b"a", inodes))
    runner.stop()
    assert _committed(store, inodes, b"a")


async def test_a_change_is_answered_ahead_and_applied_later(store, inodes, commits):
    runner = await _runner(store, linger=10.0, max_age=10.0)
    try:
        gate = Gate()
        await gate.hold(runner)  # the store thread is busy: nothing can run there
        ino, node = await runner.change(inodes.create, ROOT_INO, b"f", FILE, 0, 0)
        assert runner.counts["ahead"] == 1 and runner.applied < runner._seq
        assert await runner.read(inodes.lookup, ROOT_INO, b"f") == ino  # from the worker's rows
        assert (await runner.read(inodes.get, ino)) == node
        gate.open()
        await runner.sync()
        assert runner.counts["again"] == 0 and runner.broken is None
        with store.read() as txn:
            assert inodes.lookup(txn, ROOT_INO, b"f") == ino
            assert inodes.get(txn, ino) == node  # the same times: worked out once
    finally:
        runner.stop()


async def _file_behind_gate(store, inodes) -> tuple[TxnRunner, Gate, int]:
    """A stored file "f" and a runner whose store thread a gate holds."""
    with store.write() as txn:
        ino = _create(b"f", inodes)(txn)
    runner = await _runner(store)
    try:
        gate = Gate()
        await gate.hold(runner)
    except BaseException:
        runner.stop()
        raise
    return runner, gate, ino


async def _unlink_answered_ahead(store, inodes) -> tuple[TxnRunner, Gate, int]:
    """_file_behind_gate, then the file unlinked: answered ahead, not yet applied."""
    runner, gate, ino = await _file_behind_gate(store, inodes)
    try:
        await runner.change(inodes.unlink, ROOT_INO, b"f")
    except BaseException:
        runner.stop()
        raise
    return runner, gate, ino


def _write_reads(monkeypatch) -> list:
    """(table, key) of every row the store thread reads in a write transaction, from now on."""
    from fusevol.store import env
    reads = []
    real_get = env.Txn.get

    def get(txn, table, key):
        if txn.write:
            reads.append((table, bytes(key)))
        return real_get(txn, table, key)

    monkeypatch.setattr(env.Txn, "get", get)
    return reads

async def test_the_row_of_an_inode_a_change_numbered_is_not_read_again(
        store, inodes, monkeypatch):
    """The store thread checks the rows a change answered ahead read, but not
    the row of the inode the change numbered itself: numbers are never handed
    out twice, so that row cannot exist (an LMDB read, and a handoff of the
    GIL, less per new file). Rows of other inodes are still read again."""
    runner = await _runner(store)
    runner.cache.know_fresh(inodes.row_owner, inodes.next_ino, inodes.counter_row)
    try:
        gate = Gate()
        await gate.hold(runner)
        ino, node = await runner.change(inodes.create, ROOT_INO, b"f", FILE, 0, 0)
        root_row, new_row = inodes.inode_row(ROOT_INO)[1], inodes.inode_row(ino)[1]
        reads = _write_reads(monkeypatch)
        gate.open()
        await runner.sync()
        assert runner.counts["again"] == 0 and runner.broken is None
        assert ("inodes", root_row) in reads  # the folder's row, read by the first run
        assert ("inodes", new_row) not in reads
        with store.read() as txn:
            assert inodes.get(txn, ino) == node
    finally:
        runner.stop()


async def test_the_mark_of_an_unlinked_file_is_not_read_again(store, inodes, monkeypatch):
    """An unlink answered ahead read the file's orphan mark (absent) before
    writing it; only changes of names make one, so the store thread does not
    read it again. The file's own row, which a flush could have rewritten,
    still is."""
    runner, gate, ino = await _unlink_answered_ahead(store, inodes)
    try:
        file_row = inodes.inode_row(ino)[1]
        reads = _write_reads(monkeypatch)
        gate.open()
        await runner.sync()
        assert runner.counts["again"] == 0 and runner.broken is None
        assert ("inodes", file_row) in reads
        assert not any(table == "orphans" for table, _ in reads)
        with store.read() as txn:
            assert namespace.is_orphan(txn, inodes.vid, ino)
    finally:
        runner.stop()


async def test_an_unlink_deletes_no_row_it_found_absent(store, inodes, monkeypatch):
    """An unlink answered ahead of a file with one name read its mark of a
    file with several names as absent: the store thread deletes nothing
    there (an LMDB call, and a handoff of the GIL, less per unlink)."""
    from fusevol.store import env
    runner, gate, ino = await _unlink_answered_ahead(store, inodes)
    try:
        deletes = []
        real = env.Txn.delete

        def delete(txn, table, key):
            deletes.append(table)
            return real(txn, table, key)
        monkeypatch.setattr(env.Txn, "delete", delete)
        gate.open()
        await runner.sync()
        assert runner.counts["again"] == 0 and runner.broken is None
        assert "dirents" in deletes and "multilinks" not in deletes
        with store.read() as txn:
            assert namespace.is_orphan(txn, inodes.vid, ino)
            assert inodes.find(txn, ROOT_INO, b"f") is None
    finally:
        runner.stop()


async def test_a_change_is_checked_against_the_rows_its_batch_wrote(store, inodes, monkeypatch):
    """The pending rows of changes answered ahead are written before any other
    operation runs (a deleted file's let-go): the next change's check then
    takes the rows it read from what the batch holds, as written, without
    reading them back from LMDB (a handoff of the GIL each)."""
    with store.write() as txn:
        _create(b"f", inodes)(txn)
        _create(b"g", inodes)(txn)
    runner = await _runner(store)
    try:
        gate = Gate()
        await gate.hold(runner)
        await runner.change(inodes.unlink, ROOT_INO, b"f")
        runner.submit(lambda txn: None)  # an operation of its own: the rows go first
        await runner.change(inodes.unlink, ROOT_INO, b"g")
        reads = _write_reads(monkeypatch)
        gate.open()
        await runner.sync()
        assert runner.counts["again"] == 0 and runner.broken is None
        root_row = inodes.inode_row(ROOT_INO)[1]
        assert reads.count(("inodes", root_row)) == 1  # by the first unlink's check only
        with store.read() as txn:
            assert inodes.find(txn, ROOT_INO, b"f") is None
            assert inodes.find(txn, ROOT_INO, b"g") is None
    finally:
        runner.stop()

async def test_a_change_waits_while_a_name_change_is_queued(store, inodes):
    runner = await _runner(store)
    try:
        gate = Gate()
        await gate.hold(runner)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run, _create(b"a", inodes))  # not foreseen
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(runner.change, inodes.create, ROOT_INO, b"b", FILE, 0, 0)
            await trio.testing.wait_all_tasks_blocked()
            assert runner.counts["waited"] == 1 and runner.counts["ahead"] == 0
            gate.open()
        assert await runner.read(inodes.lookup, ROOT_INO, b"b")
    finally:
        runner.stop()


async def test_a_change_whose_rows_changed_meanwhile_runs_again(store, inodes):
    runner, gate, ino = await _file_behind_gate(store, inodes)
    try:
        # Queued before the change, run after the change was answered: it
        # rewrites the row the change reads (as a flush rewrites an inode).
        runner.submit(lambda txn: inodes.setattr(txn, ino, uid=7))
        node = await runner.change(lambda txn: inodes.setattr(txn, ino, gid=8))
        assert runner.counts["ahead"] == 1 and node.uid == 0
        gate.open()
        await runner.sync()
        assert runner.counts["again"] == 1 and runner.broken is None
        node = await runner.read(inodes.get, ino)  # the worker's rows follow the second run
        assert (node.uid, node.gid) == (7, 8)
        with store.read() as txn:
            assert (inodes.get(txn, ino).uid, inodes.get(txn, ino).gid) == (7, 8)
    finally:
        runner.stop()


async def test_a_failed_replay_puts_the_runner_in_error_mode(store, inodes, caplog):
    runner = await _runner(store)
    try:
        gate = Gate()
        await gate.hold(runner)
        # A queued operation takes the name first; the runner believed it
        # could not (submit is for work that changes no names).
        runner.submit(_create(b"x", inodes))
        await runner.change(inodes.create, ROOT_INO, b"x", FILE, 0, 0)  # answered ahead
        gate.open()
        with pytest.raises(FsError) as info:
            await runner.sync()
        assert info.value.errno == errno.EIO
        assert isinstance(runner.broken, FsError) and runner.broken.errno == errno.EEXIST
        assert "failed in the store" in caplog.text
        for call in (runner.change(inodes.create, ROOT_INO, b"y", FILE, 0, 0),
                     runner.run(_create(b"z", inodes))):
            with pytest.raises(FsError, match="error mode") as info:
                await call
            assert info.value.errno == errno.EIO
        # Reads still come from what is committed and what the worker holds.
        assert await runner.read(inodes.lookup, ROOT_INO, b"x")
    finally:
        runner.stop()


async def test_a_failed_commit_fails_what_waits_and_everything_after(store, inodes, commits):
    runner = await _runner(store, linger=10.0, max_age=10.0)
    try:
        await runner.run(_create(b"a", inodes))
        commits.fail_next = FusevolError("store commit failed: Input/output error")
        with pytest.raises(FusevolError, match="Input/output error"):
            await runner.run(_create(b"b", inodes), durable=True)
        assert runner.broken is not None
        with pytest.raises(FsError, match="error mode"):
            await runner.run(_create(b"c", inodes))
        with pytest.raises(FsError, match="error mode"):
            await runner.change(inodes.create, ROOT_INO, b"d", FILE, 0, 0)
        assert not _committed(store, inodes, b"a")  # the batch went as a whole
    finally:
        runner.stop()


async def test_a_failed_store_thread_answers_every_caller(store, inodes, monkeypatch, caplog):
    runner = await _runner(store, linger=10.0, max_age=10.0)
    try:
        await runner.run(_create(b"a", inodes))

        def broken_commit(durable):
            raise AttributeError("a bug in the commit")

        monkeypatch.setattr(runner, "_commit_batch", broken_commit)
        with trio.fail_after(10):  # not a caller left waiting forever
            with pytest.raises(FsError) as failed:
                await runner.run(_create(b"b", inodes), durable=True)
            assert failed.value.errno == errno.EIO
            with pytest.raises(FsError, match="error mode"):
                await runner.run(_create(b"c", inodes))
            with pytest.raises(FsError, match="error mode"):
                await runner.sync()
        assert "store thread failed" in caplog.text
    finally:
        runner.stop()
    assert not _committed(store, inodes, b"a")  # the batch it held was dropped, not half stored


async def test_run_sync_from_another_thread(store, inodes):
    runner = await _runner(store)
    try:
        ino = await trio.to_thread.run_sync(runner.run_sync, _create(b"t", inodes))
        assert await runner.read(inodes.lookup, ROOT_INO, b"t") == ino
    finally:
        runner.stop()
