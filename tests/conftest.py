"""Shared fixtures: private stores, the fusevol CLI, and real FUSE mounts."""

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from fusevol.store import Store

ROOT = os.geteuid() == 0
HAVE_FUSE = ROOT and os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None

needs_fuse = pytest.mark.skipif(
    not HAVE_FUSE, reason="real FUSE mounts need root, /dev/fuse and fusermount3 (fuse3)")


def run_cli(store: str, *args, check: bool = True, input: bytes | None = None,
            timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `fusevol --store STORE ARGS...` as a user would (env: variables to add)."""
    proc = subprocess.run([sys.executable, "-m", "fusevol", "--store", store, *args],
                          capture_output=True, input=input, timeout=timeout,
                          env={**os.environ, **env} if env else None)
    if check and proc.returncode != 0:
        raise AssertionError(f"fusevol {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stderr.decode(errors='replace')}")
    return proc


@pytest.fixture
def store_path(tmp_path):
    path = str(tmp_path / "store")
    yield path
    store = Store._instances.pop(path, None)
    if store is not None:
        store.close()


@pytest.fixture
def store(store_path):
    return Store.open(store_path)


class Mounts:
    """Mount volumes of one store for a test, and unmount whatever is left after it."""

    def __init__(self, store_path: str, base: str):
        self.store_path = store_path
        self.base = base
        self.active: list[str] = []

    def create(self, name: str, *opts: str) -> None:
        args = ["volume", "create", name]
        for opt in opts:
            args += ["-o", opt]
        run_cli(self.store_path, *args)

    def mount(self, name: str, *flags: str, create: bool = True, env: dict | None = None) -> str:
        """Mount in the background; env reaches the worker (FUSEVOL_* knobs)."""
        if create and run_cli(self.store_path, "volume", "inspect", name, check=False).returncode:
            self.create(name)
        mountpoint = os.path.join(self.base, f"{name}-{uuid.uuid4().hex[:6]}")
        os.makedirs(mountpoint)
        run_cli(self.store_path, "mount", name, mountpoint, "--background", *flags, env=env)
        self.active.append(mountpoint)
        return mountpoint

    def umount(self, mountpoint: str) -> None:
        run_cli(self.store_path, "umount", mountpoint)
        self.active.remove(mountpoint)

    def cleanup(self) -> None:
        for mountpoint in self.active:
            if run_cli(self.store_path, "umount", mountpoint, check=False).returncode:
                subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
        self.active.clear()


@pytest.fixture
def mounts(store_path, tmp_path):
    if not HAVE_FUSE:
        pytest.skip("real FUSE mounts need root, /dev/fuse and fusermount3 (fuse3)")
    m = Mounts(store_path, str(tmp_path / "mnt"))
    yield m
    m.cleanup()


@pytest.fixture
def vol(mounts):
    """A fresh volume mounted read-write; the path of its root."""
    return mounts.mount("vol")


@pytest.fixture(scope="session")
def ceph():
    """A one-node Ceph cluster with radosgw on 127.0.0.1 for the whole session
    (tests/ceph_cluster.py), with a user whose keys it gives. Skipped only
    where Ceph's packages are not installed, and never in CI (scripts/setup.sh
    --test installs them there)."""
    from ceph_cluster import CephCluster, missing_binaries

    missing = missing_binaries()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"Ceph is not installed ({', '.join(missing)}): run scripts/setup.sh --test")
        pytest.skip(f"Ceph is not installed ({', '.join(missing)}): scripts/setup.sh --test installs it")
    if not ROOT:
        pytest.skip("the Ceph test cluster runs as root")
    cluster = CephCluster().start()
    yield cluster
    cluster.stop()
