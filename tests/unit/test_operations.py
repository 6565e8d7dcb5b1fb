"""VolumeOperations called directly, as pyfuse3 would call them (no kernel):
names, data, the errno each failure answers, and read-only volumes."""

import errno
import os
import stat
import threading
from types import SimpleNamespace

import pyfuse3
import pytest

from fusevol.fs.operations import VolumeOperations
from fusevol.fs.registry import SNAPSHOT_XATTR
from fusevol.fs.runner import TxnRunner
from fusevol.fs.space import SpaceBudget
from fusevol.store import chunks, snapshots
from fusevol.store.schema import ROOT_INO
from store_damage import rewrite_stored

from .conftest import BS

CTX = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)
USER = SimpleNamespace(uid=1000, gid=1000, pid=1, umask=0o022)


def fields(**set_):
    """The kernel's list of attributes a setattr changes."""
    names = ("mode", "uid", "gid", "size", "atime", "mtime", "ctime")
    return SimpleNamespace(**{f"update_{n}": n in set_ for n in names})


def attrs(**values) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    for k, v in values.items():
        setattr(a, k, v)
    return a


async def fuse_errno(coro) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await coro
    return info.value.errno


@pytest.fixture
def ops(runner, inodes, space) -> VolumeOperations:
    return VolumeOperations(runner, inodes, space)


async def _create(ops, name: bytes, data: bytes = b"", parent=ROOT_INO):
    info, entry = await ops.create(parent, name, 0o644, os.O_WRONLY, CTX)
    if data:
        assert await ops.write(info.fh, 0, data) == len(data)
    await ops.flush(info.fh)
    await ops.release(info.fh)
    return entry.st_ino


async def _read_all(ops, ino: int) -> bytes:
    info = await ops.open(ino, os.O_RDONLY, CTX)
    size = (await ops.getattr(ino)).st_size
    try:
        return await ops.read(info.fh, 0, size + 10)
    finally:
        await ops.release(info.fh)


async def test_create_write_read_and_lookup(ops, store, inodes):
    data = os.urandom(BS + 1000)
    info, entry = await ops.create(ROOT_INO, b"f", 0o640, os.O_RDWR, USER)
    assert stat.S_ISREG(entry.st_mode) and stat.S_IMODE(entry.st_mode) == 0o640
    assert (entry.st_uid, entry.st_gid, entry.st_size) == (1000, 1000, 0)
    await ops.write(info.fh, 0, data)
    assert (await ops.getattr(entry.st_ino)).st_size == len(data)  # buffered, not stored
    assert await ops.read(info.fh, 100, 50) == data[100:150]
    await ops.fsync(info.fh, False)
    await ops.release(info.fh)
    assert ops.files == {}
    found = await ops.lookup(ROOT_INO, b"f")
    assert found.st_ino == entry.st_ino and found.st_size == len(data)
    assert found.st_blocks == -(-len(data) // 512)
    assert await _read_all(ops, entry.st_ino) == data
    with store.read() as txn:  # fsync'ed: in the store
        assert inodes.get(txn, entry.st_ino).size == len(data)


async def test_lookup_of_a_missing_name_is_a_negative_entry(ops):
    entry = await ops.lookup(ROOT_INO, b"nope")
    assert entry.st_ino == 0 and entry.entry_timeout > 0


async def test_directories(ops, monkeypatch):
    d = (await ops.mkdir(ROOT_INO, b"d", 0o755, CTX)).st_ino
    await _create(ops, b"x", b"1", parent=d)
    await ops.symlink(d, b"s", b"x", CTX)
    fh = await ops.opendir(d, CTX)
    listed = []

    def reply(token, name, entry, offset):
        listed.append((name, offset))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)  # the kernel's buffer, as a list
    await ops.readdir(fh, 0, None)
    await ops.releasedir(fh)
    assert listed == [(b".", 1), (b"..", 2), (b"s", 3), (b"x", 4)]
    s = (await ops.lookup(d, b"s")).st_ino
    assert await ops.readlink(s) == b"x"
    assert await fuse_errno(ops.rmdir(ROOT_INO, b"d", CTX)) == errno.ENOTEMPTY
    await ops.unlink(d, b"x", CTX)
    await ops.unlink(d, b"s", CTX)
    await ops.rmdir(ROOT_INO, b"d", CTX)
    assert (await ops.lookup(ROOT_INO, b"d")).st_ino == 0


