"""Directories on a mounted volume: big listings, nesting, rmdir, readdir under change."""

import errno
import os
import stat

import pytest

from conftest import needs_fuse
from posix_helpers import getdents, wait_for
from fusevol.store import ROOT_INO, Inodes, Store, volumes

pytestmark = needs_fuse


def _fill_directory(store_path: str, volume: str, dirname: bytes, names) -> None:
    """Create a directory with empty files straight in the store, in one transaction
    (the volume is not mounted). Through FUSE each create costs a few round trips
    (about 1 ms), which would make 100k entries take minutes."""
    store = Store.open(store_path)
    with store.read() as txn:
        vid = volumes.get(txn, volume).vid
    inodes = Inodes(vid, store.block_size)
    with store.write() as txn:
        d, _ = inodes.create(txn, ROOT_INO, dirname, stat.S_IFDIR | 0o755, 0, 0)
        for name in names:
            inodes.create(txn, d, name.encode(), stat.S_IFREG | 0o644, 0, 0)


def test_directory_of_100k_entries(mounts):
    names = {f"entry-{i:06d}-{'x' * (i % 40)}" for i in range(100_000)}
    mounts.create("vol")
    _fill_directory(mounts.store_path, "vol", b"many", names)
    mp = mounts.mount("vol")
    d = os.path.join(mp, "many")
    # Some more through the kernel, sorting among the others; some removed.
    more = {f"entry-{i:06d}-added" for i in range(0, 100_000, 50)}
    for name in more:
        os.mknod(os.path.join(d, name), 0o644 | stat.S_IFREG)
    gone = {f"entry-{i:06d}-{'x' * (i % 40)}" for i in range(7, 100_000, 100)}
    for name in gone:
        os.unlink(os.path.join(d, name))
    expected = (names | more) - gone
    listed = os.listdir(d)
    assert len(listed) == len(expected) and set(listed) == expected
    with os.scandir(d) as it:
        entries = {e.name: e.is_file(follow_symlinks=False) for e in it}
    assert entries.keys() == expected and all(entries.values())
    assert os.stat(d).st_nlink == 2
    # The names come from the store, not only from the kernel's caches.
    mounts.umount(mp)
    mp = mounts.mount("vol")
    assert sorted(os.listdir(os.path.join(mp, "many"))) == sorted(expected)


def test_rmdir_of_a_non_empty_directory_is_enotempty(vol):
    d = os.path.join(vol, "d")
    os.makedirs(os.path.join(d, "sub"))
    with pytest.raises(OSError) as info:
        os.rmdir(d)
    assert info.value.errno == errno.ENOTEMPTY
    open(os.path.join(d, "sub", "f"), "w").close()
    with pytest.raises(OSError) as info:
        os.rmdir(os.path.join(d, "sub"))
    assert info.value.errno == errno.ENOTEMPTY
    os.unlink(os.path.join(d, "sub", "f"))
    os.rmdir(os.path.join(d, "sub"))
    os.rmdir(d)
    assert os.listdir(vol) == []
    with pytest.raises(OSError) as info:
        os.rmdir(os.path.join(vol, "missing"))
    assert info.value.errno == errno.ENOENT
    open(os.path.join(vol, "file"), "w").close()
    with pytest.raises(OSError) as info:
        os.rmdir(os.path.join(vol, "file"))
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(OSError) as info:
        os.mkdir(os.path.join(vol, "file"))
    assert info.value.errno == errno.EEXIST
    with pytest.raises(OSError) as info:
        os.unlink(vol)  # a directory
    assert info.value.errno in (errno.EISDIR, errno.EPERM, errno.EBUSY)


def test_nested_trees_and_link_counts(mounts):
    mp = mounts.mount("vol")
    deep = os.path.join(mp, *[f"level{i}" for i in range(40)])
    os.makedirs(deep)
    with open(os.path.join(deep, "leaf"), "w") as f:
        f.write("bottom")
    wide = os.path.join(mp, "wide")
    os.mkdir(wide)
    for i in range(30):
        os.makedirs(os.path.join(wide, f"d{i}", "inner"))
        with open(os.path.join(wide, f"d{i}", "inner", "f"), "w") as f:
            f.write(str(i))

    def check(mp):
        assert open(os.path.join(mp, *[f"level{i}" for i in range(40)], "leaf")).read() == "bottom"
        wide = os.path.join(mp, "wide")
        # A directory's link count: 2 plus one per subdirectory ('..' of each).
        assert os.stat(wide).st_nlink == 2 + 30
        assert os.stat(os.path.join(wide, "d7")).st_nlink == 3
        assert os.stat(os.path.join(mp, "level0")).st_nlink == 3
        walked = {os.path.relpath(p, mp) for p, _, files in os.walk(wide) for _ in files}
        assert walked == {f"wide/d{i}/inner" for i in range(30)}
        assert [open(os.path.join(wide, f"d{i}", "inner", "f")).read() for i in range(30)] == \
            [str(i) for i in range(30)]
        assert os.stat(mp).st_nlink == 2 + 2  # level0 and wide
        # '..' leads back up, and at the root stays there.
        assert os.path.samestat(os.stat(os.path.join(wide, "d3", "inner", "..", "..")), os.stat(wide))
        assert os.path.samestat(os.stat(os.path.join(mp, "..", os.path.basename(mp))), os.stat(mp))

    check(mp)
    mounts.umount(mp)
    mp = mounts.mount("vol")
    check(mp)


