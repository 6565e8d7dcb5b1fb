#!/usr/bin/env python3
"""Where an idle worker's own memory goes, page by page (root: reads
/proc/PID/pagemap and /proc/kpagecount).

N volumes are mounted through a forkserver as the daemon's (workers forked
from it), each with a few files written and listed as idle_memory.py does;
once they are idle, one worker's pages that are its own (a physical page
mapped by it alone, not the forkserver's) are sorted by what changed in
them against the forkserver's page at the same address, each changed word
named after the forkserver's object it lies in: a reference count, a code
object's header (its warm-up counter) or bytecode, another field, or no
object Python knows of (the allocators' own words, dict keys, the worker's
new objects). A page whose bytes are all back to the forkserver's was
written and restored (a reference count up and down). Before its first
fork the forkserver has a throwaway child write down where its objects lie.

    sudo bench/idle_pages.py [--volumes 4] [--settle 12] [--warm-up 5]
"""

import argparse
import bisect
import collections
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT_DIR)

PAGE = 4096
CODE_HEADER = 184  # CPython 3.11: PyCodeObject's fields before its bytecode
WARMUP = 48  # the word of co_flags (never changes) and co_warmup
HAVE_GC = 1 << 14
SEPARATE_TABLES = (dict, list, set, frozenset, bytearray, collections.deque)


# -- the forkserver, with its objects written down before its first fork ------

def serve_forks(fd: int, map_path: str) -> None:
    real_fork = os.fork
    mapped = False

    def fork():
        nonlocal mapped
        if not mapped:
            mapped = True
            pid = real_fork()
            if pid == 0:  # a child writes the map: the forkserver's pages stay as they are
                try:
                    _write_map(map_path)
                finally:
                    os._exit(0)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # reaped by the kernel (SIGCHLD ignored)
                pass
        return real_fork()

    os.fork = fork
    from fusevol.fs import forkserver
    forkserver.main(fd)


def _write_map(path: str) -> None:
    """Address, size and kind of every object reachable from the collector's."""
    import gc
    import types

    seen = {}
    todo = list(gc.get_objects()) + [sys.modules]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
        if type(obj) is types.CodeType:  # not tracked by the collector
            todo.extend((obj.co_consts, obj.co_names, obj.co_exceptiontable, obj.co_varnames,
                         obj.co_filename, obj.co_name, obj.co_qualname, obj.co_linetable))
    with open(path, "w") as f:
        for address, obj in seen.items():
            kind = type(obj).__name__
            if type(obj) in SEPARATE_TABLES:  # the table is an allocation of its own
                size = type(obj).__basicsize__
            else:
                try:  # less the collector's header, which lies before the object
                    size = sys.getsizeof(obj) - (16 if type(obj).__flags__ & HAVE_GC else 0)
                except Exception:
                    size = 16
            if type(obj) is types.CodeType:
                kind, size = "code", CODE_HEADER + len(obj.co_code)
            elif isinstance(obj, type):
                kind = "type"
            f.write(f"{address} {size} {kind}\n")


# -- the volumes ----------------------------------------------------------------

def mount_volumes(store: str, count: int, map_path: str, warm_up: float):
    from fusevol.fs import forkserver, registry
    from fusevol.store import Store, volumes

    class MappedForkServer(forkserver.ForkServer):
        def start(self) -> None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--serve-forks",
                 str(theirs.fileno()), map_path],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                env={**os.environ, "PYTHONPATH": ROOT_DIR})
            theirs.close()
            self._sock = ours

    server = MappedForkServer()
    server.start()
    time.sleep(warm_up)  # the forkserver's start (its rehearsal) over before the first Mount
    mountpoints = []
    for i in range(count):
        name = f"idle{i}"
        subprocess.run([sys.executable, "-m", "fusevol", "--store", store, "volume", "create",
                        name], check=True, capture_output=True, cwd=ROOT_DIR,
                       env={**os.environ, "PYTHONPATH": ROOT_DIR})
        with Store.open(store).read() as txn:
            spec = volumes.mount_spec(txn, name)
        mp = os.path.join(store, "mp", name)
        os.makedirs(mp)
        registry.start_worker(store, spec, mp, forkserver=server)
        mountpoints.append(mp)
        for j in range(3):  # a volume that was used, as idle_memory.py's
            with open(os.path.join(mp, f"f{j}"), "wb") as f:
                f.write(os.urandom(4096))
        os.listdir(mp)
    return server, mountpoints


# -- the pages ------------------------------------------------------------------

