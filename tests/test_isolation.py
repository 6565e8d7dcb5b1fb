"""A process given one volume or one view reaches nothing else through it; the
store and the plugin socket are root's alone.

Volumes and a view are created and mounted through the real plugin daemon, as
dockerd would. The "container" is jail.py: the mountpoint made its whole
filesystem with pivot_root, its own /proc, Docker's default capabilities.
"""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from conftest import needs_fuse
from fusevol.store import Store
from plugin_daemon import PluginDaemon

JAIL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jail.py")
SECRET_A = "TOKEN-A-PRIVATE-5e1f"  # in volume a, outside the folder its view shows
PUBLIC_A = "TOKEN-A-PUBLIC-77c0"   # in the folder the view shows
SECRET_B = "TOKEN-B-31d9"          # in volume b
UID = 1000


def probe(probes: list, root: str | None = None, uid: int | None = None) -> list:
    args = [sys.executable, JAIL] + (["--root", root] if root else ["--no-jail"])
    if uid is not None:
        args += ["--uid", str(uid)]
    proc = subprocess.run(args, input=json.dumps(probes).encode(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture(scope="module")
def world():
    """Volumes iso-a and iso-b and the view iso-view (iso-a's folder pub),
    mounted through the daemon; symlinks planted that point out in every way."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("real FUSE mounts need root and /dev/fuse")
    # Not under pytest's tmp_path (root-only itself): the store's own modes
    # must be what keeps another user out.
    base = tempfile.mkdtemp(prefix="fusevol-iso-")
    os.chmod(base, 0o755)
    os.makedirs(os.path.join(base, "plugins"), mode=0o755)  # as dockerd leaves its folder
    d = PluginDaemon(os.path.join(base, "store"), os.path.join(base, "plugins", "fv-iso.sock"),
                     os.path.join(base, "serve.log"))
    d.start()
    try:
        mp = {}
        for name in ("iso-a", "iso-b"):
            assert d.call("/VolumeDriver.Create", {"Name": name, "Opts": {}}) == (200, {})
            status, reply = d.call("/VolumeDriver.Mount", {"Name": name, "ID": "c-" + name})
            assert status == 200, reply
            mp[name] = reply["Mountpoint"]
        a, b = mp["iso-a"], mp["iso-b"]
        for folder in ("pub", "pub/proc", "private", "proc"):
            os.mkdir(os.path.join(a, folder))
        os.mkdir(os.path.join(b, "proc"))
        write(os.path.join(a, "private", "secret.txt"), SECRET_A)
        write(os.path.join(a, "pub", "hello.txt"), PUBLIC_A)
        write(os.path.join(b, "secret.txt"), SECRET_B)
        links = {
            "up-rel": "../private/secret.txt",
            "up-far": "../" * 12 + b.lstrip("/") + "/secret.txt",
            "abs-b": b + "/secret.txt",
            "abs-a": a + "/private/secret.txt",
            "abs-store": d.store + "/db/data.mdb",
            "proc-root": "/proc/self/root" + b + "/secret.txt",
            "proc-1-root": "/proc/1/root" + a + "/private/secret.txt",
            "proc-cwd-up": "/proc/self/cwd/../private/secret.txt",
            "dir-up": "..",
            "dir-abs-a": a,
        }
        for name, target in links.items():
            os.symlink(target, os.path.join(a, "pub", name))
        os.symlink(a + "/private/secret.txt", os.path.join(b, "abs-a"))
        os.symlink("../" + os.path.basename(a) + "/private/secret.txt", os.path.join(b, "rel-a"))
        os.symlink("../" * 12 + a.lstrip("/") + "/private", os.path.join(b, "far-a"))
        assert d.call("/VolumeDriver.Create", {"Name": "iso-view",
                                               "Opts": {"source": "iso-a", "subpath": "pub"}}) == (200, {})
        status, reply = d.call("/VolumeDriver.Mount", {"Name": "iso-view", "ID": "c-view"})
        assert status == 200, reply
        mp["iso-view"] = reply["Mountpoint"]
        yield {"daemon": d, "mp": mp, "links": links, "base": base}
    finally:
        d.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _reached(results) -> list:
    """Results that are file content (a probe that failed gives an errno name)."""
    return [r for r in results if isinstance(r, str) and "TOKEN" in r]


@needs_fuse
def test_a_view_reaches_only_its_folder(world):
    mp, links = world["mp"], world["links"]
    view_names = sorted(os.listdir(mp["iso-view"]))
    b_secret = mp["iso-b"] + "/secret.txt"
    results = probe([
        ["find", "/", [SECRET_A, SECRET_B, PUBLIC_A]],
        ["listdir", "/.."],
        ["listdir", "/../../.."],
        ["open_dotdot", "/", 8],
        ["stat", "/"],
        ["stat", "/.."],
        *(["read", "/" + name] for name in links),
        ["read", "/proc/self/root/../private/secret.txt"],
        ["read", "/proc/1/root" + b_secret],
        ["read", "/proc/self/cwd/../../private/secret.txt"],
        ["proc_fd_dotdot", "/", 8],
        ["chroot_escape", b_secret],  # last: it changes the process's root
    ], root=mp["iso-view"])
    found, up, far_up, dotdot, root_st, up_st = results[:6]
    assert found == {PUBLIC_A: ["/hello.txt"]}, found
    assert up == far_up == dotdot == results[-2] == view_names
    assert root_st == up_st
    assert not _reached(results[6:-2]), results[6:-2]
    assert results[-1] is False, "escaped the jail"


@needs_fuse
def test_a_volume_reaches_no_other_volume(world):
    mp = world["mp"]
    results = probe([
        ["find", "/", [SECRET_A, SECRET_B, PUBLIC_A]],
        ["read", "/abs-a"],
        ["read", "/rel-a"],
        ["listdir", "/far-a"],
        ["read", "/proc/self/root" + mp["iso-a"] + "/private/secret.txt"],
        ["listdir", "/.."],
    ], root=mp["iso-b"])
    assert results[0] == {SECRET_B: ["/secret.txt"]}, results[0]
    assert results[1:4] == ["ENOENT"] * 3
    assert results[4] == "ENOENT"
    assert results[5] == sorted(os.listdir(mp["iso-b"]))


@needs_fuse
def test_a_device_node_in_a_volume_opens_nothing(world):
    """A container may mknod (Docker keeps CAP_MKNOD); the node must not open
    the host's disk, which holds every volume."""
    disk = os.stat(world["daemon"].store).st_dev
    result = probe([["mknod_read", "/disk", disk]], root=world["mp"]["iso-b"])
    assert result == ["EACCES"], result


@needs_fuse
def test_no_hardlink_or_rename_across_volumes_or_out_of_a_view(world):
    a, b, view = (world["mp"][n] for n in ("iso-a", "iso-b", "iso-view"))
    for src, dst in ((a + "/private/secret.txt", b + "/x"), (b + "/secret.txt", view + "/x"),
                     (view + "/hello.txt", a + "/x"), (a + "/private/secret.txt", view + "/x")):
        for op in (os.link, os.rename):
            with pytest.raises(OSError) as failed:
                op(src, dst)
            assert failed.value.errno == errno.EXDEV, (op.__name__, src, dst)


@needs_fuse
def test_the_store_and_the_socket_are_root_only(world):
    d = world["daemon"]
    db = os.path.join(d.store, "db")
    secret_b = os.path.join(world["mp"]["iso-b"], "secret.txt")
    # The file itself is readable by all: only the store's mode keeps it from other users.
    assert os.stat(secret_b).st_mode & 0o004
    results = probe([
        ["listdir", d.store],
        ["read", os.path.join(db, "data.mdb")],
        ["read", os.path.join(db, "lock.mdb")],
        ["read", secret_b],  # a volume's data through its mountpoint in the store
        ["connect", d.socket],
    ], uid=UID)
    assert results == ["EACCES"] * 5, results
    assert stat.S_IMODE(os.stat(d.store).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE(os.stat(os.path.join(db, name)).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600


def test_a_store_folder_open_to_others_is_made_root_only(tmp_path):
    path = tmp_path / "old-store"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    Store.open(str(path)).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