async def test_rename_through_the_handler(ops):
    a = await _create(ops, b"a", b"A")
    b = await _create(ops, b"b", b"B")
    no, ex = pyfuse3.RENAME_NOREPLACE, pyfuse3.RENAME_EXCHANGE
    assert await fuse_errno(ops.rename(ROOT_INO, b"a", ROOT_INO, b"b", no, CTX)) == errno.EEXIST
    assert await fuse_errno(ops.rename(ROOT_INO, b"a", ROOT_INO, b"b", no | ex, CTX)) == errno.EINVAL
    assert await fuse_errno(ops.rename(ROOT_INO, b"a", ROOT_INO, b"c", 1 << 7, CTX)) == errno.EINVAL
    await ops.rename(ROOT_INO, b"a", ROOT_INO, b"b", ex, CTX)
    assert (await ops.lookup(ROOT_INO, b"b")).st_ino == a
    assert (await ops.lookup(ROOT_INO, b"a")).st_ino == b
    await ops.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0, CTX)  # b's inode lost its last name
    assert (await ops.lookup(ROOT_INO, b"b")).st_ino == b
    assert await _read_all(ops, b) == b"B"
    assert (await ops.getattr(a)).st_nlink == 0  # the kernel still knows the number
    await ops.forget([(a, ops.lookups[a])])
    await ops.runner.sync()
    assert await fuse_errno(ops.getattr(a)) == errno.ENOENT


async def test_unlinked_open_file_keeps_its_data_until_released(ops, store):
    data = os.urandom(1000)
    info, entry = await ops.create(ROOT_INO, b"tmp", 0o644, os.O_RDWR, CTX)
    await ops.write(info.fh, 0, data)
    await ops.flush(info.fh)
    await ops.unlink(ROOT_INO, b"tmp", CTX)
    assert await ops.read(info.fh, 0, 1000) == data
    assert (await ops.getattr(entry.st_ino)).st_nlink == 0
    await ops.release(info.fh)
    await ops.runner.sync()
    with store.read() as txn:
        assert chunks.totals(txn)["chunks"] == 0  # given back once closed
    await ops.forget([(entry.st_ino, 1)])
    await ops.runner.sync()
    assert await fuse_errno(ops.getattr(entry.st_ino)) == errno.ENOENT


async def _assert_purged_whole(ops, store, inodes, ino: int, before) -> None:
    """The deleted file `ino` is gone: no chunk, no orphan, usage as `before`."""
    with store.read() as txn:
        assert chunks.totals(txn)["chunks"] == 0
        assert inodes.orphans(txn) == []
        assert inodes.usage(txn) == before
    assert await fuse_errno(ops.getattr(ino)) == errno.ENOENT


@pytest.mark.parametrize("forget_first", [True, False])
async def test_a_deleted_file_gives_back_its_data_at_once_and_its_row_at_forget(
        ops, store, inodes, forget_first):
    """The data goes with the last name, the row with the kernel's forget, and
    each once, whether the forget comes before the store thread let go of
    the data (the let-go then purges it whole) or after (the purge then has
    only the row left)."""
    with store.read() as txn:
        before = inodes.usage(txn)
    ino = await _create(ops, b"f", os.urandom(3000))
    await ops.lookup(ROOT_INO, b"f")  # a second reference the kernel holds
    await ops.unlink(ROOT_INO, b"f", CTX)
    if not forget_first:
        await ops.runner.sync()  # the let-go ran: data back, row kept for the kernel
        with store.read() as txn:
            assert chunks.totals(txn)["chunks"] == 0
            assert inodes.orphans(txn) == [ino]
        assert (await ops.getattr(ino)).st_nlink == 0
    await ops.forget([(ino, 2)])
    await ops.runner.sync()
    await _assert_purged_whole(ops, store, inodes, ino, before)


