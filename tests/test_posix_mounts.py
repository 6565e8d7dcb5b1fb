"""Kinds of mounts: read-only ones (EROFS for every change) and subpath views."""

import errno
import os
import subprocess

import pytest

from conftest import needs_fuse, run_cli

pytestmark = needs_fuse


def fill(mounts, name="vol", *create_opts):
    if create_opts:
        mounts.create(name, *create_opts)
    mp = mounts.mount(name)
    os.makedirs(os.path.join(mp, "d/sub"))
    with open(os.path.join(mp, "d/f"), "wb") as f:
        f.write(b"content")
    os.setxattr(os.path.join(mp, "d/f"), "user.k", b"v")
    os.symlink("f", os.path.join(mp, "d/link"))
    mounts.umount(mp)


MODIFYING = [
    ("open for write", "open('d/f', 'r+b')"),
    ("open for append", "open('d/f', 'ab')"),
    ("create", "open('d/new', 'wb')"),
    ("mkdir", "os.mkdir('d/newdir')"),
    ("mknod", "os.mkfifo('d/fifo')"),
    ("symlink", "os.symlink('x', 'd/newlink')"),
    ("link", "os.link('d/f', 'd/hard')"),
    ("unlink", "os.unlink('d/f')"),
    ("rmdir", "os.rmdir('d/sub')"),
    ("rename", "os.rename('d/f', 'd/g')"),
    ("chmod", "os.chmod('d/f', 0o600)"),
    ("chown", "os.chown('d/f', 1, 1)"),
    ("utime", "os.utime('d/f', (1, 1))"),
    ("setxattr", "os.setxattr('d/f', 'user.k', b'w')"),
    ("removexattr", "os.removexattr('d/f', 'user.k')"),
    ("truncate", "os.truncate('d/f', 0)"),
]


def errnos(cwd, probes):
    out = {}
    old = os.getcwd()
    os.chdir(cwd)
    try:
        for name, source in probes:
            try:
                exec(source)
                out[name] = "ok"
            except OSError as e:
                out[name] = errno.errorcode[e.errno]
    finally:
        os.chdir(old)
    return out


def check_read_only(mp):
    assert errnos(mp, MODIFYING) == {name: "EROFS" for name, _ in MODIFYING}
    # Reads work.
    assert open(os.path.join(mp, "d/f"), "rb").read() == b"content"
    assert os.getxattr(os.path.join(mp, "d/f"), "user.k") == b"v"
    assert os.listxattr(os.path.join(mp, "d/f")) == ["user.k"]
    assert os.readlink(os.path.join(mp, "d/link")) == "f"
    assert sorted(os.listdir(os.path.join(mp, "d"))) == ["f", "link", "sub"]
    assert os.statvfs(mp).f_flag & os.ST_RDONLY
    with open(os.path.join(mp, "d/f"), "rb") as f:
        assert f.read(3) == b"con"


def test_mount_read_only(mounts):
    fill(mounts)
    mp = mounts.mount("vol", "--read-only")
    check_read_only(mp)
    mounts.umount(mp)
    # Nothing changed underneath.
    mp = mounts.mount("vol")
    assert open(os.path.join(mp, "d/f"), "rb").read() == b"content"
    with open(os.path.join(mp, "d/f"), "ab") as f:  # and a normal mount writes again
        f.write(b"+")


def test_volume_created_read_only(mounts):
    mounts.create("ro", "readonly=true")
    mp = mounts.mount("ro")
    assert errnos(mp, [("create", "open('x', 'wb')"), ("mkdir", "os.mkdir('d')"),
                       ("chmod", "os.chmod('.', 0o700)"),
                       ("setxattr", "os.setxattr('.', 'user.k', b'v')")]) == \
        {"create": "EROFS", "mkdir": "EROFS", "chmod": "EROFS", "setxattr": "EROFS"}
    assert os.listdir(mp) == []
    assert os.statvfs(mp).f_flag & os.ST_RDONLY


