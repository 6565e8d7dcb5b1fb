"""What the benches run on: directories served by different systems, on one disk.

Each target has a `dir` to work in, `cold()` to empty the caches that would
make a read warm, `worker_pid()` (the FUSE process, if any) and `close()`.

- Native: a plain directory on the disk under test (the baseline).
- Memfs: bench/memfs.py, the in-memory pyfuse3 filesystem (the stack's ceiling).
- Volume: a volume of a fresh fusevol store, mounted with the CLI (VolumeXattrOff:
  one made with -o xattr=off).
- Rclone: rclone's FUSE mount of a local folder (a peer FUSE driver).
"""

import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
FUSEVOL = [sys.executable, "-m", "fusevol"]
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def fio(target_dir: str, name: str, *args: str) -> dict:
    out = run(["fio", f"--name={name}", f"--directory={target_dir}", "--ioengine=psync",
               "--output-format=json", *args]).stdout
    return json.loads(out[out.index("{"):])["jobs"][0]


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM, kernel {platform.release()}, "
            f"Python {platform.python_version()}")


def start_fuse_process(cmd: list, mountpoint: str, log_path: str, what: str,
                       timeout: float = 30) -> subprocess.Popen:
    """Start a FUSE server in the foreground and wait until its mount answers.
    Its messages go to a file: a pipe nobody reads would stall it once full."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None:
            with open(log_path, errors="replace") as f:
                raise RuntimeError(f"{what} exited {proc.returncode} before mounting: {f.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{what} did not mount {mountpoint} within {timeout:.0f} s")
        time.sleep(0.02)
    os.stat(mountpoint)  # answered: the mount serves
    return proc


def unmount_and_wait(path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    subprocess.run(["fusermount3", "-u", path], capture_output=True)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True)
        proc.kill()
        proc.wait()


# -- the targets ----------------------------------------------------------------

class Native:
    """A plain directory on the disk that holds the store."""

    name = "native"

    def __init__(self, base: str):
        self.dir = tempfile.mkdtemp(prefix="native-", dir=base)

    def cold(self) -> None:
        drop_caches()

    def worker_pid(self) -> int | None:
        return None

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Volume:
    """A volume of a fusevol store, mounted through the CLI as a user would.

    By default a fresh store of its own; pass `store_root` of another Volume to
    add a volume to that store (several volumes of one store share its LMDB)."""

    name = "fusevol"

    def __init__(self, base: str, env: dict | None = None, *, store_root: str | None = None,
                 volume: str = "bench", opts: tuple = ()):
        self.owns_root = store_root is None
        self.root = store_root or tempfile.mkdtemp(prefix="fusevol-", dir=base)
        self.store = os.path.join(self.root, "store")
        self.volume = volume
        self.dir = os.path.join(self.root, "mnt" if volume == "bench" else f"mnt-{volume}")
        os.makedirs(self.dir)
        self.env = {**os.environ, **(env or {})}
        self.cli("volume", "create", volume, *(arg for opt in opts for arg in ("-o", opt)))
        self.mount()

    def cli(self, *args) -> str:
        return run(FUSEVOL + ["--store", self.store, *args], env=self.env).stdout

    def mount(self) -> None:
        self.cli("mount", self.volume, self.dir, "--background")

    def umount(self) -> None:
        self.cli("umount", self.dir)

    def cold(self) -> None:
        """Empty the kernel's caches of the volume too: a new mount starts with none."""
        self.umount()
        drop_caches()
        self.mount()

    def worker_pid(self) -> int | None:
        for path in glob.glob(os.path.join(self.store, "run", "workers", "*.json")):
            with open(path) as f:
                info = json.load(f)
            if info.get("volume") == self.volume:
                return info["pid"]
        return None

    def df(self) -> dict:
        return json.loads(self.cli("df", "--json"))

    def close(self) -> None:
        try:
            self.umount()
        except subprocess.CalledProcessError:
            subprocess.run(["fusermount3", "-u", "-z", self.dir], capture_output=True)
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


class VolumeXattrOff(Volume):
    """A volume made with `-o xattr=off`: no extended attributes, so the kernel asks
    nothing before each write(2) (README, the filesystem)."""

    name = "fusevol-xattr-off"

    def __init__(self, base: str, env: dict | None = None, **kw):
        super().__init__(base, env, opts=("xattr=off",), **kw)


class FuseProcess:
    """A filesystem served by a process of its own (set self.proc, self.dir, self.root)."""

    def cold(self) -> None:
        # A remount would lose an in-memory filesystem's data: the kernel's page
        # cache and dentries go, as for the others.
        drop_caches()

    def worker_pid(self) -> int | None:
        return self.proc.pid

    def close(self) -> None:
        unmount_and_wait(self.dir, self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


class Memfs(FuseProcess):
    """bench/memfs.py: the same FUSE stack and kernel options, no storage."""

    name = "memfs"

    args: tuple = ()

    def __init__(self, base: str):
        self.root = tempfile.mkdtemp(prefix="memfs-", dir=base)
        self.dir = os.path.join(self.root, "mnt")
        os.makedirs(self.dir)
        self.proc = start_fuse_process(
            [sys.executable, os.path.join(HERE, "memfs.py"), *self.args, self.dir],
            self.dir, os.path.join(self.root, "memfs.log"), "memfs")


class MemfsXattrOff(Memfs):
    """The ceiling of a volume made with -o xattr=off: memfs answering ENOSYS to xattrs."""

    name = "memfs-xattr-off"
    args = ("--no-xattr",)


RCLONE_OPTIONS = [
    "--config", "/dev/null",           # a local path needs no remote
    "--vfs-cache-mode", "writes",      # needed for random writes; files go through a cache
    "--allow-other", "--default-permissions", "--write-back-cache",
    "--attr-timeout", "60s", "--dir-cache-time", "60s",  # as long as fusevol's timeouts
    "-o", "noatime",
]


def rclone_missing() -> str | None:
    """Why rclone rows cannot run here, or None."""
    if shutil.which("rclone") is None:
        return "rclone is not installed (apt-get install -y rclone)"
    return None


class Rclone(FuseProcess):
    """rclone's FUSE mount of a local folder; its VFS cache on the same disk."""

    name = "rclone"

    def __init__(self, base: str, extra: list | None = None):
        self.extra = extra or []
        self.root = tempfile.mkdtemp(prefix="rclone-", dir=base)
        self.data = os.path.join(self.root, "data")
        self.cache = os.path.join(self.root, "cache")
        self.dir = os.path.join(self.root, "mnt")
        for path in (self.data, self.cache, self.dir):
            os.makedirs(path)
        self.mount()

    def mount(self) -> None:
        self.proc = start_fuse_process(
            ["rclone", "mount", self.data, self.dir, "--cache-dir", self.cache, *RCLONE_OPTIONS,
             *self.extra],
            self.dir, os.path.join(self.root, "rclone.log"), "rclone mount")


MAKERS = {"native": Native, "memfs": Memfs, "fusevol": Volume, "memfs-xattr-off": MemfsXattrOff,
          "fusevol-xattr-off": VolumeXattrOff, "rclone": Rclone}
