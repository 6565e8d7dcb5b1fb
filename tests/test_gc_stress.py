"""`fusevol gc` and the workers' idle upkeep over and over on a store whose
volumes are mounted and written.

gc on a store held open writes tables of small rows again in place and punches
the free pages LMDB would hand out next out of the store's file: a live page
punched reads as zeros, a rewrite racing a worker's commit drops or reverts
rows. Here two mounted volumes take a seeded sequence of operations (files
small and large created, written, overwritten, truncated, renamed, unlinked;
directories made, renamed, removed; modes changed; fsyncs; snapshots) mirrored
in a model, while another thread runs `fusevol gc` again and again and a third
holds old read transactions open (export of a snapshot compared to the model
of it, diff, send, verify). At checkpoints, at the end and after a remount:
every file's content, size and mode and every directory as the model says,
every snapshot exported as its model, and `fusevol verify` clean.
The workers' idle upkeep (fs/upkeep.py: the same recompression, table
rewrites and punching, started by a worker once its volume is quiet) runs
after UPKEEP_AFTER seconds of quiet: beside the gc loop (it gives way to gc),
and alone, with pauses in the workload that start it and writes that stop
it half way. The crash forms SIGKILL the worker while gc runs, or while its
own upkeep runs: every file fsynced and left alone since must come back whole.

CI runs a short form; by hand, for example:
FUSEVOL_GCSTRESS_OPS=20000 FUSEVOL_GCSTRESS_ROUNDS=40 pytest -s tests/test_gc_stress.py
FUSEVOL_GCSTRESS_SEED picks the seed (printed on failure and at the end);
FUSEVOL_GCSTRESS_UPKEEP_AFTER the upkeep's quiet time (seconds).
"""

import datetime
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from conftest import needs_fuse, run_cli
from fusevol.fs import registry, upkeepstate

