"""The intent log's files laid out ahead of its records (fs/intent.py), with
VolumeOperations called directly (no kernel) on a temporary store."""

import os
import threading
from types import SimpleNamespace

import trio

from fusevol.fs import intent as intent_module
from fusevol.fs.intent import IntentLog
from fusevol.fs.operations import VolumeOperations
from fusevol.store import intentlog
from fusevol.store.schema import ROOT_INO

CTX = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)
AT = 100 << 10


async def test_a_record_that_waited_for_zeros_being_laid_out_reads_its_bytes_again(
        store, inodes, runner, space, monkeypatch):
    """An fsync whose record would reach into zeros being laid out waits for
    them; a later fsync of newer bytes of its range may log them meanwhile, so
    the first one's bytes, read before, must not go to the log after them (a
    replay would bring the older bytes back)."""
    monkeypatch.setattr(intentlog, "PREALLOCATE", 64 << 10)
    monkeypatch.setattr(intent_module, "LAY_OUT_AHEAD", 1 << 20)
    gate = threading.Event()
    lay_out = intent_module._lay_out

    def held_lay_out(fd, start, size):
        if start:  # not the first layout
            gate.wait(30)
        lay_out(fd, start, size)
    monkeypatch.setattr(intent_module, "_lay_out", held_lay_out)
    log = IntentLog.open(store.path, inodes, runner)
    ops = VolumeOperations(runner, inodes, space, intent=log)
    try:
        info, _ = await ops.create(ROOT_INO, b"db", 0o644, os.O_RDWR, CTX)
        fh = info.fh
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.run_checkpoints, ops.files)
            await ops.write(fh, 0, b"a" * 8192)
            await ops.fsync(fh, True)  # a checkpoint: the file's creation is durable
            await ops.write(fh, 0, b"b" * 8192)
            await ops.fsync(fh, True)  # the first record: laying out more starts (held)
            await trio.sleep(0.1)
            assert log.files[log.current].laying_out is not None
            await ops.write(fh, AT, b"o" * (60 << 10))
            first = trio.Event()

            async def first_fsync():
                await ops.fsync(fh, True)  # 60 KiB: past the 64 KiB laid out, waits
                first.set()
            nursery.start_soon(first_fsync)
            await trio.sleep(0.1)
            assert not first.is_set()
            await ops.write(fh, AT, b"N")
            await ops.fsync(fh, True)  # a small record: fits, logged before the first
            gate.set()
            await first.wait()
            nursery.cancel_scope.cancel()
        await ops.release(fh)
        with open(intentlog.file_paths(store.path, inodes.vid)[log.current], "rb") as f:
            records = intentlog.decode_all(f.read())
    finally:
        gate.set()
        log.close()
    replayed = {}
    for record in records:
        for offset, data in record.ranges:
            for i, byte in enumerate(data):
                replayed[offset + i] = byte
    assert bytes([replayed[AT]]) == b"N", "a replay brings back bytes an fsync replaced"
    assert bytes([replayed[AT + 1]]) == b"o"
