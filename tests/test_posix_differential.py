"""POSIX behaviour compared with ext4: each case runs on a plain directory of the host's
disk and on a mounted volume, as root and as unprivileged users, and every outcome
(value or errno) and the tree left behind must be the same (see posix_oracle.py for
what is left out of the comparison, and why).

Differences kept on purpose, so not tested here: fusevol keeps times to 64-bit
seconds where ext4 stops at 2446 (test_posix_attrs.py tests fusevol's side); a
file may grow past ext4's 16 TiB; xattr values may reach 64 KiB where ext4 takes
what fits a block; atime is not kept (noatime).
"""

import errno
import itertools
import os
import shutil
import stat
import struct

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from hypothesis.strategies import binary, integers, sampled_from

from conftest import HAVE_FUSE, Mounts, needs_fuse
from fusevol.store import Store
from posix_oracle import (OTHER, USER, UTIME_NOW, UTIME_OMIT, describe_stat, describe_tree,
                          differences, getdents, identity, outcome, renameat2, run_case,
                          tree_differences, utimensat)

pytestmark = needs_fuse

OLD_NS = 1_000_000_000 * 10**9 + 123  # 2001, with nanoseconds
OLDER_NS = 900_000_000 * 10**9 + 456_789
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20


def posix_acl(entries) -> bytes:
    """The xattr form of an access ACL: version 2, then (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid & 0xFFFFFFFF)
                                           for tag, perm, uid in entries)


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """One mounted volume for the module (a mount costs seconds) and a plain folder on
    the host's disk beside it."""
    if not HAVE_FUSE:
        pytest.skip("real FUSE mounts need root, /dev/fuse and fusermount3 (fuse3)")
    base = tmp_path_factory.mktemp("differential")
    mounts = Mounts(str(base / "store"), str(base / "mnt"))
    (base / "ext4").mkdir()
    try:
        yield str(base / "ext4"), mounts.mount("vol")
    finally:
        mounts.cleanup()
        store = Store._instances.pop(mounts.store_path, None)
        if store is not None:
            store.close()


@pytest.fixture
def roots(places, request):
    """make(name): a fresh folder on ext4 and one on the volume, made the same way."""
    def make(name: str) -> tuple[str, str]:
        name = f"{request.node.name}-{name}".replace("/", "_")
        pair = (os.path.join(places[0], name), os.path.join(places[1], name))
        for path in pair:
            os.makedirs(path)
            os.chmod(path, 0o755)
        return pair

    return make


# Steps where fusevol differs from ext4 by design: label -> what fusevol answers.
KNOWN_DIFFERENCES = {
    # pyfuse3 has no tmpfile operation; EOPNOTSUPP is the answer open(2) documents
    # for a filesystem without O_TMPFILE, and programs fall back on it.
    "tmpfile": ("err", "ENOTSUP"),
    # POSIX ACLs are not kept: the kernel checks modes (README, "Not supported").
    "acl with a named user": ("err", "ENOTSUP"),
}


def compare(roots, case):
    oracle_root, volume_root = roots(case.__name__)
    oracle = run_case(case, oracle_root)
    volume = run_case(case, volume_root)
    crashed = [s for s in oracle["steps"] + volume["steps"] if s[1][0] == "crash"]
    assert not crashed, crashed[0][1][1]
    for label, result in volume["steps"]:
        if label in KNOWN_DIFFERENCES:
            assert result == KNOWN_DIFFERENCES[label], label
    for run in (oracle, volume):
        run["steps"] = [s for s in run["steps"] if s[0] not in KNOWN_DIFFERENCES]
    diff = differences(oracle, volume)
    assert not diff, "fusevol differs from ext4:\n" + "\n".join(diff)
    return oracle


def write(path: str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
          mode: int = 0o644) -> int:
    fd = os.open(path, flags, mode)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def read(path: str, flags: int = os.O_RDONLY) -> bytes:
    fd = os.open(path, flags)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def open_close(path: str, flags: int, mode: int = 0o644) -> None:
    os.close(os.open(path, flags, mode))


def lstat(path: str):
    return describe_stat(os.lstat(path))


# -- the cases ----------------------------------------------------------------------

