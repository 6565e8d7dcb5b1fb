"""FileData under trio with a real store and runner: partial block writes,
reads of dirty, in-flight and stored blocks, truncates meeting a flush, and
which flushes are answered ahead."""

import errno
import os
import threading

import pytest
import trio
import trio.testing

from fusevol.errors import FsError, NoSpace
from fusevol.fs import filedata
from fusevol.fs.filedata import FileData
from fusevol.fs.runner import TxnRunner
from fusevol.fs.space import SpaceBudget
from fusevol.store import Txn
from fusevol.store.schema import ROOT_INO

from .conftest import BS, FILE
from .gate import Gate


@pytest.fixture
async def new_file(store, inodes, runner, space):
    """A function making an empty file and its FileData."""
    async def make(name: bytes = b"f") -> FileData:
        ino, _ = await runner.run(lambda txn: inodes.create(txn, ROOT_INO, name, FILE, 0, 0))
        return FileData(ino, 0, inodes, runner, space)
    return make


def _stored(store, inodes, ino: int) -> bytes:
    """The file as committed: its size and blocks read from the store."""
    with store.read() as txn:
        size = inodes.get(txn, ino).size
        out = b"".join((inodes.read_block(txn, ino, i) or b"").ljust(BS, b"\0")
                       for i in range(-(-size // BS)))
    return out[:size]


class Model:
    """The bytes a file should hold."""

    def __init__(self):
        self.data = bytearray()

    def write(self, offset: int, data: bytes) -> None:
        if len(self.data) < offset:
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset: offset + len(data)] = data

    def truncate(self, size: int) -> None:
        del self.data[size:]
        self.data.extend(bytes(size - len(self.data)))


async def test_partial_writes_read_back_before_and_after_a_flush(store, inodes, runner, new_file):
    fd, model = await new_file(), Model()
    for offset, length in ((100, 10), (BS - 5, 10), (3 * BS + 7, 2 * BS), (50, 3)):
        data = os.urandom(length)
        assert await fd.write(offset, data) == length
        model.write(offset, data)
    assert fd.size == len(model.data)
    assert await fd.read(0, fd.size + 100) == bytes(model.data)  # dirty blocks, holes as zeros
    assert await fd.read(BS - 10, 20) == bytes(model.data[BS - 10: BS + 10])
    assert await fd.read(fd.size, 10) == b""
    await fd.flush()
    assert not fd.dirty and not fd.inflight
    await runner.sync()
    assert _stored(store, inodes, fd.ino) == bytes(model.data)
    # Partial writes over stored blocks: the rest of each block is loaded first.
    for offset, data in ((BS + 1, b"xy"), (4 * BS + 100, b"z" * 20)):
        await fd.write(offset, data)
        model.write(offset, data)
    assert set(fd.dirty) == {1, 4}
    assert await fd.read(0, fd.size) == bytes(model.data)
    await fd.flush(durable=True)
    assert _stored(store, inodes, fd.ino) == bytes(model.data)
    # A new FileData (a later open) reads what is stored.
    again = FileData(fd.ino, fd.size, inodes, runner, fd.space)
    assert await again.read(0, fd.size) == bytes(model.data)


async def test_bytes_cut_by_a_truncate_come_back_as_zeros(store, inodes, runner, new_file):
    fd = await new_file()
    data = os.urandom(2 * BS)
    await fd.write(0, data)
    await fd.flush(durable=True)
    fd = FileData(fd.ino, fd.size, inodes, runner, fd.space)  # nothing buffered
    # The buffers are cut first; the stored blocks still hold the old bytes
    # until the store's own truncate runs.
    fd.truncate(100)
    await fd.write(200, b"xyz")
    assert await fd.read(0, BS) == data[:100] + bytes(100) + b"xyz"


async def test_a_whole_block_write_keeps_the_callers_bytes(new_file):
    fd = await new_file()
    data = os.urandom(2 * BS)
    await fd.write(0, data)
    assert all(isinstance(b, memoryview) for b in fd.dirty.values())
    await fd.write(10, b"abc")  # then a partial write into it: a copy, not the caller's bytes
    assert isinstance(fd.dirty[0], bytearray)
    assert await fd.read(0, 2 * BS) == data[:10] + b"abc" + data[13:]


async def test_reads_of_a_block_while_its_flush_is_in_flight(store, inodes, runner, new_file):
    fd = await new_file()
    data = os.urandom(BS + 500)
    await fd.write(0, data)
    gate = Gate()
    await gate.hold(runner)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fd.flush, True)  # durable: it waits for the store thread
        await trio.testing.wait_all_tasks_blocked()
        assert set(fd.inflight) == {0, 1} and not fd.dirty
        assert await fd.read(0, len(data)) == data  # from `inflight`
        await fd.write(BS + 10, b"newer")  # a write during the flush goes to `dirty`
        assert set(fd.dirty) == {1}
        gate.open()
    assert not fd.inflight and set(fd.dirty) == {1}
    expected = data[:BS + 10] + b"newer" + data[BS + 15:]
    assert await fd.read(0, len(data)) == expected
    assert _stored(store, inodes, fd.ino) == data  # the flush stored what it took
    await fd.flush(durable=True)
    assert _stored(store, inodes, fd.ino) == expected


async def test_a_truncate_during_a_flush_wins(store, inodes, runner, new_file):
    fd = await new_file()
    data = os.urandom(3 * BS)
    await fd.write(0, data)
    gate = Gate()
    await gate.hold(runner)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fd.flush, True)
        await trio.testing.wait_all_tasks_blocked()
        # As setattr(size) does: cut the buffers, then the store, in order.
        fd.truncate(BS + 10)
        nursery.start_soon(fd.flush, True, lambda txn: inodes.setattr(txn, fd.ino, size=BS + 10))
        await trio.testing.wait_all_tasks_blocked()
        assert await fd.read(0, 3 * BS) == data[:BS + 10]
        gate.open()
    assert await fd.read(0, 3 * BS) == data[:BS + 10]
    assert _stored(store, inodes, fd.ino) == data[:BS + 10]
    with store.read() as txn:
        assert inodes.block_ids(txn, fd.ino, [2])[2] is None
        assert inodes.get(txn, fd.ino).data_bytes == BS + 10


