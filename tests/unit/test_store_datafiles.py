"""Large chunks in data files (store/datafiles.py): written at commit, read
through a map, taken back with a nested transaction, punched once no reader
can see them, and damage named by verify."""

import contextlib
import os

import pytest

from fusevol.errors import NoSpace, StoreDamaged
from fusevol.store import Store, check, chunks, datafiles, schema

BLOCK = 128 * 1024


def _block(seed: int) -> bytes:
    return os.urandom(16) * (BLOCK // 16) if seed < 0 else seed.to_bytes(8, "big") + os.urandom(BLOCK - 8)


def _write(store, datas, writer=True):
    """Add one reference to each of datas (raw: random) in one commit; their
    ids. `writer`: the store's own, none (False), or this one."""
    txn = store.begin_write()
    txn.data = store.data_writer() if writer is True else (writer or None)
    try:
        ids = [chunks.add_ref(txn, d, "none") for d in datas]
    except BaseException:
        txn.txn.abort()
        raise
    store.commit(txn)
    return ids


@contextlib.contextmanager
def _reopened(store):
    """The store closed and opened again: nothing mapped or held from before."""
    Store._instances.pop(store.path, None)
    store.close()
    other = Store.open(store.path)
    try:
        yield other
    finally:
        Store._instances.pop(other.path, None)
        other.close()


def _files(store):
    return sorted(os.listdir(datafiles.folder(store.path)))


def _damage(store) -> list[str]:
    """What verify finds of chunks' data (these tests take references that
    no file holds: the counts it also reports are left out)."""
    with store.read() as txn:
        problems = check.verify(txn)["problems"]
    return [p["message"] for p in problems if "reference(s)" not in p["message"]]


def _blocks_on_disk(store):
    return sum(os.stat(os.path.join(datafiles.folder(store.path), n)).st_blocks * 512 for n in _files(store))


def test_a_writer_keeps_large_chunks_in_its_data_file_and_every_reader_finds_them(store):
    datas = [_block(i) for i in range(5)]
    ids = _write(store, datas)
    assert _files(store) == ["00000001"]
    with store.read() as txn:
        assert [chunks.read(txn, cid) for cid in ids] == datas
        assert all(chunks._get_row(txn, cid).ext is not None for cid in ids)
        assert sum(1 for _ in chunks.extents(txn)) == 5
    # The file holds them back to back, its end aligned for direct I/O.
    size = os.path.getsize(os.path.join(datafiles.folder(store.path), "00000001"))
    assert size % datafiles.ALIGN == 0 and 5 * (BLOCK + 1) <= size < 5 * (BLOCK + 1) + datafiles.ALIGN
    # Opened again (as by another process), the store reads them as committed.
    with _reopened(store) as other:
        with other.read() as txn:
            assert [chunks.read(txn, cid) for cid in ids] == datas
        assert _damage(other) == []


def test_without_a_writer_or_when_small_chunks_stay_in_lmdb(store):
    big = _write(store, [_block(1)], writer=False)[0]
    small = _write(store, [os.urandom(1000)])[0]
    with store.read() as txn:
        assert chunks._get_row(txn, big).ext is None and chunks._get_row(txn, small).ext is None
    assert not os.path.exists(datafiles.folder(store.path))


def test_a_nested_transaction_that_fails_takes_back_what_it_staged(store):
    keep, drop = _block(1), _block(2)
    txn = store.begin_write()
    txn.data = store.data_writer()
    kept = chunks.add_ref(txn, keep, "none")
    with pytest.raises(RuntimeError):
        with store.nested(txn) as child:
            chunks.add_ref(child, drop, "none")
            raise RuntimeError("the operation failed")
    third = chunks.add_ref(txn, _block(3), "none")
    store.commit(txn)
    with store.read() as t:
        assert chunks.read(t, kept) == keep
        assert not chunks.has(t, chunks.chunk_id(drop))
        # The third chunk took the place the failed one had staged.
        assert chunks._get_row(t, third).ext.offset == BLOCK + 1


def _small_buffer(monkeypatch, chunks_held: int) -> None:
    """Writers made from now on stage at most `chunks_held` blocks."""
    align = datafiles.ALIGN
    monkeypatch.setattr(datafiles, "STAGE_MAX", -(-chunks_held * (BLOCK + 1) // align) * align)


def test_a_transaction_larger_than_the_buffer_spills_it_and_keeps_every_chunk_in_the_file(
        store, monkeypatch):
    _small_buffer(monkeypatch, 3)
    datas = [_block(i) for i in range(10)]
    txn = store.begin_write(data_files=True)
    ids = [chunks.add_ref(txn, d, "none") for d in datas]
    # Read in the transaction: the spilled ones from the file, the rest from the buffer.
    assert [chunks.read(txn, cid) for cid in ids] == datas
    exts = [chunks._get_row(txn, cid).ext for cid in ids]
    assert store.data_writer().spilled > 0
    store.commit(txn)
    assert all(e is not None and e.file == 1 for e in exts)
    # Each spill starts where the one before ended, aligned: no chunk overlaps another.
    spans = sorted((e.offset, e.offset + e.length) for e in exts)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    with _reopened(store) as other:
        with other.read() as t:
            assert [chunks.read(t, cid) for cid in ids] == datas
            assert schema.read_u64(t.get("datafiles", b"\0\0\0\x01")) == \
                os.path.getsize(os.path.join(datafiles.folder(store.path), "00000001"))
        assert _damage(other) == []


def test_a_transaction_that_spilled_and_aborted_leaves_its_bytes_to_the_next_one(store, monkeypatch):
    _small_buffer(monkeypatch, 2)
    kept = _write(store, [_block(1)])[0]
    with pytest.raises(RuntimeError):
        with store.write(data_files=True) as txn:
            for i in range(6):
                chunks.add_ref(txn, _block(10 + i), "none")
            raise RuntimeError("the receive failed")
    with store.read() as t:
        end = schema.read_u64(t.get("datafiles", b"\0\0\0\x01"))
        assert end == chunks._get_row(t, kept).ext.offset + datafiles.ALIGN * -(-(BLOCK + 1) // datafiles.ALIGN)
    # The next transaction writes from the committed end, over the spilled bytes.
    again = _write(store, [_block(2)])[0]
    with store.read() as t:
        assert chunks._get_row(t, again).ext.offset == end
    assert _damage(store) == []


def test_a_nested_transaction_that_fails_after_a_spill_lets_go_of_what_it_spilled(store, monkeypatch):
    _small_buffer(monkeypatch, 2)
    txn = store.begin_write(data_files=True)
    kept = chunks.add_ref(txn, _block(1), "none")
    with pytest.raises(RuntimeError):
        with store.nested(txn) as child:
            for i in range(5):
                chunks.add_ref(child, _block(10 + i), "none")
            raise RuntimeError("the operation failed")
    after = chunks.add_ref(txn, _block(2), "none")
    spilled_to = store.data_writer().spilled
    store.commit(txn)
    with store.read() as t:
        assert datafiles.dead_bytes(t) == spilled_to - (BLOCK + 1)
        assert chunks._get_row(t, after).ext.offset == spilled_to
        assert [chunks.read(t, c) for c in (kept,)] and chunks.read(t, after)
    datafiles.reclaim_all(store)
    with store.read() as t:
        assert datafiles.dead_bytes(t) == 0
    assert _damage(store) == []


def _resident_kib(buf) -> int:
    """Rss of the mapping that holds buf (/proc/self/smaps)."""
    import ctypes
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError("no mapping holds the buffer")


def test_a_transaction_other_than_a_workers_gives_the_buffers_pages_back(store):
    """A daemon pulls volumes: its writer's buffer must not keep 48 MiB."""
    with store.write(data_files=True) as txn:
        for i in range(16):
            chunks.add_ref(txn, _block(i), "none")
        assert _resident_kib(store.data_writer().buf) >= 2 * 1024
    assert _resident_kib(store.data_writer().buf) == 0


def test_a_chunk_staged_is_read_back_in_its_own_transaction(store):
    data = _block(7)
    txn = store.begin_write()
    txn.data = store.data_writer()
    cid = chunks.add_ref(txn, data, "none")
    assert chunks.read(txn, cid) == data
    store.commit(txn)


def test_dead_ranges_are_punched_only_when_no_reader_sees_them(store):
    datas = [_block(i) for i in range(64)]  # 8 MiB
    ids = _write(store, datas)
    full = _blocks_on_disk(store)
    old = store.begin_read()  # a reader of the snapshot that holds them
    txn = store.begin_write()
    for cid in ids:
        chunks.decref(txn, cid)
    store.commit(txn)
    for _ in range(4):  # commits that would punch, were it not for the reader
        store.touch()
    assert _blocks_on_disk(store) == full
    assert [chunks.read(old, cid) for cid in ids] == datas
    old.abort()
    report = datafiles.reclaim_all(store)
    assert report["punched_bytes"] == 64 * (BLOCK + 1)
    assert _blocks_on_disk(store) <= datafiles.ALIGN * 2
    with store.read() as t:
        assert datafiles.dead_bytes(t) == 0


def test_the_last_commit_keeps_what_it_let_go_of_until_a_later_one_is_done(store):
    """A commit's meta page is durable only with the next commit's sync: a
    system crash may bring back the snapshot before it, which names the range."""
    cid = _write(store, [_block(1)])[0]
    txn = store.begin_write()
    chunks.decref(txn, cid)
    store.commit(txn)
    txn = store.begin_write()
    assert datafiles.reclaim(txn) == 0  # let go of by the commit just before
    txn.txn.abort()
    store.touch()
    txn = store.begin_write()
    assert datafiles.reclaim(txn) == BLOCK + 1
    store.commit(txn)


def test_verify_names_a_damaged_or_missing_data_file_chunk(store):
    ids = _write(store, [_block(1), _block(2)])
    path = os.path.join(datafiles.folder(store.path), "00000001")
    with open(path, "r+b") as f:
        f.seek(BLOCK + 1 + 100)  # inside the second chunk
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    assert _damage(store)
    with store.read() as txn:
        assert chunks.read(txn, ids[0])
        with pytest.raises(StoreDamaged, match="damaged"):
            chunks.read(txn, ids[1])
    os.truncate(path, BLOCK)  # the first chunk cut short, the second gone
    with _reopened(store) as other:  # (a map made before the cut would be SIGBUS: none)
        with other.read() as txn:
            for cid in ids:
                with pytest.raises(StoreDamaged, match="missing"):
                    chunks.read(txn, cid)
        assert _damage(other)


def test_a_write_the_disk_refuses_commits_nothing_and_the_next_writes_there(store, monkeypatch):
    ok = _write(store, [_block(1)])[0]
    real = os.pwrite

    def full(fd, data, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datafiles.os, "pwrite", full)
    lost = _block(2)
    with pytest.raises(NoSpace):
        _write(store, [lost])
    monkeypatch.setattr(datafiles.os, "pwrite", real)
    with store.read() as txn:
        assert not chunks.has(txn, chunks.chunk_id(lost))
    again = _write(store, [_block(3)])[0]
    with store.read() as txn:
        assert chunks._get_row(txn, again).ext.offset == chunks._get_row(txn, ok).ext.offset + \
            datafiles.ALIGN * -(-(BLOCK + 1) // datafiles.ALIGN)
    assert _damage(store) == []


def test_tidy_cuts_what_no_commit_named_and_leaves_a_live_writers_file(store):
    _write(store, [_block(1)])
    path = os.path.join(datafiles.folder(store.path), "00000001")
    end = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(os.urandom(8192))  # a commit that wrote its chunks and then did not happen
    stray = os.path.join(datafiles.folder(store.path), "00000009")
    with open(stray, "wb") as f:
        f.write(b"x" * 4096)
    # This process's writer holds its file: left alone.
    assert _tidy(store) == {"files_trimmed": 0, "files_deleted": 1}
    assert not os.path.exists(stray) and os.path.getsize(path) == end + 8192
    store.data_writer().close()
    assert _tidy(store) == {"files_trimmed": 1, "files_deleted": 0}
    assert os.path.getsize(path) == end
    assert _damage(store) == []


def _tidy(store) -> dict:
    return datafiles.tidy(store, chunks.data_files_in_use)


def test_tidy_deletes_a_file_once_no_chunk_is_in_it_and_nothing_waits_to_be_punched(store):
    ids = _write(store, [_block(1)])
    second = _block(2)
    holder = datafiles.Writer(store)  # file 1 is held: this one takes another
    other = _write(store, [second], writer=holder)[0]
    store.data_writer().close()  # file 1's writer is done with it
    assert _files(store) == ["00000001", "00000002"]
    txn = store.begin_write()
    chunks.decref(txn, ids[0])
    store.commit(txn)
    assert _tidy(store)["files_deleted"] == 0  # its range still waits to be punched
    datafiles.reclaim_all(store)
    assert _tidy(store)["files_deleted"] == 1
    assert _files(store) == ["00000002"]  # the writer's own file stays
    with store.read() as txn:
        assert [bytes(k) for k, _ in txn.scan("datafiles", b"")] == [(2).to_bytes(4, "big")]
        assert chunks.read(txn, other) == second
    holder.release()


def test_a_new_writer_appends_to_a_file_no_one_holds_from_its_committed_end(store, monkeypatch):
    first = _block(1)
    a = _write(store, [first])[0]
    path = os.path.join(datafiles.folder(store.path), "00000001")
    end = os.path.getsize(path)
    store.data_writer().close()  # as a worker's process ends
    with open(path, "ab") as f:
        f.write(os.urandom(2 * BLOCK))  # what a holder that died in its commit left
    writers = [datafiles.Writer(store) for _ in range(3)]
    second, third = _block(2), _block(3)
    b = _write(store, [second], writer=writers[0])[0]
    c = _write(store, [third], writer=writers[1])[0]  # file 1 held now: a new one
    assert _files(store) == ["00000001", "00000002"]
    assert os.path.getsize(path) == end + datafiles.ALIGN * -(-(BLOCK + 1) // datafiles.ALIGN)
    with store.read() as txn:
        assert chunks._get_row(txn, b).ext[:2] == (1, end)
        assert chunks._get_row(txn, c).ext[:2] == (2, 0)
        assert [chunks.read(txn, cid) for cid in (a, b, c)] == [first, second, third]
    assert _damage(store) == []
    # A file with no room left is not taken again.
    writers[0].close()
    writers[1].close()
    monkeypatch.setattr(datafiles, "FILE_MAX", end + 1)  # file 1 full, file 2 not
    d = _write(store, [_block(4)], writer=writers[2])[0]
    with store.read() as txn:
        assert chunks._get_row(txn, d).ext.file == 2
    for w in writers:
        w.release()


def test_tidy_leaves_a_file_its_writer_appended_to_after_tidy_looked(store):
    """The writer commits a chunk to its file between tidy's snapshot and
    tidy's lock of the file, then lets go of the file: tidy must see that the
    file changed, neither delete it (its snapshot found no chunk in it) nor
    cut it to the end it saw."""
    ids = _write(store, [_block(1)])
    txn = store.begin_write()
    chunks.decref(txn, ids[0])
    store.commit(txn)
    datafiles.reclaim_all(store)  # file 1: no chunk, nothing waiting
    later = _block(2)
    added = []

    def live_then_a_commit(txn):
        live = chunks.data_files_in_use(txn)
        added.extend(_write(store, [later]))  # the same writer, the same file
        store.data_writer().close()           # and its lock let go of
        return live

    assert datafiles.tidy(store, live_then_a_commit) == {"files_trimmed": 0, "files_deleted": 0}
    with store.read() as txn:
        assert chunks.read(txn, added[0]) == later
    assert _damage(store) == []
    # The next gc judges it on what is there now: the chunk keeps it.
    assert _tidy(store) == {"files_trimmed": 0, "files_deleted": 0}


def _drop(store, ids) -> None:
    txn = store.begin_write()
    for cid in ids:
        chunks.decref(txn, cid)
    store.commit(txn)
    datafiles.reclaim_all(store)


def test_chunks_that_die_at_different_times_leave_no_block_they_shared(store):
    ids = _write(store, [_block(i) for i in range(32)])
    _drop(store, ids[0::2])
    _drop(store, ids[1::2])  # each now a neighbour of two punched ones
    # What stays on the disk: the last block (the batch's padding) and the
    # filesystem's own (ext4: a block of extent index); 31 shared blocks more
    # were it not for the widening.
    assert _blocks_on_disk(store) <= 2 * datafiles.ALIGN


def test_a_punch_widens_only_over_zeros(store):
    """A filesystem may keep a block of zeros as a hole (ZFS with compression):
    a hole beside the shared block does not prove its other part dead, and the
    live neighbour's bytes there must stay."""
    # A: the first chunk, its stored form [0, BLOCK + 1); its block before the
    # one it shares with B all zeros, its last byte not.
    head = BLOCK  # the shared block [BLOCK, BLOCK + 4096)
    data = os.urandom(head - datafiles.ALIGN - 1) + bytes(datafiles.ALIGN) + b"\x01"
    a, b = _write(store, [data, _block(1)])
    with store.read() as txn:
        assert chunks._get_row(txn, a).ext[:3] == (1, 0, BLOCK + 1)
    path = os.path.join(datafiles.folder(store.path), "00000001")
    fd = os.open(path, os.O_RDWR)
    try:  # the zeros kept as a hole, as such a filesystem would (no byte changes)
        datafiles._fallocate(fd, head - datafiles.ALIGN, datafiles.ALIGN)
    finally:
        os.close(fd)
    _drop(store, [b])
    with store.read() as txn:
        assert chunks.read(txn, a) == data
    assert _damage(store) == []


def test_a_requests_chunks_side_by_side_are_read_at_once_into_a_buffer_kept_while_viewed(store):
    datas = [_block(i) for i in range(8)]
    ids = _write(store, datas)
    with store.read(buffers=True) as txn:
        views = chunks.views_if_stored(txn, ids)
        assert [bytes(v) for v in views] == datas
        # One read: every chunk a view of the same buffer.
        assert len({id(v.obj) for v in views}) == 1
        first = id(views[0].obj)  # (a reference to it would hold it as a view does)
        # A read while those views live goes to another buffer: they still hold their bytes.
        again = chunks.view_if_stored(txn, ids[3])
        assert id(again.obj) != first and bytes(again) == datas[3]
        assert [bytes(v) for v in views] == datas
        del views, again
        # Once no view is left, the next read takes the first buffer again.
        assert id(chunks.views_if_stored(txn, ids[5:7])[0].obj) == first


def test_a_request_over_a_file_cut_short_is_damage_and_the_chunks_before_the_cut_read(store):
    datas = [_block(i) for i in range(4)]
    ids = _write(store, datas)
    path = os.path.join(datafiles.folder(store.path), "00000001")
    os.truncate(path, 2 * (BLOCK + 1) + 100)  # inside the third chunk
    with _reopened(store) as other:
        with other.read(buffers=True) as txn:
            with pytest.raises(StoreDamaged, match="missing"):
                chunks.views_if_stored(txn, ids)
            assert [bytes(v) for v in chunks.views_if_stored(txn, ids[:2])] == datas[:2]
            rows = [chunks._get_row(txn, cid).ext for cid in ids]
            assert sorted(other.data_readers.views(rows), key=lambda e: e.offset) == rows[:2]


def test_chunks_a_transaction_staged_are_read_with_the_committed_ones(store):
    old = _block(1)
    kept = _write(store, [old])[0]
    new = _block(2)
    txn = store.begin_write()
    txn.data = store.data_writer()
    added = chunks.add_ref(txn, new, "none")
    assert [bytes(v) for v in chunks.views_if_stored(txn, [kept, added, chunks.chunk_id(b"x")])[:2]] \
        == [old, new]
    assert chunks.views_if_stored(txn, [chunks.chunk_id(b"not stored")]) == [None]
    store.commit(txn)


@pytest.mark.parametrize("seed", range(6))
def test_random_transactions_that_spill_fail_and_abort_keep_every_committed_chunk(
        store, monkeypatch, seed):
    """Random sequences of chunks added, nested transactions that fail or
    hold, chunks let go of, commits and aborts, with a buffer of 3 chunks
    (so most transactions spill): every committed chunk reads back, verify
    finds nothing, and once gc's tidy and punches ran the file holds no more
    than the live chunks' blocks."""
    import random
    rng = random.Random(seed)
    _small_buffer(monkeypatch, 3)
    committed: dict[bytes, bytes] = {}  # chunk id -> data
    txn, pending, dropped = None, {}, set()
    serial = iter(range(1 << 30))

    def fresh():
        return next(serial).to_bytes(8, "big") + rng.randbytes(BLOCK - 8)

    for _ in range(60):
        step = rng.choice(["add", "add", "nested_ok", "nested_fail", "drop", "commit", "commit",
                           "abort", "read"])
        if txn is None:
            txn, pending, dropped = store.begin_write(data_files=True), {}, set()
        if step == "add":
            for data in [fresh() for _ in range(rng.randint(1, 4))]:
                pending[chunks.add_ref(txn, data, "none")] = data
        elif step in ("nested_ok", "nested_fail"):
            datas = [fresh() for _ in range(rng.randint(1, 6))]
            try:
                with store.nested(txn) as child:
                    ids = [chunks.add_ref(child, d, "none") for d in datas]
                    if step == "nested_fail":
                        raise RuntimeError("the operation failed")
            except RuntimeError:
                pass
            else:
                pending.update(zip(ids, datas))
        elif step == "drop" and set(committed) - dropped:
            cid = rng.choice(sorted(set(committed) - dropped))
            chunks.decref(txn, cid)
            dropped.add(cid)
        elif step == "read":
            for cid in rng.sample(sorted(set(pending) | (set(committed) - dropped)),
                                  min(5, len(pending) + len(committed) - len(dropped))):
                assert chunks.read(txn, cid) == (pending[cid] if cid in pending else committed[cid])
        elif step == "commit":
            store.commit(txn)
            committed.update(pending)
            for cid in dropped:
                del committed[cid]
            txn = None
        elif step == "abort":
            store.abort(txn)
            txn = None
    if txn is not None:
        store.abort(txn)

    with _reopened(store) as other:  # (this process's writer gone: tidy may cut its file)
        with other.read() as t:
            assert {cid: chunks.read(t, cid) for cid in committed} == committed
            assert sum(1 for _ in chunks.extents(t)) == len(committed)
        assert _damage(other) == []
        datafiles.reclaim_all(other)
        datafiles.tidy(other, chunks.data_files_in_use)
        with other.read() as t:
            assert datafiles.dead_bytes(t) == 0
        per_chunk = (-(-(BLOCK + 1) // datafiles.ALIGN) + 1) * datafiles.ALIGN
        on_disk = _blocks_on_disk(other) if os.path.isdir(datafiles.folder(other.path)) else 0
        assert on_disk <= len(committed) * per_chunk, (on_disk, len(committed))
