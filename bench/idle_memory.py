#!/usr/bin/env python3
"""What an idle mounted volume costs in memory: N volumes mounted through the
plugin protocol (as dockerd mounts them, workers forked from the daemon's
forkserver), each with a few files written, then left idle; every worker's
memory read from /proc/PID/smaps_rollup.

PSS shares each shared page among the processes that map it (what N volumes
cost together, divided by N); USS is what the worker alone holds (what one
volume more would add); RssAnon and RssFile apart, since the LMDB map's pages
are page cache, not the worker's own.

With the host's same-page merging on (/sys/kernel/mm/ksm/run = 1; the
forkserver offers its workers' inherited memory to it, fs/pagemerge.py),
--ksm-scans N waits, once the volumes are idle, for ksmd to go N times over
all the memory offered (it merges a page on its second look).

    bench/idle_memory.py [--volumes 100] [--store DIR] [--ksm-scans 2]
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT_DIR)

from fusevol.fs import registry  # noqa: E402


class _Conn(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=120)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def call(sock: str, endpoint: str, body: dict) -> dict:
    conn = _Conn(sock)
    try:
        conn.request("POST", endpoint, json.dumps(body))
        reply = json.loads(conn.getresponse().read() or b"{}")
    finally:
        conn.close()
    if reply.get("Err"):
        raise RuntimeError(f"{endpoint}: {reply['Err']}")
    return reply


def rollup(pid: int) -> dict[str, int]:
    """KiB figures of /proc/PID/smaps_rollup and RssAnon/RssFile of status."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1])
    out["USS"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def wait_socket(proc: subprocess.Popen, sock: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fusevol serve exited {proc.returncode}")
        try:
            call(sock, "/Plugin.Activate", {})
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("fusevol serve did not answer")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=100)
    ap.add_argument("--store", help="store folder (default: a new one in /tmp, removed after)")
    ap.add_argument("--settle", type=float, default=5,
                    help="seconds idle before measuring (the idle upkeep runs 5 s after "
                         "a volume's last change: 15 leaves it out of the idle CPU)")
    ap.add_argument("--ksm-scans", type=int, default=0,
                    help="wait for ksmd's full scans of the offered memory (KSM on only)")
    args = ap.parse_args()
    store = args.store or tempfile.mkdtemp(prefix="fusevol-idle-")
    sock = os.path.join(store, "bench.sock")
    env = {**os.environ, "PYTHONPATH": ROOT_DIR, "FUSEVOL_FORKSERVER": "1"}
    log = open(os.path.join(store, "serve.log"), "ab")
    # In this tree: `python -m` puts the working directory first on sys.path.
    daemon = subprocess.Popen([sys.executable, "-m", "fusevol", "serve", "--store", store,
                               "--socket", sock], env=env, stdout=log, stderr=log, cwd=ROOT_DIR)
    names = [f"idle{i:03d}" for i in range(args.volumes)]
    try:
        wait_socket(daemon, sock)
        started = time.monotonic()
        for name in names:
            call(sock, "/VolumeDriver.Create", {"Name": name, "Opts": {}})
            path = call(sock, "/VolumeDriver.Mount", {"Name": name, "ID": "bench-" + name})["Mountpoint"]
            for i in range(3):  # a volume that was used: a few files written and read back
                with open(os.path.join(path, f"f{i}"), "wb") as f:
                    f.write(os.urandom(4096))
            os.listdir(path)
        mount_s = time.monotonic() - started
        time.sleep(args.settle)  # idle: background flushes done
        workers = registry.workers(store)
        before = {w.pid: _cpu_ns(w.pid) for w in workers}
        ticks = {w.pid: _cpu_ticks(w.pid) for w in workers}
        time.sleep(10)
        idle_ns = sum(_idle_ns(before[w.pid], _cpu_ns(w.pid)) for w in workers)
        idle_ticks = sum(_cpu_ticks(w.pid) - ticks[w.pid] for w in workers)
        merged = _wait_ksm(args.ksm_scans)
        figures = [rollup(w.pid) for w in workers]
        own = [rollup(daemon.pid)] + [rollup(int(p)) for p in _children(daemon.pid)
                                      if int(p) not in {w.pid for w in workers}]
        print(f"{len(workers)} idle volumes mounted ({mount_s:.1f} s to create, mount and "
              f"write them), per worker (MiB):")
        for key in ("Pss", "USS", "RssAnon", "RssFile", "Rss"):
            values = [f[key] / 1024 for f in figures]
            print(f"  {key:<8} median {statistics.median(values):6.2f}  "
                  f"min {min(values):6.2f}  max {max(values):6.2f}")
        print(f"CPU of a worker in 10 s idle: {idle_ns / len(workers) / 1e6:.2f} ms "
              f"(threads alive throughout); utime+stime of all {len(workers)}: "
              f"{idle_ticks * 1000 // os.sysconf('SC_CLK_TCK')} ms")
        if merged is not None:
            print(f"KSM: {merged}")
        print(f"daemon and forkserver PSS: {sum(f['Pss'] for f in own) / 1024:.1f} MiB")
        total = sum(f["Pss"] for f in figures + own) / 1024
        print(f"all of fusevol: {total:.1f} MiB PSS, {total / len(workers):.2f} MiB a volume")
    finally:
        for name in names:
            try:
                call(sock, "/VolumeDriver.Unmount", {"Name": name, "ID": "bench-" + name})
            except (OSError, RuntimeError):
                pass
        daemon.terminate()
        daemon.wait(timeout=120)
        log.close()
        if not args.store:
            shutil.rmtree(store, ignore_errors=True)
    return 0


def _cpu_ns(pid: int) -> dict[str, int]:
    """CPU time of each of the process's threads, to the nanosecond (the scheduler's
    own count: utime and stime in /proc/PID/stat are sampled at each 10 ms tick)."""
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                threads[tid] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return threads


def _idle_ns(before: dict[str, int], after: dict[str, int]) -> int:
    """What the threads used between the two counts (a thread that ended
    meanwhile, such as trio's idle cached thread, is left out: its count is gone)."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items())


def _cpu_ticks(pid: int) -> int:
    """utime + stime of the process, ended threads included (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


KSM = "/sys/kernel/mm/ksm"


def _ksm(name: str) -> int:
    with open(os.path.join(KSM, name)) as f:
        return int(f.read())


def _wait_ksm(scans: int) -> str | None:
    """With KSM on: wait for `scans` more full scans by ksmd; what it shares then."""
    try:
        if _ksm("run") != 1:
            return None
    except OSError:
        return None
    target = _ksm("full_scans") + scans
    scanned, stalled = _ksm("pages_scanned"), 0
    while _ksm("full_scans") < target:
        time.sleep(1)
        stalled = 0 if _ksm("pages_scanned") != scanned else stalled + 1
        scanned = _ksm("pages_scanned")
        if stalled >= 10:  # ksmd has nothing to scan: no memory offered to it
            break
    return (f"{_ksm('pages_sharing')} pages merged into {_ksm('pages_shared')} "
            f"(pages_to_scan {_ksm('pages_to_scan')}, sleep_millisecs {_ksm('sleep_millisecs')})")


def _children(pid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return out.stdout.split()


if __name__ == "__main__":
    sys.exit(main())
