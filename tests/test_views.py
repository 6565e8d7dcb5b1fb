"""A view is mounted one way, by Docker and by hand alike: a bind of a folder of
its data volume's one worker (service/mounts.py). So the kernel's caches of a
volume stay one copy whoever shows it, a read-only view is read-only at its
own mount (keeping the volume's nosuid and nodev), and `..` at its root leads
to its mountpoint's parent, never into the rest of the volume."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import needs_fuse, run_cli
from fusevol.fs import registry
from fusevol.plugin.protocol import Driver
from fusevol.plugin.supervisor import Supervisor
from fusevol.store import Store, volumes
from plugin_daemon import stop_driver_mounts

pytestmark = needs_fuse


@pytest.fixture
def driver(store_path, tmp_path):
    d = Driver(Supervisor(store_path))
    yield d
    for path in sorted((tmp_path / "host").glob("*"), reverse=True):
        subprocess.run(["umount", "-i", "-l", str(path)], capture_output=True)
    stop_driver_mounts(store_path, d.sup.mnt_dir)


def _options(path: str) -> set[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                return set(fields[5].split(","))
    raise AssertionError(f"{path} is not mounted")


def _host_place(tmp_path, name: str) -> str:
    path = str(tmp_path / "host" / name)
    os.makedirs(path)
    return path


def _counts(store_path: str, name: str) -> dict:
    with Store.open(store_path).read() as txn:
        return volumes.get(txn, name).mounts


def _wait(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_docker_and_the_cli_show_a_view_through_the_volumes_one_worker(driver, store_path,
                                                                         tmp_path):
    driver.create({"Name": "src"})
    driver.create({"Name": "site", "Opts": {"source": "src", "subpath": "pub",
                                            "readonly": "true"}})
    src = driver.mount({"Name": "src", "ID": "c1"})["Mountpoint"]
    os.makedirs(os.path.join(src, "pub", "sub"))
    with open(os.path.join(src, "secret"), "w") as f:
        f.write("not for views")
    docker_view = driver.mount({"Name": "site", "ID": "c2"})["Mountpoint"]
    host_view = _host_place(tmp_path, "site")
    run_cli(store_path, "mount", "site", host_view, "--background")
    host_subpath = _host_place(tmp_path, "pub")
    run_cli(store_path, "mount", "src", host_subpath, "--subpath", "pub", "--background")

    # One worker: every mount is its filesystem, and a write shows everywhere at once.
    assert [w.mountpoint for w in registry.workers(store_path)] == [src]
    for view in (docker_view, host_view, host_subpath):
        assert os.stat(view).st_dev == os.stat(src).st_dev, view
    with open(os.path.join(src, "pub", "f"), "w") as f:
        f.write("fresh")
    for view in (docker_view, host_view, host_subpath):
        with open(os.path.join(view, "f")) as f:
            assert f.read() == "fresh"
    # Read-only where the view is, at its own mount, with the volume's nosuid and nodev.
    for view in (docker_view, host_view):
        assert {"ro", "nosuid", "nodev"} <= _options(view), view
        with pytest.raises(OSError) as e:
            open(os.path.join(view, "new"), "w")
        assert e.value.errno == errno.EROFS
    assert {"rw", "nosuid", "nodev"} <= _options(host_subpath)
    with open(os.path.join(host_subpath, "new"), "w") as f:
        f.write("through a subpath")
    # `..` at a view's root is its mountpoint's parent; nothing else of the volume shows.
    for view in (docker_view, host_view, host_subpath):
        assert os.path.samestat(os.stat(os.path.join(view, "sub", "..")), os.stat(view))
        assert os.path.samestat(os.stat(os.path.join(view, "..")),
                                os.stat(os.path.dirname(view)))
        assert not os.path.exists(os.path.join(view, "secret"))
    assert _counts(store_path, "site") == {"c2": 1, f"host:{host_view}": 1}

    # Docker's containers go: the views on the host keep the worker.
    driver.unmount({"Name": "site", "ID": "c2"})
    driver.unmount({"Name": "src", "ID": "c1"})
    assert registry.worker_of(store_path, volume="src") is not None
    run_cli(store_path, "umount", host_view)
    assert not os.path.ismount(host_view) and _counts(store_path, "site") == {}
    # umount(8) never asks fusevol about a bind: the view's keeper sees it go.
    subprocess.run(["umount", "-i", host_subpath], check=True)
    _wait(lambda: registry.worker_of(store_path, volume="src") is None,
          "the worker stays after the last view went")
    assert _counts(store_path, "src") == {}
    run_cli(store_path, "mount", "src", src, "--background")  # whole again, by hand
    try:
        with open(os.path.join(src, "pub", "new")) as f:
            assert f.read() == "through a subpath"
    finally:
        run_cli(store_path, "umount", src)


def test_a_view_in_the_foreground_lasts_until_unmounted(store_path, tmp_path):
    run_cli(store_path, "volume", "create", "src")
    run_cli(store_path, "volume", "create", "site", "-o", "source=src", "-o", "subpath=d")
    place = _host_place(tmp_path, "site")
    run_cli(store_path, "mount", "src", place, "--background")
    os.mkdir(os.path.join(place, "d"))
    run_cli(store_path, "umount", place)
    proc = subprocess.Popen([sys.executable, "-m", "fusevol", "--store", store_path, "mount",
                             "site", place], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(lambda: os.path.ismount(place) or proc.poll() is not None, "never mounted")
        assert proc.poll() is None, proc.stderr.read()
        assert os.stat(place).st_dev == os.stat(os.path.join(store_path, "mnt", "src")).st_dev
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not os.path.ismount(place)
    assert registry.workers(store_path) == []
    assert _counts(store_path, "site") == {}
