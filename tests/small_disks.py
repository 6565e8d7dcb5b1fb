"""Small real filesystems for a store: an ext4 image on a loop device."""

import contextlib
import os
import subprocess


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
