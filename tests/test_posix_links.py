"""Hardlinks, symlinks, unlinking open files and rename (renameat2 flags included)."""

import errno
import os

import pytest

from conftest import needs_fuse
from posix_helpers import RENAME_EXCHANGE, RENAME_NOREPLACE, df, renameat2, wait_for

pytestmark = needs_fuse


def test_hardlinks_share_one_inode_and_survive_remount(mounts):
    mp = mounts.mount("vol")
    os.mkdir(os.path.join(mp, "d"))
    a, b, c = (os.path.join(mp, p) for p in ("a", "d/b", "d/c"))
    with open(a, "wb") as f:
        f.write(b"one")
    os.link(a, b)
    os.link(b, c)
    assert len({os.stat(p).st_ino for p in (a, b, c)}) == 1
    assert os.stat(a).st_nlink == 3
    with open(c, "ab") as f:
        f.write(b"+two")
    assert open(a, "rb").read() == open(b, "rb").read() == b"one+two"
    os.unlink(a)
    assert os.stat(b).st_nlink == 2
    with pytest.raises(OSError) as info:
        os.link(os.path.join(mp, "d"), os.path.join(mp, "dirlink"))
    assert info.value.errno == errno.EPERM
    with pytest.raises(FileExistsError):
        os.link(b, c)
    mounts.umount(mp)

    mp = mounts.mount("vol")
    b, c = os.path.join(mp, "d/b"), os.path.join(mp, "d/c")
    assert os.stat(b).st_ino == os.stat(c).st_ino and os.stat(b).st_nlink == 2
    with open(b, "r+b") as f:
        f.write(b"ONE")
    assert open(c, "rb").read() == b"ONE+two"
    os.unlink(b)
    assert os.stat(c).st_nlink == 1 and open(c, "rb").read() == b"ONE+two"


def test_unlinked_open_file_lives_until_closed(mounts):
    mp = mounts.mount("vol")
    path = os.path.join(mp, "f")
    data = os.urandom(8 << 20)
    with open(path, "wb") as f:
        f.write(data)
    with open(os.path.join(mp, "other"), "wb") as f:
        f.write(b"small")
    full = df(mounts.store_path)["volumes"]["vol"]
    assert full >= len(data)
    fd = os.open(path, os.O_RDWR)
    try:
        os.unlink(path)
        assert not os.path.exists(path) and "f" not in os.listdir(mp)
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 100, 5 << 20) == data[5 << 20:(5 << 20) + 100]
        os.pwrite(fd, b"still writable", 1000)
        os.fsync(fd)
        assert os.pread(fd, 14, 1000) == b"still writable"
        # Its data is still held while it is open.
        assert df(mounts.store_path)["volumes"]["vol"] >= len(data) - (1 << 20)
        open(path, "wb").close()  # the name is free for a new file
        assert os.stat(path).st_ino != os.fstat(fd).st_ino
    finally:
        os.close(fd)
    freed = wait_for(lambda: df(mounts.store_path)["volumes"]["vol"] < 1 << 20,
                     "the unlinked file's space to be freed")
    assert freed
    assert open(os.path.join(mp, "other"), "rb").read() == b"small"
    mounts.umount(mp)
    mp = mounts.mount("vol")
    assert sorted(os.listdir(mp)) == ["f", "other"] and os.path.getsize(os.path.join(mp, "f")) == 0


def test_symlinks_relative_absolute_dangling(vol):
    os.makedirs(os.path.join(vol, "d/e"))
    with open(os.path.join(vol, "d/target"), "w") as f:
        f.write("T")
    rel = os.path.join(vol, "d/e/rel")
    os.symlink("../target", rel)
    absolute = os.path.join(vol, "abs")
    os.symlink(os.path.join(vol, "d/target"), absolute)
    dangling = os.path.join(vol, "dangling")
    os.symlink("nowhere/at/all", dangling)
    loop = os.path.join(vol, "loop")
    os.symlink("loop", loop)

    assert os.readlink(rel) == "../target"
    assert open(rel).read() == open(absolute).read() == "T"
    target_st = os.stat(os.path.join(vol, "d/target"))
    for link in (rel, absolute):
        assert os.path.samestat(os.stat(link), target_st)
        lst = os.lstat(link)
        assert lst.st_mode & 0o170000 == 0o120000
        assert lst.st_size == len(os.readlink(link))
        assert lst.st_ino != target_st.st_ino
    assert os.path.lexists(dangling) and not os.path.exists(dangling)
    with pytest.raises(FileNotFoundError):
        os.stat(dangling)
    with pytest.raises(OSError) as info:
        os.stat(loop)
    assert info.value.errno == errno.ELOOP
    with pytest.raises(OSError) as info:
        os.readlink(os.path.join(vol, "d/target"))
    assert info.value.errno == errno.EINVAL
    # Writing through a dangling link creates its target.
    os.symlink("made-by-link", os.path.join(vol, "d/maker"))
    with open(os.path.join(vol, "d/maker"), "w") as f:
        f.write("M")
    assert open(os.path.join(vol, "d/made-by-link")).read() == "M"
    long_target = "x/" * 1000 + "y"
    os.symlink(long_target, os.path.join(vol, "long"))
    assert os.readlink(os.path.join(vol, "long")) == long_target


