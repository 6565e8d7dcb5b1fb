"""Extended attributes on a mounted volume, through system calls and attr's tools."""

import errno
import os
import shutil
import stat
import subprocess

import pytest

from conftest import needs_fuse

pytestmark = needs_fuse


def test_set_get_list_remove(mounts):
    mp = mounts.mount("vol")
    f = os.path.join(mp, "f")
    d = os.path.join(mp, "d")
    open(f, "w").close()
    os.mkdir(d)
    assert os.listxattr(f) == []
    big = os.urandom(60_000)
    os.setxattr(f, "user.small", b"v")
    os.setxattr(f, "user.empty", b"")
    os.setxattr(f, "user.big", big)
    os.setxattr(f, "user." + "n" * 250, b"long name")
    os.setxattr(d, "user.ondir", b"dir value")
    assert os.getxattr(f, "user.small") == b"v"
    assert os.getxattr(f, "user.empty") == b""
    assert os.getxattr(f, "user.big") == big
    assert os.getxattr(d, "user.ondir") == b"dir value"
    assert sorted(os.listxattr(f)) == sorted(["user.small", "user.empty", "user.big",
                                              "user." + "n" * 250])
    os.setxattr(f, "user.small", b"replaced")
    assert os.getxattr(f, "user.small") == b"replaced"
    with pytest.raises(FileExistsError):
        os.setxattr(f, "user.small", b"again", os.XATTR_CREATE)
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.absent", b"x", os.XATTR_REPLACE)
    assert info.value.errno == errno.ENODATA
    assert os.getxattr(f, "user.small") == b"replaced" and "user.absent" not in os.listxattr(f)

    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.missing")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.removexattr(f, "user.missing")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.setxattr(f, "user.toolarge", bytes(65_537))
    assert info.value.errno == errno.E2BIG
    os.removexattr(f, "user.empty")
    assert "user.empty" not in os.listxattr(f)

    # xattrs change ctime, not mtime.
    os.utime(f, (1, 1))
    before = os.stat(f)
    os.setxattr(f, "user.t", b"1")
    after = os.stat(f)
    assert after.st_mtime == 1 and after.st_ctime_ns >= before.st_ctime_ns

    mounts.umount(mp)
    mp = mounts.mount("vol")
    f = os.path.join(mp, "f")
    assert os.getxattr(f, "user.big") == big
    assert os.getxattr(f, "user.small") == b"replaced"
    assert os.getxattr(os.path.join(mp, "d"), "user.ondir") == b"dir value"
    # They go with the file when it is removed (a new file of the same name has none).
    os.unlink(f)
    open(f, "w").close()
    assert os.listxattr(f) == []


def test_user_xattrs_on_special_files_follow_kernel_rules(vol):
    os.symlink("target", os.path.join(vol, "link"))
    os.mkfifo(os.path.join(vol, "fifo"))
    for name in ("link", "fifo"):
        with pytest.raises(OSError) as info:
            os.setxattr(os.path.join(vol, name), "user.x", b"1", follow_symlinks=False)
        assert info.value.errno == errno.EPERM, name


def test_posix_acls_are_refused_not_stored(vol):
    """The volume does not implement POSIX ACLs (the kernel checks modes only), so
    it must refuse them: storing one as a plain xattr would pretend it is in force,
    and tools such as cp -p would then skip setting the mode itself."""
    f = os.path.join(vol, "f")
    open(f, "w").close()
    # user::rw- user:1000:r-- group::r-- mask::r-- other::---
    acl = bytes.fromhex("02000000" "01000600ffffffff" "02000400e8030000" "04000400ffffffff"
                        "10000400ffffffff" "20000000ffffffff")
    mode_only = bytes.fromhex("02000000" "01000600ffffffff" "04000400ffffffff" "20000000ffffffff")
    d = os.path.join(vol, "d")
    os.mkdir(d)
    for path, name, value in ((f, "system.posix_acl_access", acl),
                              (d, "system.posix_acl_access", acl),
                              (d, "system.posix_acl_default", acl),
                              (d, "system.posix_acl_default", mode_only)):
        with pytest.raises(OSError) as info:
            os.setxattr(path, name, value)
        assert info.value.errno == errno.EOPNOTSUPP, name
    assert os.listxattr(f) == [] and os.listxattr(d) == []
    # An access ACL that is only a mode (what setfacl -b leaves) is that mode, as on ext4.
    os.setxattr(f, "system.posix_acl_access", mode_only)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o640 and os.listxattr(f) == []
    # What cp -p does to copy a mode in: it must arrive.
    src = os.path.join(os.path.dirname(vol), "src")
    with open(src, "w") as fh:
        fh.write("x")
    os.chmod(src, 0o640)
    subprocess.run(["cp", "-p", src, os.path.join(vol, "copy")], check=True)
    assert stat.S_IMODE(os.stat(os.path.join(vol, "copy")).st_mode) == 0o640


@pytest.mark.skipif(not shutil.which("setfattr"), reason="setfattr/getfattr (package attr) missing")
def test_setfattr_getfattr_round_trip(vol):
    f = os.path.join(vol, "f")
    open(f, "w").close()
    subprocess.run(["setfattr", "-n", "user.text", "-v", "hello world", f], check=True)
    subprocess.run(["setfattr", "-n", "user.hex", "-v", "0x00ff10", f], check=True)
    subprocess.run(["setfattr", "-n", "user.gone", "-v", "x", f], check=True)
    subprocess.run(["setfattr", "-x", "user.gone", f], check=True)
    out = subprocess.run(["getfattr", "-d", "-e", "hex", "--absolute-names", f],
                         check=True, capture_output=True, text=True).stdout
    lines = sorted(line for line in out.splitlines() if line.startswith("user."))
    assert lines == ["user.hex=0x00ff10", "user.text=0x68656c6c6f20776f726c64"]
    assert os.getxattr(f, "user.hex") == b"\x00\xff\x10"
    missing = subprocess.run(["getfattr", "-n", "user.gone", f], capture_output=True, text=True)
    assert missing.returncode != 0 and "No such attribute" in missing.stderr
    # Dump and restore onto another file.
    g = os.path.join(vol, "g")
    open(g, "w").close()
    dump = subprocess.run(["getfattr", "-d", "--absolute-names", f], check=True,
                          capture_output=True, text=True).stdout.replace(f, g)
    subprocess.run(["setfattr", "--restore=-"], input=dump, text=True, check=True)
    assert os.getxattr(g, "user.text") == b"hello world"
    assert os.getxattr(g, "user.hex") == b"\x00\xff\x10"
