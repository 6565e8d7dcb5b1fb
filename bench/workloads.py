"""The workloads of bench/compare.py. Each measures one target and returns
{row key: value}; the rows themselves (labels, units, targets) are in ROWS.

Every step that writes ends with what makes it durable (fsync, sync), so a
system that keeps data in memory pays for it where a user would.
"""

import os
import shutil
import subprocess
import sysconfig
import tarfile
import threading
import time
from dataclasses import dataclass

from targets import MiB, fio, run


@dataclass
class Row:
    label: str
    unit: str
    higher_is_better: bool
    target: str = ""          # the performance issue's target, as text
    vs_ceiling: bool = False  # the target is a ratio to the ceiling's figure


def rows(p) -> dict[str, Row]:
    """The table's rows for parameters p (sizes appear in the labels)."""
    return {
        "small": Row(f"a. {p.files} x (create, write 4 KiB, close, stat), then {p.files} unlinks",
                     "s", False, "<= 1.25x the ceiling", True),
        "small_sync": Row(f"a. {p.files} x (create, write 4 KiB, close) + sync", "s", False,
                          "<= 1.25x the ceiling", True),
        "untar": Row(f"b. untar + sync of the Python standard library ({p.tar_files} files, "
                     f"{p.tar_mib:.0f} MiB)", "s", False, "<= 1.25x the ceiling", True),
        "seq_write": Row(f"c. sequential write {p.size // MiB} MiB + fsync + sync", "MiB/s", True,
                         ">= 0.85x"),
        "seq_read": Row(f"d. sequential read {p.size // MiB} MiB, caches dropped", "MiB/s", True,
                        ">= 0.9x"),
        "rand_read": Row(f"e. random 4 KiB read, cold, {p.runtime} s", "IOPS", True, ">= 0.4x"),
        "rand_write": Row(f"e. random 4 KiB write over {p.rand_size // MiB} MiB + fsync", "IOPS",
                          True, ">= 0.5x"),
        "par1": Row(f"f. one volume alone: sequential write {p.par_size // MiB} MiB + fsync",
                    "MiB/s", True),
        "par2": Row("f. 2 volumes written at once: aggregate", "MiB/s", True),
        "par4": Row("f. 4 volumes written at once: aggregate", "MiB/s", True),
        "par2_scale": Row("f. 2 at once: aggregate / one alone", "x", True),
        "par4_scale": Row("f. 4 at once: aggregate / one alone", "x", True, ">= 0.9 (own figure)"),
        "rss_anon": Row(f"g. worker RssAnon, peak while writing {p.size // MiB} MiB", "MiB", False,
                        "< 200 MiB (writing 10 GiB)"),
        "rss_file": Row(f"g. worker RssFile, peak while writing {p.size // MiB} MiB", "MiB", False),
        "docker_run": Row("h. docker run --rm -v VOL:/data busybox true (plain dir: Docker's "
                          "local volume)", "s", False, "<= 1.3x a local volume"),
        "docker_small": Row("h. a container writes 2000 small files + sync", "s", False),
        "pgbench_tps": Row(f"h. pgbench TPC-B, scale {p.pg_scale}, 4 clients, {p.pg_runtime} s", "tps",
                           True, ">= 0.7x"),
        "pgbench_init": Row(f"h. pgbench -i (scale {p.pg_scale})", "s", False),
    }


# -- the tree to untar ----------------------------------------------------------