def test_read_only_view_of_a_filled_volume(mounts):
    fill(mounts)
    # A view volume created read-only shows its source's data and refuses changes.
    mounts.create("view", "source=vol", "subpath=d", "readonly=true")
    mp = mounts.mount("view")
    assert sorted(os.listdir(mp)) == ["f", "link", "sub"]
    assert errnos(mp, [("write", "open('f', 'ab')"), ("unlink", "os.unlink('f')"),
                       ("truncate", "os.truncate('f', 0)"), ("rename", "os.rename('f', 'g')")]) \
        == {"write": "EROFS", "unlink": "EROFS", "truncate": "EROFS", "rename": "EROFS"}
    assert open(os.path.join(mp, "f"), "rb").read() == b"content"


def test_subpath_view_shows_only_its_folder(mounts, tmp_path):
    mp = mounts.mount("vol")
    os.makedirs(os.path.join(mp, "app/data/deep"))
    os.makedirs(os.path.join(mp, "other"))
    with open(os.path.join(mp, "secret"), "w") as f:
        f.write("outside the view")
    with open(os.path.join(mp, "app/data/f"), "w") as f:
        f.write("inside")
    os.symlink("../../secret", os.path.join(mp, "app/data/up2"))
    os.symlink("../../../../../../secret", os.path.join(mp, "app/data/deep/up-many"))
    host_file = tmp_path / "host-file"
    host_file.write_text("on the host")
    os.symlink(str(host_file), os.path.join(mp, "app/data/absolute"))
    mounts.umount(mp)

    view = mounts.mount("vol", "--subpath", "app/data")
    assert sorted(os.listdir(view)) == ["absolute", "deep", "f", "up2"]
    assert open(os.path.join(view, "f")).read() == "inside"
    # '..' at the view's root stays at the root.
    # '..' of the view's root is the kernel's business (it leads to the mountpoint's
    # parent on the host); nothing above the folder is reachable inside the mount.
    assert os.path.samestat(os.stat(os.path.join(view, "deep", "..")), os.stat(view))
    assert os.path.samestat(os.stat(os.path.join(view, "deep", "..", "..")),
                            os.stat(os.path.dirname(view)))
    assert not os.path.exists(os.path.join(view, "secret"))
    assert not os.path.exists(os.path.join(view, "other"))
    # Relative links are resolved by the kernel within the host's tree: '../..' from
    # the view's root climbs out of the mount, never into the hidden part of the volume.
    up2 = os.path.join(view, "up2")
    assert os.readlink(up2) == "../../secret"
    assert os.path.realpath(up2) == os.path.join(os.path.dirname(os.path.dirname(view)), "secret")
    with pytest.raises(FileNotFoundError):
        open(up2)
    with pytest.raises(FileNotFoundError):
        open(os.path.join(view, "deep", "up-many")).read()
    # An absolute link points on the host, as on any filesystem.
    assert open(os.path.join(view, "absolute")).read() == "on the host"
    for path in (view, os.path.join(view, "deep")):
        for name in os.listdir(path):
            assert "outside the view" not in (open(os.path.join(path, name)).read()
                                              if os.path.isfile(os.path.join(path, name)) else "")
    # Writes through the view land in the folder.
    with open(os.path.join(view, "new"), "w") as f:
        f.write("via view")
    mounts.umount(view)
    mp = mounts.mount("vol")
    assert open(os.path.join(mp, "app/data/new")).read() == "via view"
    assert sorted(os.listdir(mp)) == ["app", "other", "secret"]


def test_subpath_view_of_a_missing_folder_is_a_clear_error(mounts, tmp_path):
    mp = mounts.mount("vol")
    open(os.path.join(mp, "file"), "w").close()
    mounts.umount(mp)
    target = str(tmp_path / "mnt" / "view")
    os.makedirs(target)
    for subpath, words in (("missing/dir", "missing/dir"), ("file", "file"), ("../x", "..")):
        proc = run_cli(mounts.store_path, "mount", "vol", target, "--background",
                       "--subpath", subpath, check=False)
        err = proc.stderr.decode()
        assert proc.returncode != 0, subpath
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert words in err, err
        assert not os.path.ismount(target)
    proc = subprocess.run(["mountpoint", "-q", target])
    assert proc.returncode != 0