def case_open_flags(p):
    write("f", b"hello")
    os.mkdir("d")
    os.symlink("f", "link")
    os.symlink("missing", "dangling")
    p.do("excl on new", open_close, "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    p.do("excl on existing", open_close, "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    p.do("excl on a symlink", open_close, "link", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    p.do("excl on a dangling symlink", open_close, "dangling", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    p.do("creat through a dangling symlink", open_close, "dangling", os.O_WRONLY | os.O_CREAT)
    p.do("it made the target", lstat, "missing")
    p.do("no creat, missing", open_close, "nothing", os.O_RDONLY)
    p.do("trunc", write, "f", b"", os.O_WRONLY | os.O_TRUNC)
    p.do("after trunc", read, "f")
    write("f", b"0123456789")
    p.do("read-only trunc", open_close, "f", os.O_RDONLY | os.O_TRUNC)
    p.do("after read-only trunc", read, "f")
    write("f", b"0123456789")
    fd = os.open("f", os.O_WRONLY | os.O_APPEND)
    p.do("append at 0", os.pwrite, fd, b"AB", 0)  # O_APPEND wins over the offset
    os.lseek(fd, 0, os.SEEK_SET)
    p.do("append after seek", os.write, fd, b"CD")
    os.close(fd)
    p.do("after appends", read, "f")
    p.do("directory flag on a file", open_close, "f", os.O_RDONLY | os.O_DIRECTORY)
    p.do("directory flag on a dir", open_close, "d", os.O_RDONLY | os.O_DIRECTORY)
    p.do("directory flag, creat", open_close, "x", os.O_RDONLY | os.O_DIRECTORY | os.O_CREAT)
    p.do("write a dir", open_close, "d", os.O_WRONLY)
    p.do("creat on a dir", open_close, "d", os.O_WRONLY | os.O_CREAT)
    p.do("nofollow on a symlink", open_close, "link", os.O_RDONLY | os.O_NOFOLLOW)
    p.do("nofollow on a file", open_close, "f", os.O_RDONLY | os.O_NOFOLLOW)
    p.do("nofollow|path on a symlink", open_close, "link", os.O_PATH | os.O_NOFOLLOW)
    p.do("trailing slash on a file", open_close, "f/", os.O_RDONLY)
    p.do("trailing slash, creat", open_close, "g/", os.O_WRONLY | os.O_CREAT)
    p.do("file as a folder", open_close, "f/x", os.O_RDONLY)
    p.do("rdwr|creat of existing keeps it", read, "f", os.O_RDWR | os.O_CREAT)
    p.do("creat with odd mode bits", open_close, "odd", os.O_WRONLY | os.O_CREAT, 0o7777)
    p.do("tmpfile", lambda: os.close(os.open(".", os.O_TMPFILE | os.O_RDWR, 0o600)))


def case_modes_under_umask(p):
    for mask in (0o022, 0o077, 0o027, 0):
        os.umask(mask)
        d = f"u{mask:03o}"
        p.do(f"{d} mkdir", os.mkdir, d, 0o777)
        p.do(f"{d} file", open_close, f"{d}/f", os.O_WRONLY | os.O_CREAT, 0o666)
        p.do(f"{d} exec file", open_close, f"{d}/x", os.O_WRONLY | os.O_CREAT, 0o777)
        p.do(f"{d} fifo", os.mkfifo, f"{d}/p", 0o666)
        p.do(f"{d} sub", os.mkdir, f"{d}/s", 0o1777)
        p.do(f"{d} symlink", os.symlink, "f", f"{d}/l")
    os.umask(0o022)
    os.mkdir("sg")
    os.chown("sg", 0, USER)
    os.chmod("sg", 0o2775)
    p.do("setgid dir: file", open_close, "sg/f", os.O_WRONLY | os.O_CREAT, 0o644)
    p.do("setgid dir: dir", os.mkdir, "sg/d", 0o755)
    with p.as_user():
        p.do("setgid dir: file by user", open_close, "sg/uf", os.O_WRONLY | os.O_CREAT, 0o2755)
    p.do("mknod regular", os.mknod, "reg", 0o640 | stat.S_IFREG)
    p.do("mknod char device", os.mknod, "chr", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    p.do("mknod socket", os.mknod, "sock", 0o600 | stat.S_IFSOCK)


def case_chmod_chown(p):
    write("root-file", b"r")
    write("user-file", b"u")
    os.chown("user-file", USER, USER)
    os.mkdir("d")
    os.chmod("d", 0o777)
    with p.as_user():
        p.do("user chmods own", os.chmod, "user-file", 0o600)
        p.do("user chmods root's", os.chmod, "root-file", 0o666)
        p.do("user chowns own to other", os.chown, "user-file", OTHER, -1)
        p.do("user chowns own to self", os.chown, "user-file", USER, USER)
        p.do("user chgrps own to a group not theirs", os.chown, "user-file", -1, 0)
        p.do("user chgrps root's", os.chown, "root-file", -1, USER)
        p.do("user sets setgid of a file of another group", os.chmod, "user-file", 0o2755)
        p.do("user makes a file", write, "d/mine", b"x", mode=0o4755)
        p.do("user sets setuid", os.chmod, "d/mine", 0o6755)
        p.do("user lchowns a symlink", lambda: (os.symlink("x", "d/l"), os.lchown("d/l", USER, USER)))
    p.do("root chowns to other", os.chown, "user-file", OTHER, OTHER)
    p.do("root chmods", os.chmod, "user-file", 0o6755)
    p.do("root chowns: setuid kept?", os.chown, "user-file", USER, -1)
    p.do("after root chown", lstat, "user-file")
    os.chmod("user-file", 0o6777)
    with p.as_user(OTHER):
        p.do("other writes a setuid file", write, "user-file", b"changed", os.O_WRONLY)
    p.do("after other's write", lstat, "user-file")
    os.chmod("user-file", 0o6777)
    with p.as_user(OTHER):
        p.do("other truncates a setuid file", os.truncate, "user-file", 2)
    p.do("after other's truncate", lstat, "user-file")
    p.do("lchown a symlink", lambda: (os.symlink("root-file", "l"), os.lchown("l", OTHER, OTHER)))
    p.do("the target kept its owner", lstat, "root-file")
    p.do("chmod through a symlink", os.chmod, "l", 0o640)
    p.do("chown -1 -1", os.chown, "root-file", -1, -1)


def case_permissions(p):
    os.mkdir("closed")
    write("closed/f", b"x")
    os.chmod("closed", 0o700)
    os.mkdir("readonly")
    write("readonly/f", b"x")
    os.chmod("readonly", 0o755)
    os.mkdir("listonly")
    write("listonly/f", b"x")
    os.chmod("listonly", 0o744)
    os.mkdir("writeonly")
    os.chmod("writeonly", 0o733)
    write("secret", b"s", mode=0o600)
    write("public", b"p", mode=0o666)
    os.chmod("public", 0o666)
    write("mine", b"m")
    os.chown("mine", USER, USER)
    os.chmod("mine", 0o000)
    with p.as_user():
        p.do("stat in a closed dir", os.stat, "closed/f")
        p.do("list a closed dir", os.listdir, "closed")
        p.do("create in a read-only dir", write, "readonly/g", b"")
        p.do("unlink in a read-only dir", os.unlink, "readonly/f")
        p.do("rename in a read-only dir", os.rename, "readonly/f", "readonly/g")
        p.do("list a list-only dir", sorted, os.listdir("listonly"))
        p.do("stat in a list-only dir", os.stat, "listonly/f")
        p.do("create in a write-only dir", write, "writeonly/g", b"w")
        p.do("list a write-only dir", os.listdir, "writeonly")
        p.do("read a secret", read, "secret")
        p.do("write a public file", write, "public", b"P", os.O_WRONLY)
        p.do("read own file of mode 0", read, "mine")
        p.do("chmod own file of mode 0", os.chmod, "mine", 0o400)
        p.do("read it now", read, "mine")
        p.do("access W_OK", os.access, "mine", os.W_OK)
        p.do("access R_OK", os.access, "mine", os.R_OK)
        p.do("mkdir in root's dir", os.mkdir, "mydir")
        p.do("link to root's file", os.link, "secret", "writeonly/hard")
    p.do("root reads mode 0", lambda: (os.chmod("mine", 0), read("mine"))[1])
    p.do("root writes mode 0", write, "mine", b"root", os.O_WRONLY)


def case_sticky_directory(p):
    os.mkdir("tmp")
    os.chmod("tmp", 0o1777)
    with p.as_user():
        write("tmp/users", b"u")
        os.mkdir("tmp/usersdir")
    with p.as_user(OTHER):
        write("tmp/others", b"o")
        p.do("other unlinks user's", os.unlink, "tmp/users")
        p.do("other renames user's", os.rename, "tmp/users", "tmp/taken")
        p.do("other replaces user's", os.rename, "tmp/others", "tmp/users")
        p.do("other rmdirs user's", os.rmdir, "tmp/usersdir")
        p.do("other renames own", os.rename, "tmp/others", "tmp/others2")
        p.do("other writes user's", write, "tmp/users", b"x", os.O_WRONLY)
        p.do("other exchanges with user's", renameat2, "tmp/others2", "tmp/users", RENAME_EXCHANGE)
    with p.as_user():
        p.do("user unlinks own", os.unlink, "tmp/users")
        p.do("user unlinks other's", os.unlink, "tmp/others2")
    p.do("root unlinks other's", os.unlink, "tmp/others2")


def case_links_and_renames(p):
    for d in ("a", "b", "a/sub", "full"):
        os.mkdir(d)
    write("a/f", b"file f")
    write("b/g", b"file g")
    write("full/x", b"")
    p.do("link across folders", os.link, "a/f", "b/f2")
    p.do("link onto existing", os.link, "a/f", "b/g")
    p.do("link a dir", os.link, "a", "b/a2")
    p.do("link missing", os.link, "a/none", "b/none")
    p.do("nlink", lstat, "a/f")
    p.do("rename across folders", os.rename, "a/f", "b/h")
    p.do("rename onto a hardlink of itself", os.rename, "b/h", "b/f2")
    p.do("both names stay", lambda: sorted(os.listdir("b")))
    p.do("rename dir into itself", os.rename, "a", "a/sub/inner")
    p.do("rename dir onto non-empty dir", os.rename, "a", "full")
    p.do("rename dir onto a file", os.rename, "a", "b/g")
    p.do("rename file onto a dir", os.rename, "b/g", "a")
    p.do("rename file onto an empty dir", os.rename, "b/g", "a/sub")
    p.do("rename dir onto an empty dir", os.rename, "full", "a/sub")
    p.do("dir link counts", lambda: [os.lstat(x).st_nlink for x in (".", "a", "b")])
    p.do("rename to itself", os.rename, "b/g", "b/g")
    p.do("rename missing", os.rename, "b/none", "b/other")
    p.do("rename into a missing dir", os.rename, "b/g", "none/g")
    p.do("rename dot", os.rename, "a/.", "b/dot")
    p.do("rename onto dotdot", os.rename, "b/g", "a/..")
    p.do("unlink a dir", os.unlink, "a")
    p.do("rmdir a file", os.rmdir, "b/g")
    p.do("rmdir non-empty", os.rmdir, "a")
    p.do("rmdir dot", os.rmdir, "a/sub/.")
    p.do("rmdir dotdot", os.rmdir, "a/sub/..")
    p.do("noreplace onto existing", renameat2, "b/g", "b/h", RENAME_NOREPLACE)
    p.do("noreplace onto new", renameat2, "b/g", "a/g", RENAME_NOREPLACE)
    p.do("exchange file and dir across", renameat2, "a/g", "full", RENAME_EXCHANGE)
    p.do("exchange with missing", renameat2, "a/full", "b/none", RENAME_EXCHANGE)
    p.do("exchange dir into its own child", renameat2, "a", "a/g/x", RENAME_EXCHANGE)
    p.do("both flags", renameat2, "b/h", "b/z", RENAME_EXCHANGE | RENAME_NOREPLACE)
    p.do("unknown flag", renameat2, "b/h", "b/z", 8)
    p.do("exchange a dir with a child of itself", renameat2, "a", "a/full", RENAME_EXCHANGE)
    p.do("dir link counts after", lambda: [os.lstat(x).st_nlink for x in (".", "a", "b")])
    with p.as_user():
        p.do("user renames root's dir", os.rename, "a", "moved")


def case_renames_as_user(p):
    os.mkdir("shared")
    os.chmod("shared", 0o777)
    os.mkdir("shared/rootsdir")
    os.chmod("shared/rootsdir", 0o755)
    os.mkdir("shared/other")
    os.chmod("shared/other", 0o777)
    write("shared/rootsfile", b"r")
    with p.as_user():
        p.do("move root's dir to another parent", os.rename, "shared/rootsdir", "shared/other/d")
        p.do("rename root's dir in place", os.rename, "shared/rootsdir", "shared/renamed")
        p.do("move root's file", os.rename, "shared/rootsfile", "shared/other/f")
        p.do("hardlink root's file", os.link, "shared/other/f", "shared/hard")
        os.mkdir("shared/mine")
        p.do("move own dir", os.rename, "shared/mine", "shared/other/mine")


def case_symlinks(p):
    os.symlink("loop2", "loop1")
    os.symlink("loop1", "loop2")
    os.symlink("self", "self")
    os.mkdir("d")
    write("d/f", b"through a link")
    os.symlink("d", "dlink")
    for i in range(41):
        os.symlink(f"chain{i + 1}" if i < 40 else "d/f", f"chain{i}")
    p.do("open a loop", read, "loop1")
    p.do("stat a loop", os.stat, "loop1")
    p.do("lstat a loop", lstat, "loop1")
    p.do("open self", read, "self")
    p.do("path through a loop", os.stat, "self/x")
    p.do("chain of 40", read, "chain1")
    p.do("chain of 41", read, "chain0")
    p.do("through a dir link", read, "dlink/f")
    p.do("dir link with trailing slash", lstat, "dlink/")
    p.do("unlink a dir link", os.unlink, "dlink")
    p.do("readlink a file", os.readlink, "d/f")
    p.do("empty target", os.symlink, "", "empty")
    p.do("target of 4095", lambda: (os.symlink("t" * 4095, "long4095"), os.readlink("long4095"))[1])
    p.do("target of 4096", os.symlink, "t" * 4096, "long4096")
    p.do("mkdir through a dangling link", lambda: (os.symlink("nowhere", "dang"), os.mkdir("dang")))
    p.do("rename a symlink", os.rename, "loop1", "d/loop1")
    p.do("hardlink a symlink", os.link, "self", "d/self2", follow_symlinks=False)
    p.do("hardlink through a symlink", os.link, "chain1", "d/hard", follow_symlinks=True)
    p.do("readlink of renamed", os.readlink, "d/loop1")


def case_name_lengths(p):
    n255, n256 = "n" * 255, "n" * 256
    p.do("file 255", write, n255, b"x")
    p.do("file 256", write, n256, b"x")
    p.do("dir 255", os.mkdir, "d" * 255)
    p.do("dir 256", os.mkdir, "d" * 256)
    p.do("symlink 255", os.symlink, "t", "s" * 255)
    p.do("symlink 256", os.symlink, "t", "s" * 256)
    p.do("fifo 256", os.mkfifo, "p" * 256)
    p.do("link to 256", os.link, n255, n256)
    p.do("rename to 256", os.rename, n255, n256)
    p.do("rename from 256", os.rename, n256, "x")
    for name, fn in (("stat", os.stat), ("lstat", os.lstat), ("unlink", os.unlink),
                     ("rmdir", os.rmdir), ("readlink", os.readlink)):
        p.do(f"{name} 256", fn, n256)
    p.do("chmod 256", os.chmod, n256, 0o600)
    p.do("chown 256", os.chown, n256, 1, 1)
    p.do("lchown 256", os.lchown, n256, 1, 1)
    p.do("truncate 256", os.truncate, n256, 0)
    p.do("utime 256", os.utime, n256)
    p.do("getxattr 256", os.getxattr, n256, "user.x")
    p.do("below 256", os.stat, n256 + "/f")
    p.do("odd bytes", write, b"\xff\xfe new\nline\t\x01".decode("latin-1"), b"odd")
    p.do("utf-8 of 255 bytes", write, "é" * 127 + "x", b"u")
    p.do("utf-8 of 256 bytes", write, "é" * 128, b"u")
    p.do("listing", lambda: sorted(os.listdir(".")))


def case_paths_near_path_max(p):
    # A chain of folders whose relative path reaches PATH_MAX (4096 with its NUL).
    part = "p" * 200
    depth = 20
    path = "/".join([part] * depth)  # 4019 bytes
    os.makedirs(path)
    tail_4095 = path + "/" + "f" * (4095 - len(path) - 1)
    p.do("path of 4095 bytes", write, tail_4095, b"deep")
    p.do("read it", read, tail_4095)
    p.do("path of 4096 bytes", write, tail_4095 + "g", b"x")
    p.do("stat of 4096 bytes", os.stat, tail_4095 + "g")
    p.do("./ prefixes within PATH_MAX", lstat, "./" * 20 + path)
    p.do("./ prefixes past PATH_MAX", lstat, "./" * 40 + path)
    p.do("dotdot walk", lambda: lstat("/".join([part] * 3 + [".."] * 3 + [part])))
    p.do("remove it all", shutil.rmtree, part)  # deeper than a path can name from here


def case_truncate(p):
    write("f", b"0123456789")
    os.mkdir("d")
    os.mkfifo("fifo")
    os.symlink("f", "l")
    p.do("grow", os.truncate, "f", 20)
    p.do("after grow", read, "f")
    p.do("shrink", os.truncate, "f", 4)
    p.do("grow again", os.truncate, "f", 8)
    p.do("after shrink and grow", read, "f")
    p.do("through a symlink", os.truncate, "l", 3)
    p.do("negative", os.truncate, "f", -1)
    p.do("a dir", os.truncate, "d", 0)
    p.do("a fifo", os.truncate, "fifo", 0)
    p.do("missing", os.truncate, "none", 0)
    p.do("big and sparse", os.truncate, "f", 1 << 40)
    p.do("size", lambda: os.stat("f").st_size)
    p.do("back to 3", os.truncate, "f", 3)
    fd = os.open("f", os.O_RDONLY)
    p.do("ftruncate read-only fd", os.ftruncate, fd, 0)
    os.close(fd)
    fd = os.open("f", os.O_RDWR)
    os.pwrite(fd, b"abcdef", 0)
    p.do("ftruncate in the middle of buffered data", os.ftruncate, fd, 2)
    os.pwrite(fd, b"Z", 4)
    os.close(fd)
    p.do("after ftruncate and write past the end", read, "f")
    os.chmod("f", 0o644)
    with p.as_user():
        p.do("user truncates root's file", os.truncate, "f", 0)
    os.chmod("f", 0o666)
    with p.as_user():
        p.do("user truncates a writable file", os.truncate, "f", 1)


def case_utimensat(p):
    write("f", b"x")
    os.chmod("f", 0o666)
    write("own", b"x")
    os.chown("own", USER, USER)
    write("ro", b"x")
    os.symlink("f", "l")
    os.mkdir("d")

    def times(path, follow=True):
        st = os.stat(path) if follow else os.lstat(path)
        return (st.st_atime_ns if st.st_atime_ns < 1_500_000_000 * 10**9 else "recent",
                st.st_mtime_ns if st.st_mtime_ns < 1_500_000_000 * 10**9 else "recent")

    p.do("set both", utimensat, "f", OLD_NS, OLDER_NS)
    p.record("after set both", times("f"))
    p.do("omit atime", utimensat, "f", UTIME_OMIT, OLD_NS)
    p.record("after omit atime", times("f"))
    p.do("now atime, omit mtime", utimensat, "f", UTIME_NOW, UTIME_OMIT)
    p.record("after now atime", times("f"))
    utimensat("f", OLD_NS, OLD_NS)
    p.do("omit both", utimensat, "f", UTIME_OMIT, UTIME_OMIT)
    p.record("after omit both", times("f"))
    p.do("null: both now", utimensat, "f", None, None)
    p.record("after null", times("f"))
    p.do("symlink itself", utimensat, "l", OLDER_NS, OLDER_NS, follow=False)
    p.record("symlink times", times("l", follow=False))
    p.record("its target untouched", times("f"))
    p.do("a dir", utimensat, "d", OLD_NS, OLD_NS)
    p.record("dir times", times("d"))
    p.do("nanoseconds out of range", utimensat, "f", 5, 10**9 + 1)
    p.do("before 1970", utimensat, "f", -(10**9) * 86400 + 7, -1)
    p.record("before 1970 kept", [os.stat("f").st_atime_ns, os.stat("f").st_mtime_ns])
    p.do("in 2200", utimensat, "f", 7_258_118_400 * 10**9, 7_258_118_400 * 10**9 + 5)
    p.record("2200 kept", [os.stat("f").st_atime_ns, os.stat("f").st_mtime_ns])
    p.do("in 2400", utimensat, "f", 13_569_465_600 * 10**9 + 9, 13_569_465_600 * 10**9)
    p.record("2400 kept", [os.stat("f").st_atime_ns, os.stat("f").st_mtime_ns])
    utimensat("f", OLD_NS, OLD_NS)
    utimensat("ro", OLD_NS, OLD_NS)
    with p.as_user():
        p.do("user: now on a writable file", utimensat, "f", None, None)
        p.do("user: UTIME_NOW both on a writable file", utimensat, "f", UTIME_NOW, UTIME_NOW)
        p.do("user: explicit on a writable file", utimensat, "f", OLD_NS, OLD_NS)
        p.do("user: now on a read-only file", utimensat, "ro", None, None)
        p.do("user: now and omit on a writable file", utimensat, "f", UTIME_NOW, UTIME_OMIT)
        p.do("user: explicit on own file", utimensat, "own", OLDER_NS, OLDER_NS)
        p.do("user: omit both on another's file", utimensat, "ro", UTIME_OMIT, UTIME_OMIT)
    p.record("own after", times("own"))
    p.record("ro after", times("ro"))


def case_xattrs(p):
    write("f", b"x")
    os.mkdir("d")
    os.symlink("f", "l")
    os.mkfifo("fifo")
    p.do("set", os.setxattr, "f", "user.a", b"1")
    p.do("get", os.getxattr, "f", "user.a")
    p.do("create existing", os.setxattr, "f", "user.a", b"2", os.XATTR_CREATE)
    p.do("replace missing", os.setxattr, "f", "user.b", b"2", os.XATTR_REPLACE)
    p.do("replace", os.setxattr, "f", "user.a", b"3", os.XATTR_REPLACE)
    p.do("empty value", os.setxattr, "f", "user.empty", b"")
    p.do("get empty", os.getxattr, "f", "user.empty")
    p.do("get missing", os.getxattr, "f", "user.none")
    p.do("remove missing", os.removexattr, "f", "user.none")
    p.do("name of 255", os.setxattr, "f", "user." + "x" * 250, b"v")
    p.do("name of 256", os.setxattr, "f", "user." + "x" * 251, b"v")
    p.do("value of 3000", os.setxattr, "f", "user.big", b"v" * 3000)
    p.do("value over 64 KiB", os.setxattr, "f", "user.huge", b"v" * 65537)
    p.do("list", lambda: sorted(os.listxattr("f")))
    p.do("remove", os.removexattr, "f", "user.a")
    p.do("list after remove", lambda: sorted(os.listxattr("f")))
    p.do("on a dir", os.setxattr, "d", "user.d", b"dir")
    p.do("on a symlink itself", os.setxattr, "l", "user.l", b"l", follow_symlinks=False)
    p.do("through a symlink", os.setxattr, "l", "user.t", b"t")
    p.do("on a fifo", os.setxattr, "fifo", "user.p", b"p")
    p.do("no namespace", os.setxattr, "f", "plain", b"p")
    p.do("unknown namespace", os.setxattr, "f", "nosuch.x", b"p")
    p.do("get unknown namespace", os.getxattr, "f", "nosuch.x")
    p.do("remove unknown namespace", os.removexattr, "f", "nosuch.x")
    p.do("other system name", os.setxattr, "f", "system.other", b"p")
    p.do("empty user name", os.setxattr, "f", "user.", b"p")
    p.do("get acl", os.getxattr, "f", "system.posix_acl_access")
    p.do("acl equal to the mode (setfacl -b)", os.setxattr, "f", "system.posix_acl_access",
         posix_acl([(ACL_USER_OBJ, 6, -1), (ACL_GROUP_OBJ, 4, -1), (ACL_OTHER, 0, -1)]))
    write("scratch", b"")
    p.do("acl with a named user", os.setxattr, "scratch", "system.posix_acl_access",
         posix_acl([(ACL_USER_OBJ, 6, -1), (ACL_USER, 4, USER), (ACL_GROUP_OBJ, 4, -1),
                    (ACL_MASK, 4, -1), (ACL_OTHER, 0, -1)]))
    os.unlink("scratch")  # its mode follows the ACL's mask on ext4
    p.do("mode after the acl", lstat, "f")
    p.do("trusted by root", os.setxattr, "f", "trusted.t", b"t")
    p.do("get trusted", os.getxattr, "f", "trusted.t")
    os.chmod("f", 0o644)
    with p.as_user():
        p.do("user reads another's", os.getxattr, "f", "user.t")
        p.do("user sets on another's", os.setxattr, "f", "user.u", b"u")
        p.do("user lists", lambda: sorted(os.listxattr("f")))
        p.do("user reads trusted", os.getxattr, "f", "trusted.t")
        p.do("user sets trusted", os.setxattr, "d", "trusted.u", b"u")
    os.chmod("f", 0o600)
    with p.as_user():
        p.do("user reads a closed file's", os.getxattr, "f", "user.t")
    os.removexattr("f", "trusted.t")


def case_fifos_and_specials(p):
    p.do("mkfifo", os.mkfifo, "p", 0o640)
    p.do("again", os.mkfifo, "p")
    p.do("kind", lstat, "p")
    p.do("open read non-blocking", open_close, "p", os.O_RDONLY | os.O_NONBLOCK)
    p.do("open write non-blocking", open_close, "p", os.O_WRONLY | os.O_NONBLOCK)
    rd = os.open("p", os.O_RDONLY | os.O_NONBLOCK)
    wr = os.open("p", os.O_WRONLY | os.O_NONBLOCK)
    p.do("through the pipe", lambda: (os.write(wr, b"piped"), os.read(rd, 10))[1])
    os.close(wr)
    os.close(rd)
    p.do("rename a fifo", os.rename, "p", "q")
    p.do("link a fifo", os.link, "q", "q2")
    p.do("mkfifo in a missing dir", os.mkfifo, "none/p")


def case_readdir_listings(p):
    os.mkdir("empty")
    os.makedirs("a/b/c")
    for i in range(150):
        write(f"a/f{i:03d}", b"")
    os.symlink("x", "a/l")
    os.mkfifo("a/p")

    def counted(path):
        entries = getdents(path)
        dots = sorted(name for name, _, _ in entries if name in (b".", b".."))
        return len(entries), dots, sorted(set(t for _, _, t in entries))

    p.do("empty", counted, "empty")
    p.do("full", counted, "a")
    p.do("deep", counted, "a/b/c")
    p.do("root of the case", counted, ".")
    p.do("dot inode is the dir's",
         lambda: {n: i for n, i, _ in getdents("a/b")}.get(b".") == os.stat("a/b").st_ino)
    p.do("dotdot inode is the parent's",
         lambda: {n: i for n, i, _ in getdents("a/b")}.get(b"..") == os.stat("a").st_ino)
    fd = os.open("a", os.O_RDONLY | os.O_DIRECTORY)
    os.rename("a", "moved")
    p.do("listing through an fd after a rename", lambda: len(os.listdir(fd)))
    os.close(fd)
    fd = os.open("empty", os.O_RDONLY | os.O_DIRECTORY)
    os.rmdir("empty")
    p.do("listing a removed dir", os.listdir, fd)
    p.do("fstat of a removed dir", lambda: os.fstat(fd).st_nlink)
    os.close(fd)


def case_open_after_unlink_and_rename(p):
    write("f", b"0123456789")
    os.mkdir("d")
    fd = os.open("f", os.O_RDWR)
    p.do("unlink while open", os.unlink, "f")
    p.do("fstat after unlink", lambda: describe_stat(os.fstat(fd)))
    p.do("write after unlink", os.pwrite, fd, b"abc", 8)
    p.do("read after unlink", os.pread, fd, 100, 0)
    p.do("ftruncate after unlink", os.ftruncate, fd, 4)
    p.do("fchmod after unlink", os.fchmod, fd, 0o600)
    p.do("fstat after all that", lambda: describe_stat(os.fstat(fd)))
    os.close(fd)
    write("g", b"g")
    fd = os.open("g", os.O_RDWR)
    p.do("rename while open", os.rename, "g", "d/g")
    p.do("write after rename", os.write, fd, b"G")
    os.close(fd)
    p.do("content after rename", read, "d/g")
    write("h", b"h")
    write("i", b"i")
    fd = os.open("h", os.O_RDONLY)
    p.do("replace an open file", os.rename, "i", "h")
    p.do("the open one keeps its data", os.pread, fd, 10, 0)
    p.do("fstat of the replaced", lambda: os.fstat(fd).st_nlink)
    os.close(fd)
    dfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY)
    p.do("fsync a directory", os.fsync, dfd)
    os.close(dfd)
    with p.as_user():
        p.do("user makes a device", os.mknod, "d/dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        p.do("user makes a fifo in root's dir", os.mkfifo, "d/fifo")
        p.do("user truncates on open without write", open_close, "h", os.O_RDONLY | os.O_TRUNC)


CASES = [case_open_after_unlink_and_rename, case_open_flags, case_modes_under_umask, case_chmod_chown, case_permissions,
         case_sticky_directory, case_links_and_renames, case_renames_as_user, case_symlinks,
         case_name_lengths, case_paths_near_path_max, case_truncate, case_utimensat,
         case_xattrs, case_fifos_and_specials, case_readdir_listings]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_same_as_ext4(roots, case):
    compare(roots, case)


def test_the_oracle_sees_a_difference(roots):
    """The comparison can fail: a case that behaves differently by where it runs."""
    def case_depends_on_the_place(p):
        p.do("place", os.path.ismount, "..")

    oracle_root, volume_root = roots("place")
    diff = differences(run_case(case_depends_on_the_place, oracle_root),
                       run_case(case_depends_on_the_place, volume_root))
    assert diff and "place" in diff[0]


# -- random sequences -----------------------------------------------------------------

# A small name space, so that sequences meet each other's files: every path may end
# up a file, a folder, a symlink or a fifo, or be missing, or lie below a non-folder.
PATHS = ["a", "b", "c", "a/a", "a/b", "b/c", "a/b/c"]
TARGETS = PATHS + ["../a", "nowhere", "b/..", "a/b/c/../../c"]
MODES = [0o644, 0o600, 0o755, 0o700, 0o000, 0o4755, 0o1777, 0o555]
LONG = os.environ.get("FUSEVOL_LONG") == "1"
NONBLOCK = os.O_NONBLOCK  # any path may be a fifo, whose open would wait for a partner


class SameAsExt4(RuleBasedStateMachine):
    """Random operations applied to a folder on ext4 and one on the volume; each
    outcome must match, and so must both trees after every step."""

    places: tuple[str, str] = ("", "")
    count = itertools.count()

    def __init__(self):
        super().__init__()
        name = f"seq-{os.getpid()}-{next(self.count)}"
        self.roots = [os.path.join(place, name) for place in self.places]
        for root in self.roots:
            os.mkdir(root)
            os.chmod(root, 0o755)
        self.umask = 0o022

    def both(self, label: str, fn, *args, user: int | None = None):
        """Run fn(*args) in each root (as cwd; paths are relative), as root or user."""
        results = []
        cwd = os.getcwd()
        old_umask = os.umask(self.umask)
        try:
            for root in self.roots:
                os.chdir(root)
                if user is None:
                    results.append(outcome(fn, *args))
                else:
                    with identity(user, user):
                        results.append(outcome(fn, *args))
        finally:
            os.chdir(cwd)
            os.umask(old_umask)
        ext4, volume = results
        assert ext4 == volume, f"{label}{args!r} as {user or 'root'}: ext4 {ext4!r}, fusevol {volume!r}"

    @rule(path=sampled_from(PATHS), data=binary(max_size=300), mode=sampled_from(MODES),
          user=sampled_from([None, USER]))
    def create(self, path, data, mode, user):
        self.both("create", write, path, data, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NONBLOCK,
                  mode, user=user)

    @rule(path=sampled_from(PATHS), offset=integers(0, 400), data=binary(min_size=1, max_size=200),
          user=sampled_from([None, USER]))
    def write_at(self, path, offset, data, user):
        def pwrite(path, offset, data):
            fd = os.open(path, os.O_WRONLY | NONBLOCK)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        self.both("pwrite", pwrite, path, offset, data, user=user)

    @rule(path=sampled_from(PATHS), data=binary(min_size=1, max_size=100))
    def append(self, path, data):
        self.both("append", write, path, data, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NONBLOCK)

    @rule(path=sampled_from(PATHS), size=integers(0, 500), user=sampled_from([None, USER]))
    def truncate(self, path, size, user):
        self.both("truncate", os.truncate, path, size, user=user)

    @rule(path=sampled_from(PATHS), user=sampled_from([None, USER]))
    def read(self, path, user):
        self.both("read", read, path, os.O_RDONLY | NONBLOCK, user=user)

    @rule(path=sampled_from(PATHS), mode=sampled_from(MODES), user=sampled_from([None, USER]))
    def mkdir(self, path, mode, user):
        self.both("mkdir", os.mkdir, path, mode, user=user)

    @rule(path=sampled_from(PATHS), user=sampled_from([None, USER]))
    def rmdir(self, path, user):
        self.both("rmdir", os.rmdir, path, user=user)

    @rule(path=sampled_from(PATHS), user=sampled_from([None, USER]))
    def unlink(self, path, user):
        self.both("unlink", os.unlink, path, user=user)

    @rule(src=sampled_from(PATHS), dst=sampled_from(PATHS),
          flags=sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]),
          user=sampled_from([None, None, USER]))
    def rename(self, src, dst, flags, user):
        self.both("rename", renameat2, src, dst, flags, user=user)

    @rule(src=sampled_from(PATHS), dst=sampled_from(PATHS), user=sampled_from([None, USER]))
    def link(self, src, dst, user):
        self.both("link", os.link, src, dst, user=user)

    @rule(link_target=sampled_from(TARGETS), path=sampled_from(PATHS))
    def symlink(self, link_target, path):
        self.both("symlink", os.symlink, link_target, path)

    @rule(path=sampled_from(PATHS))
    def mkfifo(self, path):
        self.both("mkfifo", os.mkfifo, path)

    @rule(path=sampled_from(PATHS), mode=sampled_from(MODES + [0o2755, 0o6777]),
          user=sampled_from([None, USER]))
    def chmod(self, path, mode, user):
        self.both("chmod", os.chmod, path, mode, user=user)

    @rule(path=sampled_from(PATHS), uid=sampled_from([0, USER, OTHER, -1]),
          gid=sampled_from([0, USER, -1]), user=sampled_from([None, USER]))
    def chown(self, path, uid, gid, user):
        self.both("lchown", os.lchown, path, uid, gid, user=user)

    @rule(path=sampled_from(PATHS), times=sampled_from([(OLD_NS, OLDER_NS), (UTIME_NOW, UTIME_OMIT),
                                                        (UTIME_OMIT, OLD_NS), (None, None)]),
          user=sampled_from([None, USER]))
    def utime(self, path, times, user):
        self.both("utimensat", utimensat, path, *times, user=user)

    @rule(path=sampled_from(PATHS), name=sampled_from(["user.x", "user.y"]),
          value=binary(max_size=40), user=sampled_from([None, USER]))
    def setxattr(self, path, name, value, user):
        self.both("setxattr", _lsetxattr, path, name, value, user=user)

    @rule(path=sampled_from(PATHS), name=sampled_from(["user.x", "user.y"]))
    def removexattr(self, path, name):
        self.both("removexattr", _lremovexattr, path, name)

    @rule(mask=sampled_from([0o022, 0o077, 0o002, 0o000]))
    def set_umask(self, mask):
        self.umask = mask

    @rule(path=sampled_from(["."] + PATHS))
    def listing(self, path):
        def names(path):
            entries = getdents(path)
            return len(entries), sorted(name for name, _, _ in entries)
        self.both("getdents", names, path)

    @invariant()
    def same_trees(self):
        ext4, volume = (describe_tree(root) for root in self.roots)
        diff = tree_differences(ext4, volume)
        assert not diff, "\n".join(diff)


def _lsetxattr(path, name, value):
    os.setxattr(path, name, value, follow_symlinks=False)


def _lremovexattr(path, name):
    os.removexattr(path, name, follow_symlinks=False)


@pytest.mark.timeout(7200 if LONG else 600)
def test_random_sequences_same_as_ext4(places):
    """CI runs a few hundred steps; FUSEVOL_LONG=1 runs many more (by hand)."""
    SameAsExt4.places = places
    run_state_machine_as_test(SameAsExt4, settings=settings(
        max_examples=1000 if LONG else 100, stateful_step_count=50 if LONG else 20,
        deadline=None, database=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