def test_rename_files_and_directories(vol):
    j = lambda *p: os.path.join(vol, *p)  # noqa: E731
    os.makedirs(j("a/sub"))
    os.mkdir(j("b"))
    for name, text in (("a/f", "F"), ("b/g", "G")):
        with open(j(name), "w") as f:
            f.write(text)

    os.rename(j("a/f"), j("a/f2"))  # plain, same directory
    assert open(j("a/f2")).read() == "F" and not os.path.exists(j("a/f"))
    ino = os.stat(j("a/f2")).st_ino
    os.rename(j("a/f2"), j("b/g"))  # over an existing file, across directories
    assert open(j("b/g")).read() == "F" and os.stat(j("b/g")).st_ino == ino
    assert os.listdir(j("a")) == ["sub"]

    os.mkdir(j("empty"))
    os.rename(j("a/sub"), j("empty"))  # over an empty directory
    assert not os.path.exists(j("a/sub")) and os.path.isdir(j("empty"))
    assert os.stat(j("a")).st_nlink == 2

    os.makedirs(j("full/x"))
    with pytest.raises(OSError) as info:
        os.rename(j("empty"), j("full"))
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as info:
        os.rename(j("full"), j("full/x/inside"))  # into its own subtree
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        os.rename(j("b/g"), j("full"))  # a file over a directory
    assert info.value.errno == errno.EISDIR
    with pytest.raises(OSError) as info:
        os.rename(j("full"), j("b/g"))  # a directory over a file
    assert info.value.errno == errno.ENOTDIR

    # Moving a directory updates its '..' and both parents' link counts.
    os.rename(j("full/x"), j("a/x"))
    assert os.stat(j("full")).st_nlink == 2 and os.stat(j("a")).st_nlink == 3
    assert os.path.samestat(os.stat(j("a/x/..")), os.stat(j("a")))
    # Over a file that is open: the reader keeps the old content.
    with open(j("b/old"), "w") as f:
        f.write("old" * 100_000)
    with open(j("b/old"), "rb") as reader:
        os.rename(j("b/g"), j("b/old"))
        assert reader.read() == b"old" * 100_000 and os.fstat(reader.fileno()).st_nlink == 0
    assert open(j("b/old")).read() == "F"
    # Two names of one inode: rename does nothing.
    os.link(j("b/old"), j("b/h"))
    os.rename(j("b/old"), j("b/h"))
    assert sorted(os.listdir(j("b"))) == ["h", "old"]


def test_renameat2_noreplace_and_exchange(mounts):
    mp = mounts.mount("vol")
    j = lambda *p: os.path.join(mp, *p)  # noqa: E731
    os.makedirs(j("p1/d1/inner"))
    os.makedirs(j("p2/d2"))
    for name, text in (("p1/f1", "one"), ("p2/f2", "two")):
        with open(j(name), "w") as f:
            f.write(text)

    with pytest.raises(OSError) as info:
        renameat2(j("p1/f1"), j("p2/f2"), RENAME_NOREPLACE)
    assert info.value.errno == errno.EEXIST
    assert open(j("p1/f1")).read() == "one"
    renameat2(j("p1/f1"), j("p2/new"), RENAME_NOREPLACE)
    assert open(j("p2/new")).read() == "one"
    os.rename(j("p2/new"), j("p1/f1"))

    with pytest.raises(OSError) as info:
        renameat2(j("p1/f1"), j("p2/missing"), RENAME_EXCHANGE)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(OSError) as info:
        renameat2(j("p1/f1"), j("p2/f2"), RENAME_EXCHANGE | RENAME_NOREPLACE)
    assert info.value.errno == errno.EINVAL

    # Two files across directories.
    i1, i2 = os.stat(j("p1/f1")).st_ino, os.stat(j("p2/f2")).st_ino
    renameat2(j("p1/f1"), j("p2/f2"), RENAME_EXCHANGE)
    assert open(j("p1/f1")).read() == "two" and open(j("p2/f2")).read() == "one"
    assert os.stat(j("p1/f1")).st_ino == i2 and os.stat(j("p2/f2")).st_ino == i1

    # Two directories across directories: each one's '..' follows it.
    renameat2(j("p1/d1"), j("p2/d2"), RENAME_EXCHANGE)
    assert os.listdir(j("p2/d2")) == ["inner"] and os.listdir(j("p1/d1")) == []
    assert os.path.samestat(os.stat(j("p2/d2/..")), os.stat(j("p2")))
    assert os.path.samestat(os.stat(j("p1/d1/..")), os.stat(j("p1")))
    assert os.path.samestat(os.stat(j("p2/d2/inner/../..")), os.stat(j("p2")))
    assert os.stat(j("p1")).st_nlink == 3 and os.stat(j("p2")).st_nlink == 3

    # A directory with a file: the parents' link counts move with the directory.
    renameat2(j("p2/d2"), j("p1/f1"), RENAME_EXCHANGE)
    assert os.path.isdir(j("p1/f1")) and os.path.isfile(j("p2/d2"))
    assert os.stat(j("p1")).st_nlink == 4 and os.stat(j("p2")).st_nlink == 2
    assert os.path.samestat(os.stat(j("p1/f1/..")), os.stat(j("p1")))
    assert open(j("p2/d2")).read() == "two"

    # Exchanging a directory with one of its own descendants is refused.
    with pytest.raises(OSError) as info:
        renameat2(j("p1/f1"), j("p1/f1/inner"), RENAME_EXCHANGE)
    assert info.value.errno == errno.EINVAL

    expected = {p: os.stat(j(p)).st_nlink for p in ("p1", "p2", "p1/f1", "p1/d1")}
    mounts.umount(mp)
    mp = mounts.mount("vol")
    assert {p: os.stat(os.path.join(mp, p)).st_nlink for p in expected} == expected
    assert os.listdir(os.path.join(mp, "p1/f1")) == ["inner"]
    assert open(os.path.join(mp, "p2/d2")).read() == "two"
    assert os.path.samestat(os.stat(os.path.join(mp, "p1/f1/inner/..")),
                            os.stat(os.path.join(mp, "p1/f1")))