async def test_a_forget_before_the_let_go_ran_leaves_the_purge_to_it(ops, store, inodes,
                                                                   monkeypatch):
    """The kernel forgets a deleted file's number right after the unlink, most
    often before the store thread let go of its data: that queued let-go then
    purges the file whole, and the forget queues no store operation of its own.
    The file has no name, so the purge does not read its orphan mark first."""
    from fusevol.store import env
    marks_read = []
    real_get = env.Txn.get

    def get(txn, table, key):
        if txn.write and table == "orphans":
            marks_read.append(bytes(key))
        return real_get(txn, table, key)
    monkeypatch.setattr(env.Txn, "get", get)
    with store.read() as txn:
        before = inodes.usage(txn)
    ino = await _create(ops, b"f", os.urandom(3000))
    await ops.lookup(ROOT_INO, b"f")
    held = threading.Event()
    ops.runner.submit(lambda txn: held.wait(10))  # the store thread is busy meanwhile
    try:
        await ops.unlink(ROOT_INO, b"f", CTX)
        queued = ops.runner.queued
        await ops.forget([(ino, 2)])  # create's reference and the lookup's
        assert ops.runner.queued == queued
    finally:
        held.set()
    await ops.runner.sync()
    assert marks_read == []
    await _assert_purged_whole(ops, store, inodes, ino, before)


async def test_a_forget_after_a_change_of_the_deleted_file_purges_after_that_change(
        ops, store, inodes):
    """The kernel may still change a deleted file it holds (an xattr set through
    a descriptor's path) after its let-go was queued: the forget's purge then
    comes after that change, not ahead of it with the let-go (the change would
    find no row when the store thread applies it: error mode)."""
    with store.read() as txn:
        before = inodes.usage(txn)
    ino = await _create(ops, b"f", os.urandom(3000))
    await ops.lookup(ROOT_INO, b"f")
    held = threading.Event()
    ops.runner.submit(lambda txn: held.wait(10))
    try:
        await ops.unlink(ROOT_INO, b"f", CTX)
        await ops.setxattr(ino, b"user.late", b"1", CTX)  # answered ahead, queued
        await ops.forget([(ino, 2)])
    finally:
        held.set()
    await ops.runner.sync()
    assert ops.runner.broken is None
    await _assert_purged_whole(ops, store, inodes, ino, before)


async def test_setattr_truncates_buffers_and_store(ops, store, inodes):
    data = os.urandom(3 * BS)
    info, entry = await ops.create(ROOT_INO, b"f", 0o644, os.O_RDWR, CTX)
    await ops.write(info.fh, 0, data)
    new = await ops.setattr(entry.st_ino, attrs(st_size=BS + 3, st_mode=0o600),
                            fields(size=1, mode=1), info.fh, CTX)
    assert new.st_size == BS + 3 and stat.S_IMODE(new.st_mode) == 0o600
    assert await ops.read(info.fh, 0, 3 * BS) == data[:BS + 3]
    await ops.release(info.fh)
    await ops.runner.sync()
    with store.read() as txn:
        assert inodes.get(txn, entry.st_ino).size == BS + 3
    info = await ops.open(entry.st_ino, os.O_RDWR | os.O_TRUNC, CTX)
    assert (await ops.getattr(entry.st_ino)).st_size == 0
    await ops.release(info.fh)


@pytest.mark.parametrize("call, err", [
    (lambda ops: ops.getattr(999), errno.ENOENT),
    (lambda ops: ops.mkdir(ROOT_INO, b"f", 0o755, CTX), errno.EEXIST),
    (lambda ops: ops.mkdir(ROOT_INO, b"n" * 256, 0o755, CTX), errno.ENAMETOOLONG),
    (lambda ops: ops.unlink(ROOT_INO, b"nope", CTX), errno.ENOENT),
    (lambda ops: ops.rmdir(ROOT_INO, b"f", CTX), errno.ENOTDIR),
    (lambda ops: ops.open(ROOT_INO, os.O_RDONLY, CTX), errno.EISDIR),
    (lambda ops: ops.opendir(2, CTX), errno.ENOTDIR),
    (lambda ops: ops.readlink(2), errno.EINVAL),
    (lambda ops: ops.link(ROOT_INO, ROOT_INO, b"l", CTX), errno.EPERM),
    (lambda ops: ops.getxattr(2, b"user.none", CTX), errno.ENODATA),
    (lambda ops: ops.getxattr(2, b"other.x", CTX), errno.EOPNOTSUPP),
    (lambda ops: ops.setxattr(2, b"user.", b"v", CTX), errno.EINVAL),
    (lambda ops: ops.setxattr(2, b"system.posix_acl_default", b"v", CTX), errno.EOPNOTSUPP),
    (lambda ops: ops.removexattr(2, b"user.none", CTX), errno.ENODATA),
    (lambda ops: ops.setattr(ROOT_INO, attrs(st_size=0), fields(size=1), None, CTX), errno.EISDIR),
])
async def test_errors_answer_their_errno(ops, call, err):
    assert await _create(ops, b"f", b"x") == 2
    assert await fuse_errno(call(ops)) == err