def test_readdir_while_entries_come_and_go(vol):
    """POSIX leaves open whether entries added or removed during a listing show up;
    every entry that stays must come exactly once, and a removed one must not come
    back to life in the kernel's caches."""
    d = os.path.join(vol, "d")
    os.mkdir(d)
    names = [f"e{i:04d}" for i in range(2000)]
    for n in names:
        os.mknod(os.path.join(d, n), 0o644 | stat.S_IFREG)
    removed = set(names[1000:1600])
    kept = set(names) - removed
    added = {f"new{i}" for i in range(100)}

    with os.scandir(d) as it:
        seen = [next(it).name for _ in range(10)]
        for n in sorted(removed):
            os.unlink(os.path.join(d, n))
        for n in sorted(added):
            os.mknod(os.path.join(d, n), 0o644 | stat.S_IFREG)
        os.rename(os.path.join(d, names[1800]), os.path.join(d, "renamed"))
        seen += [e.name for e in it]
    assert len(seen) == len(set(seen)), "an entry came twice"
    assert kept - {names[1800]} <= set(seen), "an entry that stayed was skipped"
    assert set(seen) <= set(names) | added | {"renamed"}
    for n in sorted(removed)[::50] + [names[1800]]:
        assert not os.path.exists(os.path.join(d, n)), f"{n} was removed but still exists"
        with pytest.raises(FileNotFoundError):
            os.stat(os.path.join(d, n))
    assert set(os.listdir(d)) == (kept - {names[1800]}) | added | {"renamed"}

    # A listing from the start again sees the directory as it is now.
    with os.scandir(d) as it:
        first = next(it).name
        os.unlink(os.path.join(d, "renamed"))
        rest = [e.name for e in it]
    assert first != "renamed" or "renamed" not in rest
    assert not os.path.exists(os.path.join(d, "renamed"))


def test_rewinddir_and_empty_directories(vol):
    d = os.path.join(vol, "d")
    os.mkdir(d)
    assert os.listdir(d) == []
    for i in range(300):
        open(os.path.join(d, f"f{i}"), "w").close()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = sorted(os.listdir(fd))
        os.lseek(fd, 0, os.SEEK_SET)  # rewinddir
        again = sorted(os.listdir(fd))
    finally:
        os.close(fd)
    assert first == again == sorted(f"f{i}" for i in range(300))


def _dots(path: str) -> list[tuple[bytes, int]]:
    return [(name, ino) for name, ino, _ in getdents(path)[:2]]


def test_readdir_lists_dot_and_dotdot_first(mounts):
    mp = mounts.mount("vol")
    os.makedirs(os.path.join(mp, "app/data/deep"))
    for i in range(200):  # a listing that takes several readdir calls
        open(os.path.join(mp, "app/data", f"f{i:03d}"), "w").close()
    ino = lambda *p: os.stat(os.path.join(mp, *p)).st_ino  # noqa: E731

    def check():
        assert _dots(mp) == [(b".", ino()), (b"..", ino())]  # the root is its own parent
        assert _dots(os.path.join(mp, "app")) == [(b".", ino("app")), (b"..", ino())]
        data = getdents(os.path.join(mp, "app/data"))
        assert [(n, i) for n, i, _ in data[:2]] == [(b".", ino("app/data")), (b"..", ino("app"))]
        assert all(t == 4 for _, _, t in data[:2])  # DT_DIR
        assert sorted(n for n, _, _ in data[2:]) == sorted(
            [b"deep"] + [f"f{i:03d}".encode() for i in range(200)])
        assert len(os.listdir(os.path.join(mp, "app/data"))) == 201  # the dots are not names

    check()
    mounts.umount(mp)
    mp = mounts.mount("vol")
    check()  # from the store, not from the kernel's caches

    ino_in_volume = ino("app")
    mounts.umount(mp)
    view = mounts.mount("vol", "--subpath", "app/data")
    root = os.stat(view).st_ino
    # A view is a bind of the folder: its listing is the folder's, `..` naming its
    # parent in the volume, as for any bind mount; as a path, `..` is the kernel's.
    assert _dots(view) == [(b".", root), (b"..", ino_in_volume)]
    assert os.path.samestat(os.stat(os.path.join(view, "..")), os.stat(os.path.dirname(view)))
    assert _dots(os.path.join(view, "deep")) == [(b".", os.stat(os.path.join(view, "deep")).st_ino),
                                                 (b"..", root)]


def test_listing_dots_takes_no_lookup_reference(mounts, store_path):
    """The kernel keeps no reference for `.` and `..` of a listing, so the worker must
    not count one: a removed directory that was listed must still be purged once the
    kernel forgets it (its row would stay behind as an orphan)."""
    mp = mounts.mount("vol")
    os.makedirs(os.path.join(mp, "a/b"))
    for _ in range(3):
        getdents(os.path.join(mp, "a/b"))
        getdents(os.path.join(mp, "a"))
    os.rmdir(os.path.join(mp, "a/b"))
    os.rmdir(os.path.join(mp, "a"))

    def orphans() -> int:
        with Store.open(store_path).read() as txn:
            return txn.txn.stat(txn.store.dbs["orphans"])["entries"]

    wait_for(lambda: orphans() == 0, "the removed directories to be purged", timeout=10)
    assert os.listdir(mp) == []