async def test_a_read_that_waited_over_a_truncate_starts_again(store, inodes):
    runner = TxnRunner(store, linger=30.0, max_age=30.0)  # nothing committed meanwhile
    runner.start()
    try:
        ino, _ = await runner.run(lambda txn: inodes.create(txn, ROOT_INO, b"f", FILE, 0, 0))
        space = SpaceBudget(store, None, 0)
        fd = FileData(ino, 0, inodes, runner, space)
        data = os.urandom(2 * BS)
        await fd.write(0, data)
        await fd.flush()
        fd = FileData(ino, fd.size, inodes, runner, space)  # nothing buffered: reads load
        gate = Gate()
        await gate.hold(runner)
        got = []
        async with trio.open_nursery() as nursery:
            # Blocks stored but not committed are read on the store thread:
            # the read waits there, behind the gate.
            nursery.start_soon(_append, got, fd.read(0, 2 * BS))
            await trio.testing.wait_all_tasks_blocked()
            assert not got
            fd.truncate(100)
            gate.open()
        assert got == [data[:100]]
    finally:
        runner.stop()


async def _append(out, coro):
    out.append(await coro)


async def test_small_flushes_are_answered_ahead_large_ones_wait(store, inodes, runner, new_file):
    small, large = await new_file(b"small"), await new_file(b"large")
    await small.write(0, b"s" * 1000)
    await small.flush()
    assert runner.counts["ahead"] == 1
    await large.write(0, os.urandom(filedata.PREPARE_AT))  # hashed in threads, stored in order
    await large.flush()
    assert runner.counts["ahead"] == 1 and runner.counts["waited"] == 0
    await small.write(1000, b"t")
    await small.flush(durable=True)  # fsync waits for the store thread
    assert runner.counts["ahead"] == 1
    assert _stored(store, inodes, small.ino) == b"s" * 1000 + b"t"
    assert len(_stored(store, inodes, large.ino)) == filedata.PREPARE_AT
    assert small.space.used == 1001 + filedata.PREPARE_AT


async def test_a_flush_that_fails_keeps_the_data_and_refuses_on_no_space(store, inodes, runner,
                                                                         new_file, monkeypatch):
    fd = await new_file()
    await fd.write(0, b"keep me")
    monkeypatch.setattr(store, "disk_free", lambda max_age=0.0: 0)
    monkeypatch.setattr(Txn, "free_pages_bytes", lambda self: 0)
    with pytest.raises(NoSpace):
        await fd.flush(durable=True)
    assert fd.dirty and fd.error == errno.ENOSPC
    with pytest.raises(FsError) as info:
        await fd.write(100, b"more")  # refused: the file would get a gap
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(FsError):
        fd.take_error()  # reported once by close or fsync
    fd.take_error()
    monkeypatch.undo()
    fd.truncate(7)  # what is kept is a prefix again
    assert fd.error is None
    await fd.flush(durable=True)
    assert _stored(store, inodes, fd.ino) == b"keep me"


@pytest.mark.parametrize("loader", ["_read_parts", "_read_chunks"])
async def test_a_load_that_meets_a_flush_letting_go_of_its_chunk_reads_the_new_one(
        store, inodes, runner, new_file, monkeypatch, loader):
    """A read loads blocks in a thread; meanwhile a write and a durable flush
    replace the last block, and the chunk it held is deleted and committed.
    The load finds that chunk gone: it reads the block map again and loads what
    it points to now (it failed with 'missing chunk', EIO, when the kernel's
    writeback met a flush this way). _read_parts serves a read of stored
    blocks only; _read_chunks the blocks missing beside a buffered one."""
    fd = await new_file()
    old = os.urandom(3 * BS)
    await fd.write(0, old)
    await fd.flush(durable=True)
    fd = FileData(fd.ino, fd.size, inodes, runner, fd.space)  # nothing buffered: reads load
    first = 0
    if loader == "_read_chunks":  # the first block buffered: the others load through _load
        await fd.write(0, old[:10])
    else:
        first = BS  # blocks 1 and 2, both stored
    reading, go_on = trio.Event(), threading.Event()
    real = getattr(filedata, loader)
    token = trio.lowlevel.current_trio_token()

    def held_read(*args):  # in the read thread: wait until the flush is done
        token.run_sync_soon(reading.set)
        assert go_on.wait(10)
        return real(*args)

    monkeypatch.setattr(filedata, loader, held_read)
    got = []
    new = os.urandom(BS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_append, got, fd.read(first, 2 * BS + 10 - first))
        await reading.wait()
        monkeypatch.setattr(filedata, loader, real)
        await fd.write(2 * BS, new)  # the whole last block
        await fd.flush(durable=True)  # its old chunk is let go of, committed
        go_on.set()
    assert got == [old[first:2 * BS] + new[:10]]
