"""Attributes of a mounted volume: times, modes, owners, and permission checks by the kernel."""

import errno
import os
import stat
import time

import pytest

from conftest import needs_fuse, run_cli
from posix_helpers import USER, as_user, user_errnos

pytestmark = needs_fuse

OLD = 1_000_000_000  # a time in the past (2001), set with utime before each step
OLD_NS = OLD * 10**9


def tick():
    """Let the clock move on so that a new ctime/mtime differs from the one before
    (the kernel may stamp times with jiffies)."""
    time.sleep(0.03)


def test_times_follow_posix_rules(mounts):
    mp = mounts.mount("vol")
    j = lambda *p: os.path.join(mp, *p)  # noqa: E731
    os.mkdir(j("d1"))
    os.mkdir(j("d2"))
    with open(j("d1/f"), "wb") as f:
        f.write(b"x")

    # utimens sets exactly the given times (nanoseconds kept).
    os.utime(j("d1/f"), ns=(OLD_NS + 111, OLD_NS + 222))
    st = os.stat(j("d1/f"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (OLD_NS + 111, OLD_NS + 222)
    assert st.st_ctime_ns > OLD_NS  # ctime is now, it cannot be set

    # chmod changes ctime, not mtime.
    before = os.stat(j("d1/f"))
    tick()
    os.chmod(j("d1/f"), 0o600)
    after = os.stat(j("d1/f"))
    assert after.st_mtime_ns == OLD_NS + 222
    assert after.st_ctime_ns > before.st_ctime_ns
    assert stat.S_IMODE(after.st_mode) == 0o600

    # chown too.
    before = after
    tick()
    os.chown(j("d1/f"), 1234, 5678)
    after = os.stat(j("d1/f"))
    assert (after.st_uid, after.st_gid) == (1234, 5678)
    assert after.st_mtime_ns == OLD_NS + 222 and after.st_ctime_ns > before.st_ctime_ns

    # write changes mtime and ctime.
    before = after
    tick()
    with open(j("d1/f"), "ab") as f:
        f.write(b"more")
    after = os.stat(j("d1/f"))
    assert after.st_mtime_ns > OLD_NS + 222 and after.st_ctime_ns > before.st_ctime_ns

    # truncate changes both.
    os.utime(j("d1/f"), ns=(OLD_NS, OLD_NS))
    before = os.stat(j("d1/f"))
    tick()
    os.truncate(j("d1/f"), 2)
    after = os.stat(j("d1/f"))
    assert after.st_mtime_ns > OLD_NS and after.st_ctime_ns > before.st_ctime_ns

    # link changes the inode's ctime and the new parent's mtime and ctime.
    os.utime(j("d1/f"), ns=(OLD_NS, OLD_NS))
    os.utime(j("d2"), ns=(OLD_NS, OLD_NS))
    before = os.stat(j("d1/f"))
    tick()
    os.link(j("d1/f"), j("d2/hard"))
    after = os.stat(j("d1/f"))
    assert after.st_mtime_ns == OLD_NS and after.st_ctime_ns > before.st_ctime_ns
    assert os.stat(j("d2")).st_mtime_ns > OLD_NS
    os.unlink(j("d2/hard"))

    # rename: ctime of the moved inode, mtime and ctime of both parents.
    for p in ("d1/f", "d1", "d2"):
        os.utime(j(p), ns=(OLD_NS, OLD_NS))
    moved, p1, p2 = (os.stat(j(p)) for p in ("d1/f", "d1", "d2"))
    tick()
    os.rename(j("d1/f"), j("d2/g"))
    after = os.stat(j("d2/g"))
    assert after.st_mtime_ns == OLD_NS and after.st_ctime_ns > moved.st_ctime_ns
    for before, p in ((p1, "d1"), (p2, "d2")):
        st = os.stat(j(p))
        assert st.st_mtime_ns > OLD_NS and st.st_ctime_ns > before.st_ctime_ns, p

    # creating and removing entries changes the directory's mtime and ctime.
    os.utime(j("d2"), ns=(OLD_NS, OLD_NS))
    open(j("d2/new"), "w").close()
    assert os.stat(j("d2")).st_mtime_ns > OLD_NS
    os.utime(j("d2"), ns=(OLD_NS, OLD_NS))
    os.unlink(j("d2/new"))
    assert os.stat(j("d2")).st_mtime_ns > OLD_NS

    # Reading does not change mtime or ctime.
    st = os.stat(j("d2/g"))
    tick()
    open(j("d2/g"), "rb").read()
    again = os.stat(j("d2/g"))
    assert (again.st_mtime_ns, again.st_ctime_ns) == (st.st_mtime_ns, st.st_ctime_ns)

    # All of it is stored, not only cached.
    expected = {p: (os.stat(j(p)).st_mtime_ns, os.stat(j(p)).st_mode, os.stat(j(p)).st_uid)
                for p in ("d1", "d2", "d2/g")}
    mounts.umount(mp)
    mp = mounts.mount("vol")
    assert {p: (os.stat(os.path.join(mp, p)).st_mtime_ns, os.stat(os.path.join(mp, p)).st_mode,
                os.stat(os.path.join(mp, p)).st_uid) for p in expected} == expected


def test_times_set_while_data_is_buffered_stick(mounts):
    """utimens on an open file with unwritten data: the data reaching the store
    later must not move mtime again (cp -p, tar and rsync do this)."""
    mp = mounts.mount("vol")
    path = os.path.join(mp, "f")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, os.urandom(3 << 20))
        os.utime(fd, ns=(OLD_NS + 5, OLD_NS + 7))
    finally:
        os.close(fd)
    assert os.stat(path).st_mtime_ns == OLD_NS + 7
    mounts.umount(mp)
    mp = mounts.mount("vol")
    st = os.stat(os.path.join(mp, "f"))
    assert (st.st_atime_ns, st.st_mtime_ns, st.st_size) == (OLD_NS + 5, OLD_NS + 7, 3 << 20)


def test_setgid_directory_passes_its_group_on(mounts):
    mp = mounts.mount("vol")
    d = os.path.join(mp, "shared")
    os.mkdir(d)
    os.chown(d, 0, 4242)
    os.chmod(d, 0o2775)
    open(os.path.join(d, "f"), "w").close()
    os.mkdir(os.path.join(d, "sub"))
    os.mkdir(os.path.join(mp, "plain"))
    for name, expect_setgid in (("f", False), ("sub", True)):
        st = os.stat(os.path.join(d, name))
        assert st.st_gid == 4242, name
        assert bool(st.st_mode & stat.S_ISGID) == expect_setgid, name
    # And deeper, through the inherited bit.
    open(os.path.join(d, "sub", "g"), "w").close()
    assert os.stat(os.path.join(d, "sub", "g")).st_gid == 4242
    assert os.stat(os.path.join(mp, "plain")).st_gid == 0
    # A user who is not in the group creates files of the directory's group too.
    os.chmod(d, 0o2777)
    out = user_errnos(mp, [("create", "open('shared/byuser', 'w').close()")])
    assert out == {"create": "ok"}
    st = os.stat(os.path.join(d, "byuser"))
    assert (st.st_uid, st.st_gid) == (USER, 4242)
    mounts.umount(mp)
    mp = mounts.mount("vol")
    st = os.stat(os.path.join(mp, "shared", "sub"))
    assert st.st_gid == 4242 and st.st_mode & stat.S_ISGID


def test_permissions_are_checked_by_the_kernel(vol):
    j = lambda *p: os.path.join(vol, *p)  # noqa: E731
    os.chmod(vol, 0o755)
    for name, mode in (("open", 0o777), ("closed", 0o700), ("readonly", 0o755)):
        os.mkdir(j(name))
        os.chmod(j(name), mode)
    with open(j("readonly/file"), "w") as f:
        f.write("r")
    os.chmod(j("readonly/file"), 0o644)
    with open(j("secret"), "w") as f:
        f.write("s")
    os.chmod(j("secret"), 0o600)
    os.mkdir(j("mine"))
    os.chown(j("mine"), USER, USER)

    results = user_errnos(vol, [
        ("stat root", "os.stat('.')"),  # allow_other lets the user in at all
        ("list root", "os.listdir('.')"),
        ("read world-readable", "open('readonly/file').read()"),
        ("write world-readable", "open('readonly/file', 'a').write('x')"),
        ("create in 0755 dir", "open('readonly/new', 'w').close()"),
        ("unlink in 0755 dir", "os.unlink('readonly/file')"),
        ("list 0700 dir", "os.listdir('closed')"),
        ("read 0600 file", "open('secret').read()"),
        ("chmod others' file", "os.chmod('secret', 0o666)"),
        ("chown to self", "os.chown('readonly/file', 1000, 1000)"),
        ("utime others' file", "os.utime('readonly/file', (1, 1))"),
        ("create in 0777 dir", "open('open/byuser', 'w').write('u')"),
        ("mkdir in own dir", "os.mkdir('mine/sub')"),
        ("chmod own file", "os.chmod('open/byuser', 0o600)"),
        ("utime own file", "os.utime('open/byuser', (5, 5))"),
        ("chown own file away", "os.chown('open/byuser', 0, 0)"),
        ("mkdir in root", "os.mkdir('rootlevel')"),
    ])
    assert results == {
        "stat root": "ok",
        "list root": "ok",
        "read world-readable": "ok",
        "write world-readable": "EACCES",
        "create in 0755 dir": "EACCES",
        "unlink in 0755 dir": "EACCES",
        "list 0700 dir": "EACCES",
        "read 0600 file": "EACCES",
        "chmod others' file": "EPERM",
        "chown to self": "EPERM",
        "utime others' file": "EPERM",
        "create in 0777 dir": "ok",
        "mkdir in own dir": "ok",
        "chmod own file": "ok",
        "utime own file": "ok",
        "chown own file away": "EPERM",
        "mkdir in root": "EACCES",
    }
    st = os.stat(j("open/byuser"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime) == (USER, USER, 0o600, 5)
    assert open(j("open/byuser")).read() == "u"
    assert open(j("readonly/file")).read() == "r"
    assert os.stat(j("mine/sub")).st_uid == USER
    assert not os.path.exists(j("rootlevel"))


def test_sticky_directory_protects_others_entries(vol):
    tmp = os.path.join(vol, "tmp")
    os.mkdir(tmp)
    os.chmod(tmp, 0o1777)
    with open(os.path.join(tmp, "roots"), "w") as f:
        f.write("r")
    os.chmod(os.path.join(tmp, "roots"), 0o666)
    results = user_errnos(vol, [
        ("create", "open('tmp/users', 'w').close()"),
        ("write others' file", "open('tmp/roots', 'a').write('u')"),
        ("unlink others' file", "os.unlink('tmp/roots')"),
        ("rename others' file", "os.rename('tmp/roots', 'tmp/stolen')"),
        ("rename own file", "os.rename('tmp/users', 'tmp/users2')"),
        ("unlink own file", "os.unlink('tmp/users2')"),
    ])
    assert results == {
        "create": "ok",
        "write others' file": "ok",
        "unlink others' file": "EPERM",
        "rename others' file": "EPERM",
        "rename own file": "ok",
        "unlink own file": "ok",
    }
    assert sorted(os.listdir(tmp)) == ["roots"]
    assert open(os.path.join(tmp, "roots")).read() == "ru"
    assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o1777


def test_modes_and_umask_of_new_entries(vol):
    old = os.umask(0o027)
    try:
        open(os.path.join(vol, "f"), "w").close()
        os.mkdir(os.path.join(vol, "d"))
        os.mknod(os.path.join(vol, "n"), 0o666 | stat.S_IFREG)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(os.path.join(vol, "f")).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(os.path.join(vol, "d")).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(os.path.join(vol, "n")).st_mode) == 0o640
    os.chmod(os.path.join(vol, "f"), 0o4755)
    assert stat.S_IMODE(os.stat(os.path.join(vol, "f")).st_mode) == 0o4755
    # The user of a file run by someone else: setuid dropped when another user writes it.
    os.chmod(os.path.join(vol, "f"), 0o4777)
    out = as_user(vol, "open('f', 'a').write('x')")
    assert out.returncode == 0, out.stderr
    assert not os.stat(os.path.join(vol, "f")).st_mode & stat.S_ISUID
    with pytest.raises(OSError) as info:
        os.truncate(os.path.join(vol, "d"), 0)
    assert info.value.errno == errno.EISDIR


FAR_TIMES_NS = [
    (2**34 - 1) * 10**9 + 7,   # year 2514: past int64 nanoseconds (2262) and ext4's 2446
    2**63,                     # the first nanosecond int64 cannot hold
    2**63 - 1,
    10_000_000_000 * 10**9,    # year 2286
    -1,                        # just before 1970
    -(2**31) * 10**9,          # 1901, ext4's earliest
    -(2**63) - 10**9 + 3,      # before 1677: int64 nanoseconds end there too
]


def test_times_beyond_int64_nanoseconds_are_kept(mounts, store_path):
    mp = mounts.mount("vol")
    os.mkdir(os.path.join(mp, "d"))
    os.symlink("target", os.path.join(mp, "l"))
    paths = []
    for i, t in enumerate(FAR_TIMES_NS):
        f = os.path.join(mp, f"f{i}")
        with open(f, "wb") as out:
            out.write(b"x" * i)
        os.utime(f, ns=(t, t - 5))
        paths.append((f"f{i}", (t, t - 5)))
    os.utime(os.path.join(mp, "d"), ns=(FAR_TIMES_NS[0], FAR_TIMES_NS[-1]))
    paths.append(("d", (FAR_TIMES_NS[0], FAR_TIMES_NS[-1])))
    os.utime(os.path.join(mp, "l"), ns=(FAR_TIMES_NS[4], FAR_TIMES_NS[1]), follow_symlinks=False)
    paths.append(("l", (FAR_TIMES_NS[4], FAR_TIMES_NS[1])))

    def check(root):
        for name, (atime, mtime) in paths:
            st = os.lstat(os.path.join(root, name))
            assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime), name

    check(mp)
    mounts.umount(mp)
    mp = mounts.mount("vol")
    check(mp)  # as stored
    # Snapshots keep them too (tree objects), and so do clones made from them.
    run_cli(store_path, "snapshot", "create", "vol@far")
    run_cli(store_path, "clone", "vol@far", "copy")
    copy = mounts.mount("copy", create=False)
    check(copy)
    os.utime(os.path.join(copy, "f0"), ns=(OLD_NS, OLD_NS))  # back in int64 range
    assert os.stat(os.path.join(copy, "f0")).st_mtime_ns == OLD_NS
    assert run_cli(store_path, "verify").returncode == 0