def make_stdlib_tar(base: str) -> tuple[str, int, float]:
    """The running Python's standard library as a tar, without what is not a source
    tree (bytecode caches, installed packages, the static libpython, extension modules).
    Returns (path, regular files, MiB of the tar)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    skip = {"__pycache__", "site-packages", "dist-packages", "lib-dynload"}

    def keep(info: tarfile.TarInfo):
        parts = info.name.split("/")
        if any(part in skip or part.startswith("config-") for part in parts):
            return None
        return info

    path = os.path.join(base, "stdlib.tar")
    with tarfile.open(path, "w") as tar:
        tar.add(stdlib, arcname="stdlib", filter=keep)
    with tarfile.open(path) as tar:
        files = sum(1 for m in tar.getmembers() if m.isfile())
    return path, files, os.path.getsize(path) / MiB


# -- a. small files -------------------------------------------------------------

def small_files(t, nfiles: int) -> dict:
    block = os.urandom(4096)
    root = os.path.join(t.dir, "small")
    os.mkdir(root)
    paths = [os.path.join(root, f"f{i:06d}") for i in range(nfiles)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    start = time.monotonic()
    for p in paths:
        fd = os.open(p, flags, 0o644)
        os.write(fd, block)
        os.close(fd)
        os.stat(p)
    for p in paths:
        os.unlink(p)
    small = time.monotonic() - start

    start = time.monotonic()
    for p in paths:
        fd = os.open(p, flags, 0o644)
        os.write(fd, block)
        os.close(fd)
    os.sync()
    small_sync = time.monotonic() - start
    shutil.rmtree(root)
    os.sync()
    return {"small": small, "small_sync": small_sync}


# -- b. untar ---------------------------------------------------------------------

def untar(t, tar_path: str) -> dict:
    dest = os.path.join(t.dir, "untar")
    os.mkdir(dest)
    start = time.monotonic()
    run(["tar", "-xf", tar_path, "-C", dest])
    os.sync()
    secs = time.monotonic() - start
    shutil.rmtree(dest)
    os.sync()
    return {"untar": secs}


# -- c, d, e, g. one big file --------------------------------------------------------

class MemorySampler:
    """RssAnon and RssFile of a process, sampled from /proc/PID/status."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float, float]] = []  # (seconds, anon MiB, file MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> tuple[float, float] | None:
        fields = {}
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("RssAnon", "RssFile"):
                        fields[key] = int(value.split()[0]) / 1024
        except OSError:
            return None
        return fields.get("RssAnon", 0.0), fields.get("RssFile", 0.0)

    def _run(self) -> None:
        start = time.monotonic()
        while True:
            value = self._read()
            if value is not None:
                self.samples.append((time.monotonic() - start, *value))
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def big_file(t, size: int, runtime: int, rand_size: int, sample_memory: bool) -> tuple[dict, list]:
    """c (sequential write), d (cold read), e (random read and write), g (memory).
    Returns the figures and the memory samples (empty unless sample_memory)."""
    out = {}
    samples = []
    pid = t.worker_pid() if sample_memory else None
    sampler = MemorySampler(pid) if pid else None
    start = time.monotonic()
    if sampler:
        with sampler:
            fio(t.dir, "seq", "--rw=write", "--bs=1M", f"--size={size}", "--end_fsync=1")
            os.sync()
    else:
        fio(t.dir, "seq", "--rw=write", "--bs=1M", f"--size={size}", "--end_fsync=1")
        os.sync()
    out["seq_write"] = size / MiB / (time.monotonic() - start)
    if sampler and sampler.samples:
        samples = sampler.samples
        out["rss_anon"] = max(s[1] for s in samples)
        out["rss_file"] = max(s[2] for s in samples)

    t.cold()
    start = time.monotonic()
    fio(t.dir, "seq", "--rw=read", "--bs=1M", f"--size={size}")
    out["seq_read"] = size / MiB / (time.monotonic() - start)

    t.cold()
    job = fio(t.dir, "seq", "--rw=randread", "--bs=4k", f"--size={size}",
              f"--runtime={runtime}", "--time_based", "--randrepeat=1")
    out["rand_read"] = job["read"]["iops"]

    start = time.monotonic()
    job = fio(t.dir, "rand", "--rw=randwrite", "--bs=4k", f"--size={rand_size}", "--end_fsync=1",
              "--randrepeat=1")
    # fio lays the file out first; count only the random writes and the fsync.
    secs = time.monotonic() - start - job["job_runtime"] / 1000 + job["write"]["runtime"] / 1000
    out["rand_write"] = rand_size / 4096 / max(secs, 1e-6)
    for name in os.listdir(t.dir):
        if name.startswith(("seq.", "rand.")):
            os.unlink(os.path.join(t.dir, name))
    os.sync()
    return out, samples


# -- f. several volumes written at once -----------------------------------------------

def parallel_writes(targets: list, size: int, counts=(1, 2, 4)) -> dict:
    """Sequential writes (fio, bs 1M, end_fsync, then sync) into the first n targets
    at once; the aggregate rate for each n, and its ratio to one alone."""
    out = {}
    for n in counts:
        procs = []
        start = time.monotonic()
        for i, t in enumerate(targets[:n]):
            procs.append(subprocess.Popen(
                ["fio", f"--name=par{n}-{i}", f"--directory={t.dir}", "--ioengine=psync",
                 "--rw=write", "--bs=1M", f"--size={size}", "--end_fsync=1",
                 "--output-format=json"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"fio exited {proc.returncode}: {err.decode(errors='replace')}")
        os.sync()
        out[f"par{n}"] = n * size / MiB / (time.monotonic() - start)
        for t in targets[:n]:
            for name in os.listdir(t.dir):
                if name.startswith(f"par{n}-"):
                    os.unlink(os.path.join(t.dir, name))
        os.sync()
    for n in counts[1:]:
        out[f"par{n}_scale"] = out[f"par{n}"] / out[f"par{counts[0]}"]
    return out