OPS = int(os.environ.get("FUSEVOL_GCSTRESS_OPS", "150"))
ROUNDS = int(os.environ.get("FUSEVOL_GCSTRESS_ROUNDS", "1"))
SEED = int(os.environ.get("FUSEVOL_GCSTRESS_SEED") or random.SystemRandom().getrandbits(32))
CHECK_EVERY = max(50, OPS // 8)
DIRS = ("d0", "d1", "d2", "d3")
UPKEEP_AFTER = os.environ.get("FUSEVOL_GCSTRESS_UPKEEP_AFTER", "0.3")
UPKEEP = {"FUSEVOL_IDLE_UPKEEP_AFTER": UPKEEP_AFTER}
WORDS = [bytes(random.Random(w).choices(b"etaoinshrdlucmfw", k=2 + w % 7)) for w in range(400)]


def _fusevol(store: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fusevol", "--store", store, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class Model:
    """What a volume must hold: directories, and files' content and mode."""

    def __init__(self):
        self.dirs: set[str] = {""}
        self.files: dict[str, bytearray] = {}
        self.modes: dict[str, int] = {}

    def copy(self) -> "Model":
        m = Model()
        m.dirs = set(self.dirs)
        m.files = {p: bytearray(b) for p, b in self.files.items()}
        m.modes = dict(self.modes)
        return m


def _payload(rnd: random.Random, pool: list[bytes]) -> bytes:
    """Random (incompressible), repetitive (compressible) or seen before (deduplicated)."""
    size = rnd.choice((1, 100, 3000, 4096, 20000, 70000, 131072, 300000, 1_200_000))
    kind = rnd.random()
    if kind < 0.15 and pool:
        return rnd.choice(pool)
    if kind < 0.3:
        return (rnd.randbytes(rnd.randint(1, 64)) * (size // 8 + 1))[:size]
    if kind < 0.5:
        return _text(rnd, size)
    data = rnd.randbytes(size)
    if len(pool) < 20:
        pool.append(data)
    return data


def _text(rnd: random.Random, size: int) -> bytes:
    """Text as source files are: written at zstd level 1 in whole blocks, stored
    smaller by the level gc and the upkeep compress again at."""
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rnd.choices(WORDS, k=10)) + b"\n"
    return bytes(out[:size])


def _upkeep_totals(store: str, names) -> dict:
    totals = {"runs": 0, "completed": 0, "stopped": 0, "chunks_recompressed": 0, "pages_punched": 0}
    for name in names:
        status = upkeepstate.read_status(store, name) or {}
        for key in totals:
            totals[key] += status.get(key, 0)
    return totals


def _upkeep_overlaps(store: str, names) -> list:
    """Upkeeps of different workers that ran at the same time (each worker's
    log line ends its run, which took the seconds it names, inside the lock)."""
    runs = []
    for name in names:
        with open(registry.worker_log(store, name)) as f:
            for line in f:
                m = re.match(r"(\S+ \S+) fusevol.fs.upkeep INFO idle upkeep .* in ([0-9.]+) s:", line)
                if m:
                    end = datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    runs.append((end - float(m[2]), end, name))
    runs.sort()
    return [(a, b) for a, b in zip(runs, runs[1:]) if a[2] != b[2] and b[0] < a[1] - 0.01]


class Workload:
    """One volume's seeded operations, done on its mount and on its model."""

    def __init__(self, store: str, name: str, mp: str, rnd: random.Random):
        self.store, self.name, self.mp, self.rnd = store, name, mp, rnd
        self.model = Model()
        self.snaps: dict[str, Model] = {}
        self.pool: list[bytes] = []
        self.counter = 0
        self.log: list[str] = []

    def _path(self, rel: str) -> str:
        return os.path.join(self.mp, rel)

    def _new_name(self) -> str:
        self.counter += 1
        parent = self.rnd.choice(sorted(self.model.dirs))
        return os.path.join(parent, f"f{self.counter}") if parent else f"f{self.counter}"

    def _some_file(self) -> str | None:
        return self.rnd.choice(sorted(self.model.files)) if self.model.files else None

    def step(self) -> None:
        rnd, m = self.rnd, self.model
        op = rnd.random()
        if op < 0.3 or not m.files:  # write into a file, new or not
            rel = self._new_name() if rnd.random() < 0.4 or not m.files else self._some_file()
            data = _payload(rnd, self.pool)
            old = m.files.get(rel, bytearray())
            offset = rnd.choice((0, len(old), rnd.randrange(len(old) + 1), rnd.randrange(2_000_000)))
            sync = rnd.random() < 0.2
            self.log.append(f"write {rel} @{offset} +{len(data)}{' fsync' if sync else ''}")
            fd = os.open(self._path(rel), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, data, offset)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if rel not in m.files:
                m.files[rel], m.modes[rel] = bytearray(), 0o644
            buf = m.files[rel]
            if len(buf) < offset:
                buf.extend(bytes(offset - len(buf)))
            buf[offset:offset + len(data)] = data
        elif op < 0.42:  # overwrite whole
            rel = self._some_file()
            data = _payload(rnd, self.pool)
            self.log.append(f"overwrite {rel} {len(data)}")
            with open(self._path(rel), "wb") as f:
                f.write(data)
            m.files[rel] = bytearray(data)
        elif op < 0.52:
            rel = self._some_file()
            size = rnd.choice((0, rnd.randrange(len(m.files[rel]) + 1), rnd.randrange(1_500_000)))
            self.log.append(f"truncate {rel} {size}")
            os.truncate(self._path(rel), size)
            buf = m.files[rel]
            del buf[size:]
            buf.extend(bytes(size - len(buf)))
        elif op < 0.62:
            rel = self._some_file()
            self.log.append(f"unlink {rel}")
            os.unlink(self._path(rel))
            del m.files[rel], m.modes[rel]
        elif op < 0.74:  # rename, over another file at times
            rel = self._some_file()
            dst = self._some_file() if rnd.random() < 0.3 else self._new_name()
            self.log.append(f"rename {rel} {dst}")
            os.rename(self._path(rel), self._path(dst))
            if dst != rel:
                m.files[dst], m.modes[dst] = m.files.pop(rel), m.modes.pop(rel)
        elif op < 0.8:
            rel = self._some_file()
            mode = rnd.choice((0o600, 0o640, 0o755, 0o444))
            self.log.append(f"chmod {rel} {mode:o}")
            os.chmod(self._path(rel), mode)
            m.modes[rel] = mode
        elif op < 0.85:  # a directory made, renamed or removed
            existing = sorted(d for d in m.dirs if d)
            free = [d for d in DIRS if d not in m.dirs]
            if free and (rnd.random() < 0.5 or not existing):
                rel = rnd.choice(free)
                self.log.append(f"mkdir {rel}")
                os.mkdir(self._path(rel))
                m.dirs.add(rel)
            elif existing:
                rel = rnd.choice(existing)
                inside = [p for p in m.files if p.startswith(rel + "/")]
                if free:
                    dst = rnd.choice(free)
                    self.log.append(f"rename dir {rel} {dst}")
                    os.rename(self._path(rel), self._path(dst))
                    m.dirs.discard(rel)
                    m.dirs.add(dst)
                    for p in inside:
                        q = dst + p[len(rel):]
                        m.files[q], m.modes[q] = m.files.pop(p), m.modes.pop(p)
                elif not inside:
                    self.log.append(f"rmdir {rel}")
                    os.rmdir(self._path(rel))
                    m.dirs.discard(rel)
        elif op < 0.87:  # many small files at once, or many gone: rows under random keys
            small = [p for p in sorted(m.files) if len(m.files[p]) < 200]
            if len(small) > 40 and rnd.random() < 0.4:
                gone = rnd.sample(small, k=len(small) // 2)
                self.log.append(f"unlink {len(gone)} small files")
                for rel in gone:
                    os.unlink(self._path(rel))
                    del m.files[rel], m.modes[rel]
            else:
                self.log.append("create 40 small files")
                for _ in range(40):
                    rel = self._new_name() + f"-{rnd.getrandbits(40):x}"
                    data = rnd.randbytes(rnd.randrange(150))
                    with open(self._path(rel), "wb") as f:
                        f.write(data)
                    m.files[rel], m.modes[rel] = bytearray(data), 0o644
        elif op < 0.9:
            snap = f"s{len(self.snaps)}"
            self.log.append(f"snapshot {snap}")
            run_cli(self.store, "snapshot", "create", f"{self.name}@{snap}")
            self.snaps[snap] = m.copy()
        else:  # read back a file (the cache's path, not a checkpoint)
            rel = self._some_file()
            with open(self._path(rel), "rb") as f:
                got = f.read()
            if got != m.files[rel]:
                raise AssertionError(f"{self.name}:{rel} reads back wrong: {_first_diff(got, m.files[rel])}")


def _first_diff(got: bytes, want: bytes) -> str:
    if len(got) != len(want):
        where = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        return f"size {len(got)}, not {len(want)}; first differing byte at {where}"
    where = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    end = where
    while end < len(got) and got[end] != want[end]:
        end += 1
    zeros = " (zeros)" if not any(got[where:end]) else ""
    return f"bytes {where}..{end} differ{zeros}"


def compare_tree(root: str, model: Model, what: str) -> None:
    dirs, files = {""}, {}
    for top, subdirs, names in os.walk(root):
        rel_top = os.path.relpath(top, root)
        rel_top = "" if rel_top == "." else rel_top
        dirs.update(os.path.join(rel_top, d) for d in subdirs)
        for n in names:
            files[os.path.join(rel_top, n)] = os.path.join(top, n)
    assert dirs == model.dirs, f"{what}: directories {sorted(dirs ^ model.dirs)} differ"
    assert set(files) == set(model.files), f"{what}: files {sorted(set(files) ^ set(model.files))} differ"
    for rel, path in files.items():
        st = os.stat(path)
        assert st.st_mode & 0o7777 == model.modes[rel], f"{what}:{rel}: mode {st.st_mode:o}"
        assert st.st_size == len(model.files[rel]), f"{what}:{rel}: size {st.st_size}, not {len(model.files[rel])}"
        with open(path, "rb") as f:
            got = f.read()
        if got != model.files[rel]:
            raise AssertionError(f"{what}:{rel}: {_first_diff(got, model.files[rel])}")


def _slow_read(proc: subprocess.Popen, rnd: random.Random | None, what: str) -> bytes:
    """A command's whole output, read slowly with rnd: it waits on its pipe
    with its read transaction open while gc runs, then reads on."""
    parts = []
    while True:
        part = proc.stdout.read(64 << 10)
        if not part:
            break
        parts.append(part)
        if rnd is not None and len(parts) == 1:  # held mid-stream while gc runs on
            time.sleep(rnd.uniform(0.2, 2.5))
        elif rnd is not None and rnd.random() < 0.2:
            time.sleep(rnd.random() * 0.05)
    err = proc.stderr.read()
    if proc.wait(120):
        raise AssertionError(f"{what} exited {proc.returncode}: {err.decode(errors='replace')}")
    return b"".join(parts)


def compare_export(store: str, spec: str, model: Model, rnd: random.Random | None = None) -> None:
    """Export a snapshot (a read transaction held the while) and compare it to its model."""
    data = _slow_read(_fusevol(store, "export", "-q", spec), rnd, f"export {spec}")
    dirs, files = {""}, {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./").rstrip("/")
            if name in ("", "."):
                continue
            if member.isdir():
                dirs.add(name)
            elif member.isfile():
                files[name] = (member.mode & 0o7777, tar.extractfile(member).read())
    assert dirs == model.dirs, f"export {spec}: directories {sorted(dirs ^ model.dirs)} differ"
    assert set(files) == set(model.files), f"export {spec}: files {sorted(set(files) ^ set(model.files))} differ"
    for rel, (mode, got) in files.items():
        assert mode == model.modes[rel], f"export {spec}:{rel}: mode {mode:o}"
        if got != model.files[rel]:
            raise AssertionError(f"export {spec}:{rel}: {_first_diff(got, model.files[rel])}")


def verify_clean(store: str) -> None:
    proc = run_cli(store, "verify", "-q", check=False)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0 and "ok" in out, f"verify: {out}"


class Background:
    """`fusevol gc` in a loop (unless not `gc`), and readers of old snapshots, until stopped."""

    def __init__(self, store: str, workloads: list[Workload], rnd: random.Random, gc: bool = True):
        self.store, self.workloads, self.rnd = store, workloads, rnd
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.gc_runs = self.punched = self.pages_punched = self.tables = 0
        self.reads = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._reader_loop, daemon=True)]
        if gc:
            self.threads.append(threading.Thread(target=self._gc_loop, daemon=True))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(300)

    def _gc_loop(self) -> None:
        while not self.stop.is_set():
            proc = run_cli(self.store, "gc", "--json", check=False)
            if proc.returncode:
                self.problems.append(f"gc exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
                return
            report = json.loads(proc.stdout)
            f = report["file"]
            holes = f.get("holes") or {}
            self.gc_runs += 1
            self.tables += len(f.get("tables") or {})
            if holes.get("punched") and holes.get("free_pages"):
                self.punched += 1
                self.pages_punched += holes["free_pages"]
            self.stop.wait(self.rnd.random() * 0.3)

    def _old_reader(self) -> None:
        """A second process holding one read transaction across gc runs."""
        proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "old_reader.py"),
                                 self.store, f"{self.rnd.uniform(0.5, 4):.2f}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = proc.communicate(timeout=300)[0].decode(errors="replace")
        if proc.returncode:
            raise AssertionError(f"old reader: {out}")

    def _reader_loop(self) -> None:
        """Readers of old snapshots: their read transactions pin pages gc must not punch."""
        while not self.stop.is_set():
            with self.lock:
                snaps = [(w.name, s, m) for w in self.workloads for s, m in w.snaps.items()]
            if not snaps:
                self.stop.wait(0.2)
                continue
            name, snap, model = self.rnd.choice(snaps)
            kind = self.rnd.random()
            try:
                if kind < 0.4:
                    self._old_reader()
                elif kind < 0.6:
                    compare_export(self.store, f"{name}@{snap}", model, self.rnd)
                elif kind < 0.7:
                    run_cli(self.store, "diff", f"{name}@{snap}", name)
                elif kind < 0.85:
                    _slow_read(_fusevol(self.store, "send", "-q", f"{name}@{snap}"), self.rnd,
                               f"send {name}@{snap}")
                else:
                    verify_clean(self.store)
                self.reads += 1
            except AssertionError as e:
                self.problems.append(f"reader: {e}")
                return


def _checkpoint(store: str, workloads: list[Workload], bg: Background | None, what: str) -> None:
    for w in workloads:
        compare_tree(w.mp, w.model, f"{what} {w.name}")
    verify_clean(store)
    if bg is not None:
        assert not bg.problems, bg.problems


@needs_fuse
@pytest.mark.timeout(max(600, OPS // 2))
@pytest.mark.parametrize("beside", ["gc", "upkeep"])
def test_gc_while_mounted_keeps_every_file(mounts, beside):
    """beside="gc": gc in a loop, the workers' idle upkeep too (giving way to
    it); "upkeep": the idle upkeep alone, started by pauses in the workload
    and stopped by the writes after them."""
    rnd = random.Random(SEED)
    store = mounts.store_path
    names = ("va", "vb")
    workloads = [Workload(store, name, mounts.mount(name, env=UPKEEP), random.Random(rnd.getrandbits(32)))
                 for name in names]
    done = 0
    try:
        with Background(store, workloads, random.Random(rnd.getrandbits(32)), gc=beside == "gc") as bg:
            while done < OPS:
                w = rnd.choice(workloads)
                with bg.lock:
                    w.step()
                done += 1
                if beside == "upkeep" and rnd.random() < 0.08:
                    # quiet a moment: an upkeep starts, and the next write stops it or not
                    time.sleep(float(UPKEEP_AFTER) + rnd.random() * 0.6)
                if done % CHECK_EVERY == 0:
                    _checkpoint(store, workloads, bg, f"after {done} operations:")
            # gc goes on a moment on what the workload left, and the upkeep
            # after the last writes runs
            deadline = time.monotonic() + 3
            runs = bg.gc_runs
            while ((beside == "gc" and bg.gc_runs < runs + 2) or time.monotonic() < deadline) \
                    and not bg.problems:
                time.sleep(0.2)
        assert not bg.problems, bg.problems
        _checkpoint(store, workloads, None, "at the end:")
        for w in workloads:
            mounts.umount(w.mp)
        verify_clean(store)
        for w in workloads:
            w.mp = mounts.mount(w.name, create=False)
        _checkpoint(store, workloads, None, "after a remount:")
        for w in workloads:
            for snap, model in w.snaps.items():
                compare_export(store, f"{w.name}@{snap}", model)
    except BaseException:
        print(f"\nseed {SEED} ({done} operations, beside {beside}); last operations:")
        for w in workloads:
            print(f"  {w.name}: " + "; ".join(w.log[-8:]))
        raise
    upkept = _upkeep_totals(store, names)
    print(f"\nseed {SEED}: {OPS} operations, {bg.gc_runs} gc runs ({bg.punched} punched "
          f"{bg.pages_punched} pages, {bg.tables} tables written again), {bg.reads} reads of snapshots; "
          f"idle upkeep: {upkept}")
    if beside == "gc":
        assert bg.gc_runs >= 2
        assert bg.pages_punched > 0, "gc never punched a page: the test did not test"
    else:
        assert upkept["completed"] >= 1 and upkept["pages_punched"] > 0, \
            f"the upkeep never went through: the test did not test ({upkept})"
        assert upkept["chunks_recompressed"] > 0, upkept
    overlaps = _upkeep_overlaps(store, names)
    assert not overlaps, f"two workers' upkeeps ran at once: {overlaps}"


# -- a worker killed while gc runs ---------------------------------------------


def _check_durable(mp: str, durable: dict) -> None:
    """Every file an fsync covered is there whole, with the bytes it had."""
    for rel, data in durable.items():
        path = os.path.join(mp, rel)
        assert os.path.exists(path), f"fsynced {rel} is gone"
        with open(path, "rb") as f:
            got = f.read()
        if got != data:
            raise AssertionError(f"fsynced {rel}: {_first_diff(got, data)}")


def _kill_worker(store: str, name: str, mounts, mp: str) -> None:
    pid = registry.worker_of(store, volume=name).pid
    os.kill(pid, signal.SIGKILL)
    for _ in range(300):
        if not registry.pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker {pid} alive after SIGKILL")
    if run_cli(store, "umount", mp, check=False).returncode:
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
    mounts.active.remove(mp)


@needs_fuse
@pytest.mark.timeout(max(600, ROUNDS * 60))
def test_worker_killed_during_gc_keeps_what_was_fsynced(mounts):
    rnd = random.Random(SEED ^ 0x5EED)
    store = mounts.store_path
    name = "crash"
    mp = mounts.mount(name)
    durable: dict[str, bytes] = {}  # fsynced, and left alone since
    pool: list[bytes] = []
    counter = 0
    gc_runs = kills_during_gc = 0
    for round_ in range(ROUNDS):
        try:
            # Files written and fsynced (directory too), then left alone.
            for _ in range(rnd.randint(3, 8)):
                counter += 1
                rel = f"kept{counter}"
                data = _payload(rnd, pool)
                fd = os.open(os.path.join(mp, rel), os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, data)
                os.fsync(fd)
                os.close(fd)
                dfd = os.open(mp, os.O_RDONLY)
                os.fsync(dfd)
                os.close(dfd)
                durable[rel] = data
            # Some of them deleted or overwritten now: no longer promised.
            for rel in rnd.sample(sorted(durable), k=min(len(durable), rnd.randint(0, 2))):
                del durable[rel]
                if rnd.random() < 0.5:
                    os.unlink(os.path.join(mp, rel))
                else:
                    with open(os.path.join(mp, rel), "r+b") as f:
                        f.write(_payload(rnd, pool))
            # Work left unsynced in flight while gc runs, and the worker killed.
            gc = _fusevol(store, "gc", "-q")
            stop = threading.Event()

            def churn(seed=rnd.getrandbits(32)):
                r = random.Random(seed)
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        with open(os.path.join(mp, f"churn{n % 7}"), "wb") as f:
                            f.write(_payload(r, []))
                        os.truncate(os.path.join(mp, f"churn{n % 7}"), r.randrange(200_000))
                    except OSError:
                        return  # the worker is gone
            t = threading.Thread(target=churn, daemon=True)
            t.start()
            time.sleep(0.3 + rnd.random())  # gc takes 1-3 s: most kills land in it
            kills_during_gc += gc.poll() is None
            _kill_worker(store, name, mounts, mp)
            stop.set()
            t.join(30)
            out, err = gc.communicate(timeout=300)
            assert gc.returncode == 0, f"gc exited {gc.returncode}: {err.decode(errors='replace')}"
            gc_runs += 1
            mp = mounts.mount(name, create=False)
            _check_durable(mp, durable)
            # gc again with the volume mounted, then everything still there and the store clean
            run_cli(store, "gc", "-q")
            verify_clean(store)
        except BaseException:
            print(f"\nseed {SEED} (crash form, round {round_})")
            raise
    print(f"\nseed {SEED}: crash form, {ROUNDS} rounds ({kills_during_gc} kills while gc ran), "
          f"{len(durable)} fsynced files checked")


# -- a worker killed while its idle upkeep runs ----------------------------------


def _wait_running(store: str, name: str, since: float, timeout: float = 30) -> bool:
    """Whether an upkeep that started after `since` is under way (waited for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = upkeepstate.read_status(store, name) or {}
        if status.get("started", 0) > since:
            return bool(status.get("running"))
        time.sleep(0.01)
    return False


@needs_fuse
@pytest.mark.timeout(max(600, ROUNDS * 60))
def test_worker_killed_during_upkeep_keeps_what_was_fsynced(mounts):
    """Each round: text written whole blocks at a time (chunks the upkeep
    compresses again) and files fsynced, then the volume left quiet; once its
    upkeep runs, the worker is SIGKILLed at a random moment of it. Everything
    fsynced comes back whole, and verify is clean, also after the next
    worker's upkeep went through what the killed one left half done."""
    rnd = random.Random(SEED ^ 0x0DE1)
    store = mounts.store_path
    name = "upkept"
    mp = mounts.mount(name, env=UPKEEP)
    durable: dict[str, bytes] = {}
    counter = kills_during_upkeep = 0
    rounds = max(ROUNDS, 5)
    for round_ in range(rounds):
        try:
            for _ in range(rnd.randint(2, 5)):
                counter += 1
                rel = f"kept{counter}"
                data = _text(rnd, rnd.choice((3000, 200_000, 1_500_000, 3_000_000)))
                fd = os.open(os.path.join(mp, rel), os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, data)
                os.fsync(fd)
                os.close(fd)
                durable[rel] = data
            for rel in rnd.sample(sorted(durable), k=min(len(durable), rnd.randint(0, 2))):
                del durable[rel]
                os.unlink(os.path.join(mp, rel))  # pages freed: the upkeep punches them
            dfd = os.open(mp, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
            since = time.time()
            if _wait_running(store, name, since):
                time.sleep(rnd.random() * 0.12)  # a run takes 0.1-0.5 s here
                status = upkeepstate.read_status(store, name) or {}
                kills_during_upkeep += bool(status.get("running")) and status.get("started", 0) > since
            _kill_worker(store, name, mounts, mp)
            mp = mounts.mount(name, create=False, env=UPKEEP)
            _check_durable(mp, durable)
            verify_clean(store)
        except BaseException:
            print(f"\nseed {SEED} (upkeep crash form, round {round_})")
            raise
    # The next worker's upkeep goes through what was left: a change, then quiet.
    with open(os.path.join(mp, "last"), "wb") as f:
        f.write(_text(rnd, 300_000))
    since = time.time()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = upkeepstate.read_status(store, name) or {}
        if status.get("started", 0) > since and not status.get("running"):
            break
        time.sleep(0.1)
    assert status["last"]["outcome"] == "done", status
    verify_clean(store)
    for rel in durable:
        with open(os.path.join(mp, rel), "rb") as f:
            assert f.read() == durable[rel], rel
    print(f"\nseed {SEED}: upkeep crash form, {rounds} rounds ({kills_during_upkeep} kills while the "
          f"upkeep ran), {len(durable)} fsynced files checked")
    assert kills_during_upkeep > 0, "no kill landed in an upkeep: the test did not test"
