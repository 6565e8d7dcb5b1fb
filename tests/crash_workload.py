"""The two actors of a crash round, each a thread driven by a seeded RNG.

- Workload: file operations on a mounted volume (writes with and without
  fsync, truncates, renames of files and folders, hardlinks, deletes, fsync of
  folders, syncs through the worker's flush), each recorded in a History before
  its system call and marked done when it returns. Reads compare what a live
  volume shows with everything that returned (stale or torn reads fail).
- PluginLoad: Docker's Create/Mount/Unmount/Remove calls on the driver's socket,
  with a model of what each acknowledged call did to the mount counts.

Both stop at the first error once their victim was killed; any error before
that is a failure of the round.
"""

import errno
import os
import random
import threading
import time

from crash_model import Event, History
from fusevol.fs import registry

BLOCK = 128 * 1024
MAX_FILE = 1 << 20
FIXED_DIRS = ("d0", "d1")     # always there (a view shows d0)
MOVING_DIRS = ("d2", "d3")    # made, renamed into each other, removed
NAMES = ("f0", "f1", "f2", "f3")
DEAD = (errno.ENOTCONN, errno.ECONNABORTED)


def pattern(tag: int, off: int, n: int) -> bytes:
    """Bytes that say which write put them where: 8-byte words of (tag, word offset)."""
    first, last = off // 8, (off + n + 7) // 8
    raw = b"".join(((tag << 32) | (w & 0xFFFFFFFF)).to_bytes(8, "big") for w in range(first, last))
    skip = off - first * 8
    return raw[skip:skip + n]


class Failure(Exception):
    """Something the volume or the daemon did wrong (not an effect of the kill)."""


