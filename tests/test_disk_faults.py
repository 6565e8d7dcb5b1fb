"""A store whose disk starts failing while a volume is mounted.

The store sits on ext4 on a loop device whose backing file can be made to
answer EIO (faulty_disk.py; this kernel has no device-mapper). While the disk
fails, writes get EIO, the worker stays up and serves what it can still read,
and what it cannot read is an error, never wrong bytes. Once the disk is back,
the filesystem checked and the store opened again, verify is clean and
everything fsync'ed before the fault is there.
"""

import errno
import os
import random
import subprocess
import time

import pytest

from conftest import Mounts, needs_fuse, run_cli
from fusevol.fs import registry
from small_disks import faulty_ext4, needs_loop

MiB = 1 << 20


class Scene:
    def __init__(self, disk, mounts: Mounts):
        self.disk = disk
        self.m = mounts
        self.store = mounts.store_path
        self.kept: dict[str, bytes] = {}
        self.mp = mounts.mount("vol")
        self.write("small", random.Random("small").randbytes(3000))  # in LMDB's file
        for i in range(4):
            self.write(f"kept{i}", random.Random(f"kept{i}").randbytes(3 * MiB + 100))
        self.pid = registry.worker_of(self.store, volume="vol").pid

    def path(self, name: str) -> str:
        return os.path.join(self.mp, name)

    def write(self, name: str, data: bytes) -> None:
        with open(self.path(name), "wb") as f:
            f.write(data)
            f.flush()  # (a short write waits in Python's buffer until then)
            os.fsync(f.fileno())
        self.kept[name] = data

    def read_through_worker(self, name: str) -> bytes:
        """Read a file with the kernel's copy of its pages dropped first."""
        with open(self.path(name), "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            return f.read()

    def drop_store_pages(self) -> None:
        fd = os.open(os.path.join(self.store, "db", "data.mdb"), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def write_fails(self, name: str) -> int:
        """Write and fsync a new file; the errno it failed with."""
        with pytest.raises(OSError) as failed:
            with open(self.path(name), "wb") as f:
                f.write(os.urandom(MiB))
                os.fsync(f.fileno())
        return failed.value.errno

    def recover(self) -> None:
        """Heal the disk, stop the worker, check the filesystem, remount, verify."""
        self.disk.heal()
        if run_cli(self.store, "umount", self.mp, check=False).returncode:
            subprocess.run(["fusermount3", "-u", "-z", self.mp], capture_output=True)
        self.m.active.remove(self.mp)
        deadline = time.monotonic() + 60
        while registry.pid_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not registry.pid_alive(self.pid), "the worker did not stop"
        self.disk.heal_and_remount()
        proc = run_cli(self.store, "verify", check=False)
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
        self.mp = self.m.mount("vol", create=False)
        for name, data in self.kept.items():
            with open(self.path(name), "rb") as f:
                assert f.read() == data, f"{name} lost what was fsync'ed"


@pytest.fixture
def scene(tmp_path):
    with faulty_ext4(str(tmp_path), 300) as disk:
        m = Mounts(os.path.join(disk.point, "store"), str(tmp_path / "mnt"))
        try:
            yield Scene(disk, m)
        finally:
            disk.heal()
            m.cleanup()


@needs_fuse
@needs_loop
def test_a_failing_disk_fails_writes_and_serves_what_is_still_readable(scene):
    # Read once before: what the worker can still read is what is in memory.
    for name in scene.kept:
        scene.read_through_worker(name)
    scene.disk.fail()
    assert scene.write_fails("new") == errno.EIO
    assert scene.disk.refused()["write"] > 0, "the store did not reach the disk"
    assert registry.pid_alive(scene.pid)
    # The worker fails every change from now on...
    assert scene.write_fails("new2") == errno.EIO
    with pytest.raises(OSError) as failed:
        os.mkdir(scene.path("d"))
    assert failed.value.errno == errno.EIO
    # ...and still serves what it can read (the store's pages are still in
    # memory): files fsync'ed before, read through the worker. Large chunks
    # are read from their data files each time (direct I/O, past the page
    # cache): a file made of them is an error now, never other bytes.
    assert scene.read_through_worker("small") == scene.kept["small"]
    for name, data in scene.kept.items():
        try:
            assert scene.read_through_worker(name) == data
        except OSError as e:
            assert e.errno == errno.EIO and len(data) > MiB, (name, e)
        assert os.stat(scene.path(name)).st_size == len(data)
    assert registry.pid_alive(scene.pid)
    # A command that writes fails with one clear line.
    proc = run_cli(scene.store, "snapshot", "create", "vol@during", check=False)
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr, proc.stderr
    # What the disk cannot give is an error, never other bytes. (LMDB reads
    # through a memory map: the worker dies of SIGBUS, readers get ENOTCONN.)
    scene.drop_store_pages()
    try:
        data = scene.read_through_worker("kept0")
    except OSError as e:
        assert e.errno in (errno.EIO, errno.ENOTCONN, errno.ECONNABORTED), e
    else:
        assert data == scene.kept["kept0"]
    scene.recover()
    assert not os.path.exists(scene.path("new2"))
    proc = run_cli(scene.store, "snapshot", "ls", "vol", "--json")
    assert b"during" not in proc.stdout


@needs_fuse
@needs_loop
def test_a_disk_refusing_writes_fails_them_and_serves_every_read(scene):
    scene.disk.fail_writes()
    assert scene.write_fails("new") == errno.EIO
    assert registry.pid_alive(scene.pid)
    # Reads reach the disk, which still answers them.
    scene.drop_store_pages()
    for name, data in scene.kept.items():
        assert scene.read_through_worker(name) == data
    assert registry.pid_alive(scene.pid)
    scene.recover()
    # Writing works again after the remount.
    scene.write("after", b"back")
