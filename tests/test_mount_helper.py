"""mount(8) and fstab: `mount -t fuse.fusevol VOLUME DIR -o ...` and `umount DIR`,
run as boot would (an empty PATH), through the helpers scripts/setup.sh installs."""

import errno
import os
import stat
import subprocess
import sys
import time

import pytest

from conftest import HAVE_FUSE, run_cli

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPERS = ("/sbin/mount.fuse.fusevol", "/sbin/umount.fuse.fusevol")

pytestmark = pytest.mark.skipif(not HAVE_FUSE, reason="needs root, /dev/fuse and fusermount3")


@pytest.fixture(scope="module", autouse=True)
def helpers():
    """The helpers as scripts/setup.sh installs them (for this venv's python)."""
    venv = os.path.dirname(os.path.dirname(sys.executable))
    wanted = f"#!{venv}/bin/python"
    if not all(os.path.exists(h) and open(h).readline().strip() == wanted for h in HELPERS):
        subprocess.run([os.path.join(ROOT_DIR, "scripts", "install-mount-helpers.sh"), venv],
                       check=True)


def _env() -> dict:
    # As mount.fuse3 or early boot run helpers: no PATH at all. PYTHONPATH only
    # points the venv's python at this checkout.
    return {"PATH": "", "PYTHONPATH": ROOT_DIR}


def mount8(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["/usr/bin/mount", *args], capture_output=True, text=True,
                          env=_env(), timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"mount {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def umount8(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["/usr/bin/umount", *args], capture_output=True, text=True,
                          env=_env(), timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"umount {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def mountinfo(path: str) -> tuple[str, str, str, str] | None:
    """(mount options, fstype, source, super options) of the mount at path."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                sep = fields.index("-")
                return fields[5], fields[sep + 1], fields[sep + 2], fields[sep + 3]
    return None


@pytest.fixture
def place(store_path, tmp_path):
    """A store with volume `data`, and a folder to mount on; unmounts what a test leaves."""
    run_cli(store_path, "volume", "create", "data")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield store_path, str(mnt)
    for _ in range(3):
        if mountinfo(str(mnt)) is None:
            break
        subprocess.run(["umount", str(mnt)], capture_output=True)
        time.sleep(0.2)


def test_mount_t_fuse_fusevol_serves_and_umount_stores_everything(place):
    store, mnt = place
    mount8("-t", "fuse.fusevol", "data", mnt, "-o", f"store={store},_netdev")
    opts, fstype, source, _ = mountinfo(mnt)
    assert (fstype, source) == ("fuse.fusevol", "data")
    assert set(opts.split(",")) >= {"rw", "nosuid", "nodev", "noatime"}
    with open(os.path.join(mnt, "f"), "w") as f:
        f.write("written through mount(8)\n")
    umount8(mnt)
    assert mountinfo(mnt) is None
    # umount waited for the worker: it has stored everything and let the volume go.
    assert run_cli(store, "export", "data", "-o", os.devnull).returncode == 0
    mount8("-t", "fuse.fusevol", "data", mnt, "-o", f"store={store}")
    with open(os.path.join(mnt, "f")) as f:
        assert f.read() == "written through mount(8)\n"
    umount8(mnt)


def test_ro_and_subpath(place):
    store, mnt = place
    mount8("-t", "fuse.fusevol", "data", mnt, "-o", f"store={store}")
    os.makedirs(os.path.join(mnt, "www/inner"))
    with open(os.path.join(mnt, "www/index.html"), "w") as f:
        f.write("hello")
    umount8(mnt)
    mount8("-t", "fuse.fusevol", "data", mnt, "-o", f"ro,subpath=www,store={store}")
    assert mountinfo(mnt)[0].split(",")[0] == "ro"
    assert sorted(os.listdir(mnt)) == ["index.html", "inner"]
    with pytest.raises(OSError) as e:
        open(os.path.join(mnt, "new"), "w")
    assert e.value.errno == errno.EROFS
    umount8(mnt)


def test_unknown_option_is_refused_and_nothing_mounted(place):
    store, mnt = place
    proc = mount8("-t", "fuse.fusevol", "data", mnt, "-o", f"store={store},colour=blue",
                  check=False)
    assert proc.returncode != 0
    assert "unknown mount option 'colour=blue'" in proc.stderr
    assert mountinfo(mnt) is None
    proc = mount8("-t", "fuse.fusevol", "nosuch", mnt, "-o", f"store={store}", check=False)
    assert proc.returncode != 0 and "no such volume: nosuch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dev_and_suid_are_honoured(place):
    store, mnt = place
    mount8("-t", "fuse.fusevol", "data", mnt, "-o", f"store={store}")
    node = os.path.join(mnt, "null")
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(PermissionError):  # nodev, the default
        open(node, "w")
    umount8(mnt)
    # mount(8) passes no plain dev or suid on to helpers: its defaults.
    mount8("-t", "fuse.fusevol", "data", mnt, "-o", f"dev=true,suid=true,store={store}")
    flags = set(mountinfo(mnt)[0].split(","))
    assert "nodev" not in flags and "nosuid" not in flags
    with open(node, "w") as f:  # /dev/null's driver takes it
        f.write("x")
    umount8(mnt)


def _read(path):
    with open(path, "rb") as f:
        f.read()


@pytest.mark.parametrize("mode", ["noatime", "relatime", "strictatime"])
def test_atime_modes(place, mode):
    store, mnt = place
    mount8("-t", "fuse.fusevol", "data", mnt, "-o", f"{mode},store={store}")
    path = os.path.join(mnt, "f")
    with open(path, "w") as f:
        f.write("content")
    _read(path)
    first = os.stat(path).st_atime_ns
    time.sleep(0.05)
    _read(path)  # read again, after the last change: only strictatime renews atime
    again = os.stat(path).st_atime_ns
    now = time.time()
    os.utime(path, (now - 3 * 86400, now - 2 * 86400))
    _read(path)  # atime before the last change (utime's ctime): relatime renews it too
    stale = os.stat(path).st_atime
    renewed = {"noatime": (False, False), "relatime": (False, True),
               "strictatime": (True, True)}[mode]
    assert (again > first, stale >= now - 5) == renewed
    umount8(mnt)


def test_fstab_lines_mount_with_mount_a(place, tmp_path):
    store, mnt = place
    run_cli(store, "volume", "create", "other")
    mnt2 = tmp_path / "mnt2"
    mnt2.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"data {mnt} fuse.fusevol defaults,_netdev,store={store} 0 0\n"
                     f"other {mnt2} fuse.fusevol ro,nofail,x-systemd.automount,store={store} 0 0\n")
    try:
        mount8("-a", "-T", str(fstab))
        assert mountinfo(mnt)[1:3] == ("fuse.fusevol", "data")
        assert mountinfo(str(mnt2))[0].split(",")[0] == "ro"
        mount8("-a", "-T", str(fstab))  # again: both are mounted already
        assert os.listdir(mnt) == [] and os.listdir(mnt2) == []
    finally:
        umount8(str(mnt2), check=False)
    umount8(mnt)