class Workload:
    def __init__(self, rng: random.Random, hist: History, mountpoint: str, store_path: str,
                 volume: str, round_no: int, ops: int):
        self.rng = rng
        self.hist = hist
        self.mp = mountpoint
        self.store_path = store_path
        self.volume = volume
        self.round_no = round_no
        self.ops = ops
        self.worker_killed = threading.Event()  # set by the harness just before the kill
        self.crashed = False
        self.failure: str | None = None
        self.done = threading.Event()
        self.reads_checked = 0
        self.thread = threading.Thread(target=self._run, name="crash-workload", daemon=True)
        self.sizes: dict[int, int] = {fid: len(c) for fid, c in hist.start_content.items()}

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise Failure("the workload hangs (a system call on the volume does not return)")

    # -- the loop ----------------------------------------------------------------

    def _run(self) -> None:
        ops = [(self.op_write, 30), (self.op_append_fsync, 10), (self.op_truncate, 8),
               (self.op_rename, 10), (self.op_link, 6), (self.op_unlink, 8), (self.op_fsync, 6),
               (self.op_fsyncdir, 3), (self.op_sync, 3), (self.op_dir, 5), (self.op_read, 8)]
        fns, weights = zip(*ops)
        try:
            for _ in range(self.ops):
                self.rng.choices(fns, weights)[0]()
        except OSError as e:
            if self.worker_killed.is_set():
                self.crashed = True  # the event in flight stays not done
            else:
                self.failure = f"{e} (errno {e.errno}) during: {self.hist.events[-1].describe()}" \
                    if self.hist.events else str(e)
        except Failure as e:
            self.failure = str(e)
        except Exception as e:  # a bug of the harness: report it as a failure, with the log
            self.failure = f"harness error: {type(e).__name__}: {e}"
        finally:
            self.done.set()

    def _ev(self, kind: str, fn, **kw) -> Event:
        ev = self.hist.begin(kind, **kw)
        fn()
        ev.done = True
        return ev

    def _path(self, rel: str) -> str:
        return os.path.join(self.mp, rel)

    # -- choosing targets from the live model ------------------------------------------

    def _live(self):
        return self.hist.live()

    def _some_file(self) -> tuple[str, int] | None:
        files = self._live().files
        if not files:
            return None
        path = self.rng.choice(sorted(files))
        return path, files[path]

    def _free_path(self) -> str | None:
        ns = self._live()
        dirs = sorted(ns.dirs)
        for _ in range(10):
            d = self.rng.choice(dirs)
            path = f"{d}/{self.rng.choice(NAMES)}" if d else self.rng.choice(NAMES)
            if path not in ns.files:
                return path
        return None

    def _tag(self) -> int:
        return ((self.round_no + 1) << 12) | (len(self.hist.events) & 0xFFF)

    # -- operations -------------------------------------------------------------------

    def _write_to(self, path: str, fid: int | None, off: int, n: int, fsync: bool) -> None:
        if fid is None:
            fid = self.hist.new_fid()
            holder = {}
            self._ev("create", lambda: holder.setdefault(
                "fd", os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)),
                path=path, fid=fid)
            fd = holder["fd"]
            self.sizes[fid] = 0
        else:
            fd = os.open(self._path(path), os.O_WRONLY)
        try:
            data = pattern(self._tag(), off, n)

            def write():
                done = os.pwrite(fd, data, off)
                if done != len(data):
                    if self.worker_killed.is_set():  # the pages copied before the connection died
                        raise OSError(errno.ECONNABORTED, f"short write ({done} bytes) at the kill")
                    raise Failure(f"short write: {done} of {len(data)} bytes")
            self._ev("write", write, path=path, fid=fid, off=off, data=data)
            self.sizes[fid] = max(self.sizes[fid], off + n)
            if fsync:
                self._ev("fsync", lambda: os.fsync(fd), path=path, fid=fid)
        finally:
            try:
                os.close(fd)
            except OSError:
                if not self.worker_killed.is_set():
                    raise

    def op_write(self) -> None:
        target = self._some_file() if self.rng.random() < 0.75 else None
        path, fid = target if target else (self._free_path(), None)
        if path is None:
            return
        size = self.sizes.get(fid, 0)
        r = self.rng.random()
        if r < 0.25:
            n = self.rng.randint(1, 4096)
        elif r < 0.55:
            n = self.rng.randint(4096, 64 * 1024)
        elif r < 0.75:
            n = BLOCK
        else:
            n = self.rng.randint(BLOCK, 320 * 1024)
        r = self.rng.random()
        if r < 0.3:
            off = size                                   # append
        elif r < 0.6:
            off = self.rng.randint(0, size)              # overwrite / extend
        elif r < 0.8:
            off = self.rng.randint(0, 6) * BLOCK         # whole blocks
        else:
            off = size + self.rng.randint(1, 200 * 1024)  # past the end: a hole
        off = max(0, min(off, MAX_FILE - n))
        self._write_to(path, fid, off, n, fsync=self.rng.random() < 0.4)

    def op_append_fsync(self) -> None:
        target = self._some_file()
        path, fid = target if target else (self._free_path(), None)
        if path is None:
            return
        n = self.rng.choice((512, 4096, 64 * 1024))
        off = min(self.sizes.get(fid, 0), MAX_FILE - n)
        self._write_to(path, fid, off, n, fsync=True)

    def op_truncate(self) -> None:
        target = self._some_file()
        if target is None:
            return
        path, fid = target
        size = self.sizes[fid]
        r = self.rng.random()
        if r < 0.15:
            new = 0
        elif r < 0.55:
            new = self.rng.randint(0, size)
        elif r < 0.75:
            new = self.rng.randint(0, 6) * BLOCK
        else:
            new = size + self.rng.randint(1, 200 * 1024)
        new = min(new, MAX_FILE)
        self._ev("trunc", lambda: os.truncate(self._path(path), new), path=path, fid=fid, size=new)
        self.sizes[fid] = new

    def op_rename(self) -> None:
        target = self._some_file()
        if target is None:
            return
        path, fid = target
        ns = self._live()
        # Any name, free or taken by another file (replaced); never the same
        # file's other name (POSIX makes that a no-op).
        choices = [p for p in self._all_names(ns) if p != path and ns.files.get(p) != fid]
        if not choices:
            return
        dest = self.rng.choice(choices)
        self._ev("rename", lambda: os.rename(self._path(path), self._path(dest)),
                 path=path, path2=dest)
        if self.rng.random() < 0.3:
            self._fsyncdir(os.path.dirname(dest))

    def _all_names(self, ns) -> list[str]:
        return sorted(f"{d}/{n}" if d else n for d in ns.dirs for n in NAMES)

    def op_link(self) -> None:
        target, dest = self._some_file(), self._free_path()
        if target is None or dest is None:
            return
        path, _ = target
        self._ev("link", lambda: os.link(self._path(path), self._path(dest)), path=path, path2=dest)

    def op_unlink(self) -> None:
        target = self._some_file()
        if target is None:
            return
        path, _ = target
        self._ev("unlink", lambda: os.unlink(self._path(path)), path=path)

    def op_fsync(self) -> None:
        target = self._some_file()
        if target is None:
            return
        path, fid = target
        fd = os.open(self._path(path), os.O_RDWR)
        try:
            self._ev("fsync", lambda: os.fsync(fd), path=path, fid=fid)
        finally:
            try:
                os.close(fd)
            except OSError:
                if not self.worker_killed.is_set():
                    raise

    def _fsyncdir(self, rel: str) -> None:
        fd = os.open(self._path(rel) if rel else self.mp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._ev("fsyncdir", lambda: os.fsync(fd), path=rel or "/")
        finally:
            os.close(fd)

    def op_fsyncdir(self) -> None:
        self._fsyncdir(self.rng.choice(sorted(self._live().dirs)))

    def op_sync(self) -> None:
        """What `fusevol snapshot` does first: the kernel's pages, then the worker's buffers, durably."""
        def flush():
            if not registry.flush_worker(self.store_path, self.volume):
                raise OSError(errno.ENOTCONN, "no worker serves the volume")
        self._ev("sync", flush)

    def op_dir(self) -> None:
        ns = self._live()
        there = [d for d in MOVING_DIRS if d in ns.dirs]
        missing = [d for d in MOVING_DIRS if d not in ns.dirs]
        choices = []
        if missing:
            choices.append("mkdir")
        if there and missing:
            choices.append("rename")
        if any(not any(p.startswith(d + "/") for p in ns.files) for d in there):
            choices.append("rmdir")
        if not choices:  # both there, neither empty
            return
        action = self.rng.choice(choices)
        if action == "mkdir":
            d = self.rng.choice(missing)
            self._ev("mkdir", lambda: os.mkdir(self._path(d)), path=d)
        elif action == "rename":
            src, dst = self.rng.choice(there), self.rng.choice(missing)
            self._ev("rename", lambda: os.rename(self._path(src), self._path(dst)), path=src, path2=dst)
        else:
            d = self.rng.choice([d for d in there if not any(p.startswith(d + "/") for p in ns.files)])
            self._ev("rmdir", lambda: os.rmdir(self._path(d)), path=d)

    def op_read(self) -> None:
        """A live volume shows everything that returned, byte for byte."""
        target = self._some_file()
        if target is None:
            return
        path, fid = target
        with open(self._path(path), "rb") as f:
            got = f.read()
        want = self.hist.content(fid, len(self.hist.events))
        if got != want:
            first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise Failure(f"live read of {path} (fid {fid}) differs from what was written: "
                          f"{len(got)} bytes read, {len(want)} expected, first difference at {first}")
        self.reads_checked += 1


# -- the driver's socket --------------------------------------------------------------

class PluginModel:
    """What the acknowledged calls did: whether each volume exists, and each
    mount ID's count as a range (a call in flight at the kill, or an Unmount
    that answered Err, may or may not have counted)."""

    def __init__(self):
        self.exists: dict[str, bool | None] = {}
        self.counts: dict[tuple[str, str], tuple[int, int]] = {}

    def widen(self, vol: str, mid: str, lo_delta: int, hi_delta: int) -> None:
        lo, hi = self.counts.get((vol, mid), (0, 0))
        self.counts[vol, mid] = (max(0, lo + lo_delta), max(0, hi + hi_delta))

    def count_range(self, vol: str) -> tuple[int, int]:
        items = [r for (v, _), r in self.counts.items() if v == vol]
        return sum(lo for lo, _ in items), sum(hi for _, hi in items)


class PluginLoad:
    def __init__(self, rng: random.Random, daemon, model: PluginModel, volumes: dict[str, dict],
                 calls: int):
        self.rng = rng
        self.daemon = daemon
        self.model = model
        self.volumes = volumes  # name -> Create options
        self.calls = calls
        self.daemon_killed = threading.Event()
        self.failure: str | None = None
        self.log: list[str] = []
        self.in_flight: str | None = None
        self.thread = threading.Thread(target=self._run, name="crash-plugin", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float = 300) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise Failure("a call to the driver's socket does not return")

    def _run(self) -> None:
        try:
            for _ in range(self.calls):
                self._one()
                if self.daemon_killed.is_set():
                    return
        except Exception as e:
            if not self.daemon_killed.is_set():
                self.failure = f"{type(e).__name__}: {e} during {self.in_flight}"
        else:
            self.in_flight = None

    def _one(self) -> None:
        rng, model = self.rng, self.model
        vol = rng.choice(sorted(self.volumes))
        mid = rng.choice(("a", "b"))
        kind = rng.choices(("Mount", "Unmount", "Create", "Remove", "List"), (40, 35, 10, 10, 5))[0]
        if kind == "Remove" and vol == "work":
            kind = "List"
        body = {"Name": vol}
        if kind in ("Mount", "Unmount"):
            body["ID"] = mid
        if kind == "Create":
            body["Opts"] = self.volumes[vol]
        self.in_flight = f"{kind} {vol}" + (f" {mid}" if "ID" in body else "")
        # What the call may have done if the daemon dies before it answers.
        if kind == "Mount":
            model.widen(vol, mid, 0, +1)
        elif kind == "Unmount":
            model.widen(vol, mid, -1, 0)
        before = model.exists.get(vol)
        if kind in ("Create", "Remove") and before is not (kind == "Create"):
            model.exists[vol] = None
        status, reply = self.daemon.call(f"/VolumeDriver.{'List' if kind == 'List' else kind}", body)
        ok = status == 200 and "Err" not in reply
        self.log.append(f"{self.in_flight} -> {'ok' if ok else reply.get('Err')}")
        if kind == "Mount":
            model.widen(vol, mid, +1 if ok else 0, 0 if ok else -1)
        elif kind == "Unmount":
            if ok:  # an Err may come after the count dropped (a busy unmount)
                model.widen(vol, mid, 0, -1)
        elif kind == "Create" and ok:
            model.exists[vol] = True
        elif kind == "Remove" and ok:
            model.exists[vol] = False
            for key in [k for k in model.counts if k[0] == vol]:
                del model.counts[key]
        elif kind in ("Create", "Remove"):
            model.exists[vol] = before  # refused: nothing changed
        self.in_flight = None


def wait_until(cond, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