async def test_xattrs_and_trusted_names_hidden_from_users(ops):
    f = await _create(ops, b"f")
    await ops.setxattr(f, b"user.a", b"1", CTX)
    await ops.setxattr(f, b"trusted.b", b"2", CTX)
    assert await ops.getxattr(f, b"user.a", CTX) == b"1"
    assert sorted(await ops.listxattr(f, CTX)) == [b"trusted.b", b"user.a"]
    assert await ops.listxattr(f, USER) == [b"user.a"]
    await ops.removexattr(f, b"user.a", CTX)
    await ops.removexattr(f, b"system.posix_acl_access", CTX)  # no ACL is kept: removing one succeeds


async def test_damaged_data_answers_eio(ops, store):
    data = os.urandom(5000)
    ino = await _create(ops, b"f", data)
    await ops.runner.sync()
    cid = chunks.chunk_id(data)
    with store.write() as txn:
        rewrite_stored(txn, chunks, cid, lambda payload: payload.__setitem__(-1, payload[-1] ^ 0xFF))
    ops.files.clear()
    info = await ops.open(ino, os.O_RDONLY, CTX)
    assert await fuse_errno(ops.read(info.fh, 0, 100)) == errno.EIO


async def test_a_bug_in_a_handler_is_eio_not_a_crash(ops, monkeypatch, caplog):
    def broken(txn, ino):
        raise KeyError("a bug")
    monkeypatch.setattr(ops.inodes, "get", broken)
    monkeypatch.setattr(ops.inodes, "peek", broken)
    assert await fuse_errno(ops.getattr(ROOT_INO)) == errno.EIO
    assert "getattr failed" in caplog.text


async def test_a_read_only_volume_answers_erofs(runner, inodes, space):
    rw = VolumeOperations(runner, inodes, space)
    f = await _create(rw, b"f", b"data")
    await rw.mkdir(ROOT_INO, b"d", 0o755, CTX)
    ro = VolumeOperations(runner, inodes, space, readonly=True)
    for call in (ro.create(ROOT_INO, b"g", 0o644, os.O_WRONLY, CTX),
                 ro.mkdir(ROOT_INO, b"e", 0o755, CTX),
                 ro.mknod(ROOT_INO, b"n", stat.S_IFIFO | 0o644, 0, CTX),
                 ro.symlink(ROOT_INO, b"s", b"f", CTX),
                 ro.link(f, ROOT_INO, b"l", CTX),
                 ro.unlink(ROOT_INO, b"f", CTX),
                 ro.rmdir(ROOT_INO, b"d", CTX),
                 ro.rename(ROOT_INO, b"f", ROOT_INO, b"g", 0, CTX),
                 ro.setattr(f, attrs(st_mode=0o600), fields(mode=1), None, CTX),
                 ro.setxattr(f, b"user.a", b"1", CTX),
                 ro.removexattr(f, b"user.a", CTX),
                 ro.open(f, os.O_WRONLY, CTX),
                 ro.open(f, os.O_RDWR, CTX)):
        assert await fuse_errno(call) == errno.EROFS
    assert await _read_all(ro, f) == b"data"
    assert (await ro.lookup(ROOT_INO, b"d")).st_ino != 0


async def test_a_snapshot_asked_of_the_worker_holds_its_buffers_in_one_durable_commit(store, inodes):
    # No batch ends but by a durable operation: every commit is counted.
    runner = TxnRunner(store, linger=600, max_age=600)
    runner.start()
    try:
        space = SpaceBudget(store, None, 0, pending=lambda: runner.unstored_bytes)
        ops = VolumeOperations(runner, inodes, space, volume="vol")
        info, entry = await ops.create(ROOT_INO, b"f", 0o644, os.O_WRONLY, CTX)
        await ops.write(info.fh, 0, b"buffered, not stored")
        await runner.sync()
        before = store.env.info()["last_txnid"]
        assert await ops.getxattr(ROOT_INO, SNAPSHOT_XATTR + b"s1", CTX) == b""
        assert store.env.info()["last_txnid"] == before + 1  # the buffers and the snapshot
        assert runner.durable_seq == runner.applied
        named = (await ops.getxattr(ROOT_INO, SNAPSHOT_XATTR, CTX)).decode()  # after the time
        with store.read() as txn:
            snap = snapshots.get(txn, "vol", "s1")
            assert (snap.logical_bytes, snap.inodes) == (20, 2)
            assert snapshots.get(txn, "vol", named).root == snap.root
        assert await fuse_errno(ops.getxattr(ROOT_INO, SNAPSHOT_XATTR + b"s1", CTX)) == errno.EEXIST
        await ops.release(info.fh)
    finally:
        runner.stop()
    ro = VolumeOperations(runner, inodes, space, readonly=True, volume="vol")
    assert await fuse_errno(ro.getxattr(ROOT_INO, SNAPSHOT_XATTR + b"s2", CTX)) == errno.EOPNOTSUPP


