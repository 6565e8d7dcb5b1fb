"""The worker's RowCache: rows of inodes the worker made are answered without
the store, until an eviction drops rows of them; rows handed over later by
the store thread are applied before the next read."""

import errno
import time

import pytest

from fusevol.errors import FsError
from fusevol.fs import cache as cache_module
from fusevol.store.schema import ROOT_INO

from .conftest import FILE


class CountingReads:
    """Counts the reads the cache makes of what is committed."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = cache_module.CachedTxn.committed

        def committed(txn, table, key):
            self.n += 1
            return real(txn, table, key)

        monkeypatch.setattr(cache_module.CachedTxn, "committed", committed)


async def test_rows_of_a_new_inode_are_answered_without_the_store(runner, inodes, monkeypatch):
    runner.cache.know_fresh(inodes.row_owner, inodes.next_ino)
    ino, _ = await runner.change(inodes.create, ROOT_INO, b"new", FILE, 0, 0)
    reads = CountingReads(monkeypatch)
    with pytest.raises(FsError) as e:
        await runner.read(inodes.getxattr, ino, b"user.none")
    assert e.value.errno == errno.ENODATA
    assert await runner.read(inodes.block_ids, ino, [0, 1]) == {0: None, 1: None}
    assert reads.n == 0
    # A folder that existed before is read from the store, as before.
    with pytest.raises(FsError):
        await runner.read(inodes.getxattr, ROOT_INO, b"user.none")
    assert reads.n == 1


async def test_after_an_eviction_rows_of_inodes_made_before_come_from_the_store(
        runner, inodes, monkeypatch):
    runner.cache.know_fresh(inodes.row_owner, inodes.next_ino)
    ino, _ = await runner.change(inodes.create, ROOT_INO, b"kept", FILE, 0, 0)
    await runner.change(inodes.setxattr, ino, b"user.k", b"v")
    await runner.sync()  # committed: the eviction may drop its rows
    monkeypatch.setattr(cache_module, "MAX_ROWS", 0)
    runner.cache.apply([], runner.applied)  # evicts every committed row
    assert not any(table == "xattrs" for table, _ in runner.cache.rows)
    assert await runner.read(inodes.getxattr, ino, b"user.k") == b"v"
    # An inode made after the eviction is new again.
    monkeypatch.setattr(cache_module, "MAX_ROWS", 200_000)
    other, _ = await runner.change(inodes.create, ROOT_INO, b"later", FILE, 0, 0)
    reads = CountingReads(monkeypatch)
    with pytest.raises(FsError):
        await runner.read(inodes.getxattr, other, b"user.k")
    assert reads.n == 0


async def test_rows_of_background_operations_are_seen_by_the_next_read(runner, inodes):
    ino, _ = await runner.change(inodes.create, ROOT_INO, b"f", FILE, 0, 0)
    await runner.change(inodes.unlink, ROOT_INO, b"f")
    runner.submit(inodes.purge, ino)
    await runner.sync()  # the purge ran, its rows were handed over without a wakeup
    with pytest.raises(FsError) as e:
        await runner.read(inodes.get, ino)
    assert e.value.errno == errno.ENOENT


async def test_a_background_operation_answered_before_submit_returns(runner, inodes, monkeypatch):
    """The store thread may run a submitted operation and hand its rows over
    before submit has returned: the rows still carry the operation's number."""
    ino, _ = await runner.change(inodes.create, ROOT_INO, b"f", FILE, 0, 0)
    await runner.change(inodes.unlink, ROOT_INO, b"f")
    real_put = runner._put

    def put_and_let_it_run(item, wake=True):
        real_put(item, True)
        deadline = time.monotonic() + 5
        while runner._work and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)  # its reply runs meanwhile

    monkeypatch.setattr(runner, "_put", put_and_let_it_run)
    runner.submit(inodes.purge, ino)
    monkeypatch.setattr(runner, "_put", real_put)
    await runner.sync()
    assert runner.broken is None
    with pytest.raises(FsError) as e:
        await runner.read(inodes.get, ino)
    assert e.value.errno == errno.ENOENT
