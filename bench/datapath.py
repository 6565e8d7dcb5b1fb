"""Where a big sequential write and a cold read go, for memfs and fusevol.

For each system: the size of the requests the kernel sends (its fuse
tracepoints, when /sys/kernel/tracing has them), then a sequential write
(fio, bs 1M, end_fsync, then sync) and a cold sequential read, each with its
rate, the FUSE server's CPU time by thread (its FUSE thread; trio's worker
threads, which hash and read chunks; the others: the store thread), its minor
page faults, how long those threads waited for a CPU (runnable, on a loaded
machine) and, while writing, its peak RssAnon and RssFile. CPU time per GiB is the figure
to compare between two trees on a shared machine, where wall time moves with
the load of others.

    PYTHONPATH=. /opt/fusevol/bin/python bench/datapath.py [--size 1G] [--systems memfs,fusevol]
        [--no-trace]

Run as root (mounts, drop_caches, tracing).
"""

import argparse
import collections
import os
import re
import sys
import time

from targets import MAKERS, MiB, fio, parse_size
from workloads import MemorySampler

TRACING = "/sys/kernel/tracing"
_SEND = re.compile(r"fuse_request_send: connection (\d+) req (\d+) opcode \d+ \((\w+)\) len (\d+)")
_END = re.compile(r"fuse_request_end: connection (\d+) req (\d+) len (\d+)")


def _tracing(path: str, value: str) -> None:
    with open(os.path.join(TRACING, path), "w") as f:
        f.write(value)


def traced(fn, mountpoint: str) -> tuple[collections.Counter, collections.Counter]:
    """Run fn with the fuse tracepoints on: (WRITE request lengths, READ reply
    lengths) of the mount's own connection, headers included, each with its count."""
    dev = os.stat(mountpoint).st_dev
    connection = str((os.major(dev) << 20) | os.minor(dev))  # the kernel's dev_t
    _tracing("trace", "")
    _tracing("buffer_size_kb", "16384")
    _tracing("events/fuse/enable", "1")
    try:
        fn()
    finally:
        _tracing("events/fuse/enable", "0")
    writes, reads, opcode = collections.Counter(), collections.Counter(), {}
    with open(os.path.join(TRACING, "trace")) as f:
        for line in f:
            if (m := _SEND.search(line)) and m[1] == connection:
                opcode[m[2]] = m[3]
                if m[3] == "FUSE_WRITE":
                    writes[int(m[4])] += 1
            elif (m := _END.search(line)) and m[1] == connection and \
                    opcode.get(m[2]) == "FUSE_READ":
                reads[int(m[3])] += 1
    return writes, reads


class Threads:
    """CPU seconds, seconds spent runnable but waiting for a CPU (the
    scheduler's run queue, /proc/PID/task/TID/schedstat) and minor faults of a
    process's threads: its first thread (pyfuse3's loop), trio's worker threads
    (fusevol's hashing and chunk reads, named "Trio thread N") and the others
    (fusevol's store thread). A thread's wall time beyond the two is time it
    slept: waiting for work, a lock or the disk."""

    def __init__(self, pid: int):
        self.pid = pid
        self.start = self._read()

    def _read(self) -> dict:
        out = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat") as f:
                    head, fields = f.read().rsplit(")", 1)
            except OSError:
                continue  # a thread that ended meanwhile
            fields = fields.split()
            name = head.partition("(")[2]
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                    queued_ns = int(f.read().split()[1])
            except (OSError, IndexError):  # ended meanwhile, or no schedstats
                queued_ns = 0
            out[int(tid)] = (int(fields[11]) + int(fields[12]), int(fields[7]), name,
                             queued_ns / 1e9)
        return out

    def since(self) -> dict:
        now, tick = self._read(), os.sysconf("SC_CLK_TCK")
        cpu, queued, faults = collections.Counter(), collections.Counter(), 0
        for tid, (ticks, minflt, name, waited) in now.items():
            ticks0, minflt0, _, waited0 = self.start.get(tid, (0, 0, name, 0.0))
            faults += minflt - minflt0
            group = ("fuse_thread" if tid == self.pid else
                     "trio_threads" if name.startswith("Trio thread") else "other_threads")
            cpu[group] += (ticks - ticks0) / tick
            queued[group] += waited - waited0
        out = {f"{group}_s": cpu[group] for group in GROUPS}
        out.update({f"{group}_queued_s": queued[group] for group in GROUPS})
        out["minor_faults"] = faults
        return out


