"""Small real filesystems for a store: an ext4 image on a loop device, and one
whose disk fails on demand."""

import contextlib
import os
import shutil
import subprocess
import sys

import pytest

needs_loop = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control")
    or not all(shutil.which(t) for t in ("mkfs.ext4", "e2fsck", "losetup")),
    reason="a loop-mounted ext4 image needs root, /dev/loop-control, e2fsprogs and losetup")


def run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')}")


def make_ext4_image(image: str, size_mib: int) -> None:
    """A sparse image file with an ext4 filesystem and no blocks kept for root
    (the store's writers run as root: reserved blocks would hide the limit)."""
    with open(image, "wb") as f:
        f.truncate(size_mib << 20)
    run("mkfs.ext4", "-q", "-F", "-m", "0", image)


def unmount(path: str) -> None:
    if subprocess.run(["umount", path], capture_output=True).returncode:
        subprocess.run(["umount", "-l", path], capture_output=True)


@contextlib.contextmanager
def ext4_loop(workdir: str, size_mib: int = 300):
    """Mount a fresh `size_mib` ext4 image with -o loop; yield its mount point."""
    image = os.path.join(workdir, "ext4.img")
    point = os.path.join(workdir, "ext4")
    os.makedirs(point)
    make_ext4_image(image, size_mib)
    run("mount", "-o", "loop", image, point)
    try:
        yield point
    finally:
        unmount(point)


class FaultyExt4:
    """An ext4 filesystem on a loop device whose backing file fails on demand
    (see faulty_disk.py): `fail()`, `fail_writes()`, `heal()`."""

    def __init__(self, workdir: str, size_mib: int):
        self.image = os.path.join(workdir, "faulty.img")
        self.fuse_dir = os.path.join(workdir, "faulty")
        self.point = os.path.join(workdir, "ext4")
        self.size_mib = size_mib
        self.server: subprocess.Popen | None = None
        self.device: str | None = None

    def start(self) -> None:
        os.makedirs(self.fuse_dir)
        os.makedirs(self.point)
        make_ext4_image(self.image, self.size_mib)
        self.server = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__), "faulty_disk.py"),
             self.image, self.fuse_dir], stdout=subprocess.PIPE)
        if self.server.stdout.readline().strip() != b"ready":
            raise RuntimeError("the faulty disk did not start")
        proc = subprocess.run(["losetup", "--find", "--show", os.path.join(self.fuse_dir, "disk.img")],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"losetup: {proc.stderr}")
        self.device = proc.stdout.strip()
        self.mount()

    def mount(self) -> None:
        run("mount", "-t", "ext4", self.device, self.point)

    def _set(self, mode: str) -> None:
        with open(os.path.join(self.fuse_dir, "control"), "w") as f:
            f.write(mode)

    def fail(self) -> None:
        self._set("fail")

    def fail_writes(self) -> None:
        self._set("fail-writes")

    def heal(self) -> None:
        self._set("ok")

    def refused(self) -> dict[str, int]:
        """Requests the disk refused so far, by kind (read, write, fsync)."""
        with open(os.path.join(self.fuse_dir, "control")) as f:
            return {k: int(v) for k, v in (part.split("=") for part in f.read().split()[1:])}

    def heal_and_remount(self) -> str:
        """Heal the disk, check the filesystem as after a crash, mount it again;
        return e2fsck's report. Nothing may hold files on it."""
        self.heal()
        run("umount", self.point)
        proc = subprocess.run(["e2fsck", "-f", "-y", self.device], capture_output=True, text=True)
        if proc.returncode >= 4:  # 1 and 2: errors found and fixed
            raise RuntimeError(f"e2fsck exited {proc.returncode}: {proc.stdout}{proc.stderr}")
        self.mount()
        return proc.stdout

    def stop(self) -> None:
        if self.server is None:
            return
        self.heal()
        unmount(self.point)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
        subprocess.run(["fusermount3", "-u", "-z", self.fuse_dir], capture_output=True)
        try:
            self.server.wait(30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.server = None


@contextlib.contextmanager
def faulty_ext4(workdir: str, size_mib: int = 300):
    disk = FaultyExt4(workdir, size_mib)
    try:
        disk.start()
        yield disk
    finally:
        disk.stop()