async def test_a_view_serves_a_folder_as_its_root(runner, inodes, space):
    rw = VolumeOperations(runner, inodes, space)
    d = (await rw.mkdir(ROOT_INO, b"public", 0o755, CTX)).st_ino
    await _create(rw, b"secret", b"s")
    await _create(rw, b"index", b"i", parent=d)
    view = VolumeOperations(runner, inodes, space, root_ino=d)
    assert (await view.lookup(ROOT_INO, b"index")).st_ino != 0
    assert (await view.lookup(ROOT_INO, b"secret")).st_ino == 0
    up = await view.lookup(ROOT_INO, b"..")
    assert up.st_ino == ROOT_INO  # `..` of the view's root is that root
    assert (await view.getattr(ROOT_INO)).st_ino == ROOT_INO


async def test_statfs_counts_the_volume(ops, space):
    await _create(ops, b"f", b"x" * 5000)
    await ops.runner.sync()
    st = await ops.statfs(CTX)
    assert st.f_files - st.f_ffree == 2 and st.f_namemax == 255
    space.quota = 1 << 20
    st = await ops.statfs(CTX)
    assert st.f_blocks == 256 and st.f_bfree == ((1 << 20) - 5000) // 4096


def _same_attrs(a: pyfuse3.EntryAttributes, b: pyfuse3.EntryAttributes) -> bool:
    names = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
             "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
    return all(getattr(a, n) == getattr(b, n) for n in names)


async def test_readers_share_decoded_inodes_that_no_change_alters(ops, inodes):
    """getattr, lookup and the checks of changes read one decoded inode per row
    (Inodes.peek): no change may alter it in place, and an attribute answered
    again is the row as it is now."""
    ino = await _create(ops, b"f", b"data")
    before = await ops.getattr(ino)
    assert (await ops.getattr(ino)) is before  # unchanged: the same answer
    await ops.setattr(ino, attrs(st_mode=0o600), fields(mode=1), None, CTX)
    after = await ops.getattr(ino)
    assert stat.S_IMODE(after.st_mode) == 0o600 and stat.S_IMODE(before.st_mode) == 0o644
    await ops.link(ino, ROOT_INO, b"g", CTX)
    assert (await ops.lookup(ROOT_INO, b"g")).st_nlink == 2
    d = (await ops.mkdir(ROOT_INO, b"d", 0o755, CTX)).st_ino
    await ops.rename(ROOT_INO, b"g", d, b"h", 0, CTX)
    await ops.unlink(ROOT_INO, b"f", CTX)
    await ops.setattr(ino, attrs(st_mtime_ns=5, st_ctime_ns=6), fields(mtime=1, ctime=1), None, CTX)
    assert (await ops.getattr(ino)).st_mtime_ns == 5  # it still has a name (d/h)
    await ops.unlink(d, b"h", CTX)
    gone = await ops.setattr(ino, attrs(st_mtime_ns=7, st_ctime_ns=8), fields(mtime=1, ctime=1),
                             None, CTX)
    assert gone.st_mtime_ns == 7 and gone.st_ctime_ns == 8 and gone.st_nlink == 0
    assert (await ops.getattr(ino)).st_mtime_ns == 5  # not stored: nobody sees it again
    for ino_now in (ROOT_INO, d, ino):
        with ops.runner.cache.reader() as txn:
            shared = inodes.peek(txn, ino_now)
            assert shared == inodes.get(txn, ino_now)  # as the row is: never changed in place
        assert _same_attrs(await ops.getattr(ino_now), ops._entry(ino_now, shared))
    await ops.runner.sync()
    with ops.runner.store.read() as txn:
        for key, (raw, decode, shared) in ops.runner.cache._decoded.items():
            assert shared == decode(raw)