GROUPS = ("fuse_thread", "trio_threads", "other_threads")


def measure(system: str, base: str, size: int, trace: bool) -> dict:
    t = MAKERS[system](base)
    out = {}
    try:
        write = lambda: fio(t.dir, "seq", "--rw=write", "--bs=1M", f"--size={size}",  # noqa: E731
                            "--end_fsync=1")
        read = lambda: fio(t.dir, "seq", "--rw=read", "--bs=1M", f"--size={size}")  # noqa: E731
        if trace and os.path.exists(os.path.join(TRACING, "events/fuse")):
            out["write_requests"], _ = traced(write, t.dir)
            t.cold()
            _, out["read_replies"] = traced(read, t.dir)
            os.unlink(os.path.join(t.dir, "seq.0.0"))
            os.sync()
        pid = t.worker_pid()
        threads, start = Threads(pid), time.monotonic()
        with MemorySampler(pid) as memory:
            write()
            os.sync()
        out["write_mib_s"] = size / MiB / (time.monotonic() - start)
        out["write"] = threads.since()
        out["rss_anon_mib"] = max((anon for _, anon, _ in memory.samples), default=0.0)
        out["rss_file_mib"] = max((file for _, _, file in memory.samples), default=0.0)
        t.cold()
        pid = t.worker_pid()  # fusevol's cold() mounts again: a new worker
        threads, start = Threads(pid), time.monotonic()
        read()
        out["read_mib_s"] = size / MiB / (time.monotonic() - start)
        out["read"] = threads.since()
    finally:
        t.close()
    return out


def _sizes(counts: collections.Counter) -> str:
    return ", ".join(f"{n} x {length}" for length, n in counts.most_common(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--systems", default="memfs,fusevol")
    ap.add_argument("--base", default="/var/tmp", help="where the temp dirs go")
    ap.add_argument("--no-trace", action="store_true", help="skip the request sizes")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/datapath.py needs root (FUSE mounts, drop_caches, tracing)")
    size = parse_size(args.size)
    gib = size / (1 << 30)
    for system in args.systems.split(","):
        r = measure(system, args.base, size, trace=not args.no_trace)
        if "write_requests" in r:
            print(f"{system}: WRITE requests (bytes with header): {_sizes(r['write_requests'])}")
            print(f"{system}: READ replies (bytes with header): {_sizes(r['read_replies'])}")
        for what in ("write", "read"):
            c = r[what]
            print(f"{system}: {what} {r[what + '_mib_s']:.0f} MiB/s; CPU per GiB: FUSE thread "
                  f"{c['fuse_thread_s'] / gib:.2f} s, trio's worker threads "
                  f"{c['trio_threads_s'] / gib:.2f} s, other threads {c['other_threads_s'] / gib:.2f} s; "
                  f"minor faults per GiB {c['minor_faults'] / gib:.0f}; waited for a CPU per GiB: "
                  f"FUSE thread {c['fuse_thread_queued_s'] / gib:.2f} s, trio's worker threads "
                  f"{c['trio_threads_queued_s'] / gib:.2f} s, other threads "
                  f"{c['other_threads_queued_s'] / gib:.2f} s"
                  + (f"; peak RssAnon {r['rss_anon_mib']:.0f} MiB, RssFile {r['rss_file_mib']:.0f} MiB"
                     if what == "write" else ""))


if __name__ == "__main__":
    main()