def _maps(pid: int):
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = os.path.basename(fields[5]) if len(fields) > 5 else "[anon]"
            yield start, end, fields[1], name or "[anon]"


def _frames(pid: int, start: int, end: int) -> list:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        raw = f.read((end - start) // PAGE * 8)
    return [v & ((1 << 55) - 1) if v >> 63 else None
            for v in struct.unpack(f"{len(raw) // 8}Q", raw)]


def _read(pid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(address)
        return f.read(size)


class Objects:
    def __init__(self, path: str):
        rows = []
        with open(path) as f:
            for line in f:
                address, size, kind = line.split()
                rows.append((int(address), int(size), kind))
        rows.sort()
        self.rows, self.starts = rows, [r[0] for r in rows]

    def at(self, address: int):
        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.rows[i][0] + self.rows[i][1]:
            return self.rows[i]
        return None


def _word(objects: Objects, address: int) -> str:
    found = objects.at(address)
    if found is None:
        return "no object Python knows of"
    start, _, kind = found
    offset = address - start
    if offset < 8:
        return "reference count"
    if kind == "code":
        if offset // 8 * 8 == WARMUP:
            return "code: warm-up counter"
        return "code: bytecode" if offset >= CODE_HEADER else "code: other header field"
    return f"{kind}: a field"


def breakdown(server: int, worker: int, objects: Objects) -> None:
    inherited = {start: end for start, end, _, _ in _maps(server)}
    reasons, places, words = collections.Counter(), collections.Counter(), collections.Counter()
    with open("/proc/kpagecount", "rb") as counts:
        def mapped_once(frame):
            counts.seek(frame * 8)
            return struct.unpack("Q", counts.read(8))[0] == 1

        for start, end, perms, name in _maps(worker):
            if "w" not in perms:
                continue
            mine = _frames(worker, start, end)
            theirs = _frames(server, start, min(end, inherited[start])) if start in inherited else []
            for i, frame in enumerate(mine):
                if frame is None or not mapped_once(frame):
                    continue
                if i >= len(theirs) or theirs[i] is None:
                    reasons["new (not the forkserver's)"] += 1
                    places[name] += 1
                    continue
                if theirs[i] == frame:
                    continue
                places[name] += 1
                address = start + i * PAGE
                a, b = _read(worker, address, PAGE), _read(server, address, PAGE)
                if a == b:
                    reasons["written and restored (reference counts up and down)"] += 1
                    continue
                changed = {_word(objects, address + o) for o in range(0, PAGE, 8)
                           if a[o:o + 8] != b[o:o + 8]}
                for why in changed:
                    words[why] += 1
                reasons[_page_reason(changed)] += 1
    total = sum(reasons.values())
    print(f"worker {worker}: {total} pages of its own ({total * PAGE / 2**20:.2f} MiB)")
    print("by mapping:")
    for name, n in places.most_common(8):
        print(f"  {n:6d}  {name}")
    print("by what changed in the page (against the forkserver's):")
    for why, n in reasons.most_common():
        print(f"  {n:6d}  {n * PAGE / 2**20:5.2f} MiB  {why}")
    print("pages with a changed word of each kind:")
    for why, n in words.most_common(12):
        print(f"  {n:6d}  {why}")


def _page_reason(changed: set) -> str:
    """One name for a page: the costliest kind of change in it."""
    for kind in ("code: bytecode", "code: warm-up counter", "no object Python knows of"):
        if kind in changed:
            return kind
    if changed == {"reference count"}:
        return "reference counts only"
    return "other fields of objects (and reference counts)"


def main() -> int:
    if sys.argv[1:2] == ["--serve-forks"]:
        serve_forks(int(sys.argv[2]), sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--settle", type=float, default=12,
                    help="seconds idle before reading the pages (the idle upkeep runs after 5)")
    ap.add_argument("--warm-up", type=float, default=5,
                    help="seconds between the forkserver's start and the first Mount")
    args = ap.parse_args()
    os.environ["FUSEVOL_MERGE_PAGES"] = "0"  # pages as the forkserver leaves them
    from fusevol.fs import registry

    store = tempfile.mkdtemp(prefix="fusevol-pages-")
    map_path = os.path.join(store, "objects.txt")
    server, mountpoints = mount_volumes(store, args.volumes, map_path, args.warm_up)
    try:
        time.sleep(args.settle)
        workers = sorted(w.pid for w in registry.workers(store))
        breakdown(server.pid, workers[len(workers) // 2], Objects(map_path))
    finally:
        for mp in mountpoints:
            registry.unmount(store, mp)
        server.close()
        shutil.rmtree(store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
