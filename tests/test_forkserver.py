"""Workers forked by the daemon's forkserver serve exactly like workers
started as processes: same mount, same data, same errors; they outlive the
forkserver, and a forkserver that died is started again."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import needs_fuse, run_cli
from fusevol.errors import Busy
from fusevol.fs import registry
from fusevol.fs.forkserver import ForkServer
from fusevol.store import Store, volumes

pytestmark = needs_fuse


@pytest.fixture
def forkserver():
    server = ForkServer()
    server.start()
    yield server
    server.close()


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _spec(store_path: str, name: str):
    """What a mount of `name` serves, as the volume service resolves it for a worker."""
    with Store.open(store_path).read() as txn:
        return volumes.mount_spec(txn, name)


def _mountpoint(tmp_path, name: str) -> str:
    path = str(tmp_path / name)
    os.makedirs(path, exist_ok=True)
    return path


def test_forked_worker_serves_and_its_data_stays(store_path, tmp_path, forkserver):
    run_cli(store_path, "volume", "create", "vol")
    mp = _mountpoint(tmp_path, "mp")
    pid = registry.start_worker(store_path, _spec(store_path, "vol"), mp, forkserver=forkserver)
    try:
        assert _parent(pid) == forkserver.pid
        assert registry.worker_of(store_path, volume="vol").pid == pid
        with open(os.path.join(mp, "f"), "wb") as f:
            f.write(b"forked" * 1000)
            os.fsync(f.fileno())
    finally:
        registry.unmount(store_path, mp)
    # Served again by a worker started as a process: the same bytes.
    pid = registry.start_worker(store_path, _spec(store_path, "vol"), mp)
    try:
        assert _parent(pid) != forkserver.pid
        with open(os.path.join(mp, "f"), "rb") as f:
            assert f.read() == b"forked" * 1000
    finally:
        registry.unmount(store_path, mp)
    with open(os.path.join(store_path, "run", "log", "vol.log")) as f:
        assert f.read().count(f"volume vol serves at {mp}") == 2


def test_error_of_a_forked_worker_reaches_the_caller(store_path, tmp_path, forkserver):
    run_cli(store_path, "volume", "create", "vol")
    run_cli(store_path, "volume", "create", "other")
    mp = _mountpoint(tmp_path, "mp")
    pid = registry.start_worker(store_path, _spec(store_path, "vol"), mp, forkserver=forkserver)
    try:  # the mountpoint is taken: the worker's Busy, as the class it had
        with pytest.raises(Busy, match="already a mountpoint") as e:
            registry.start_worker(store_path, _spec(store_path, "other"), mp,
                                  forkserver=forkserver)
        assert e.value.errno == Busy.errno
        assert [w.pid for w in registry.workers(store_path)] == [pid]
    finally:
        registry.unmount(store_path, mp)


def test_workers_outlive_the_forkserver_which_comes_back(store_path, tmp_path, forkserver):
    for name in ("va", "vb"):
        run_cli(store_path, "volume", "create", name)
    mp_a, mp_b = _mountpoint(tmp_path, "a"), _mountpoint(tmp_path, "b")
    pid_a = registry.start_worker(store_path, _spec(store_path, "va"), mp_a, forkserver=forkserver)
    try:
        first = forkserver.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while registry.pid_alive(first) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(os.path.join(mp_a, "still"), "w") as f:  # a's worker kept serving
            f.write("here")
        pid_b = registry.start_worker(store_path, _spec(store_path, "vb"), mp_b,
                                          forkserver=forkserver)
        try:
            assert forkserver.pid != first and _parent(pid_b) == forkserver.pid
            assert os.listdir(mp_b) == []
        finally:
            registry.unmount(store_path, mp_b)
        with open(os.path.join(mp_a, "still")) as f:
            assert f.read() == "here"
        assert registry.pid_alive(pid_a)
    finally:
        registry.unmount(store_path, mp_a)


def _held(pid: int) -> list[str]:
    """What the process's file descriptors and mappings name."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    with open(f"/proc/{pid}/maps") as f:
        held += [line.split()[5] for line in f if len(line.split()) > 5]
    return held


def test_forkserver_forks_with_no_thread_store_or_loop_of_its_own(store_path, tmp_path,
                                                                    monkeypatch):
    """It rehearses a worker's life (a scratch store, its thread, a trio loop)
    in a scratch folder, between requests: none of it may be left for the
    workers to inherit, and the folder goes once the rehearsal is over (with
    those of forkservers killed before theirs was)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a forkserver killed in its rehearsal left its scratch folder behind
    (scratch / f"fusevol-forkserver-{gone.pid}-x" / "db").mkdir(parents=True)
    for name in ("va", "vb"):
        run_cli(store_path, "volume", "create", name)
    mp_a, mp_b = _mountpoint(tmp_path, "a"), _mountpoint(tmp_path, "b")
    server = ForkServer()
    server.start()
    try:
        pid_a = registry.start_worker(store_path, _spec(store_path, "va"), mp_a,
                                      forkserver=server)
        try:
            deadline = time.monotonic() + 60
            while os.listdir(scratch) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert os.listdir(scratch) == []  # rehearsed, its folder and the dead one's gone
            assert os.listdir(f"/proc/{server.pid}/task") == [str(server.pid)]  # one thread
            held = _held(server.pid)
            assert not [h for h in held if ".mdb" in h or "eventpoll" in h
                        or h == "/dev/fuse"], held
            pid_b = registry.start_worker(store_path, _spec(store_path, "vb"), mp_b,
                                          forkserver=server)
            try:
                for pid in (pid_a, pid_b):  # nothing of the rehearsal in a worker
                    assert _parent(pid) == server.pid
                    assert not [h for h in _held(pid) if h.startswith(str(scratch))]
                for mp in (mp_a, mp_b):  # and the workers serve
                    with open(os.path.join(mp, "f"), "w") as f:
                        f.write("ok")
            finally:
                registry.unmount(store_path, mp_b)
        finally:
            registry.unmount(store_path, mp_a)
    finally:
        server.close()


def _mergeable(pid: int) -> list[str]:
    """Names of the process's mappings the kernel may merge (KSM: VmFlags `mg`)."""
    names, name = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("VmFlags:"):
                if "mg" in line.split()[1:]:
                    names.append(name)
            elif not line[0].isupper():  # a mapping's first line: range perms ... [path]
                fields = line.split()
                name = fields[5] if len(fields) > 5 else "[anon]"
    return names


@pytest.mark.skipif(not os.path.isdir("/sys/kernel/mm/ksm"), reason="a kernel without KSM")
def test_a_workers_inherited_memory_is_offered_for_page_merging(store_path, tmp_path,
                                                                monkeypatch):
    """What a worker inherits from the forkserver (its heap, pymalloc's arenas,
    libpython's data) may be merged with the same pages of other workers;
    FUSEVOL_MERGE_PAGES=0 offers nothing."""
    run_cli(store_path, "volume", "create", "vol")
    mp = _mountpoint(tmp_path, "mp")
    for setting in ("1", "0"):
        monkeypatch.setenv("FUSEVOL_MERGE_PAGES", setting)
        server = ForkServer()
        server.start()
        try:
            pid = registry.start_worker(store_path, _spec(store_path, "vol"), mp,
                                        forkserver=server)
            try:
                merged = _mergeable(pid)
            finally:
                registry.unmount(store_path, mp)
        finally:
            server.close()
        if setting == "1":
            assert "[heap]" in merged and "[anon]" in merged
            assert any("libpython" in name for name in merged)
        else:
            assert merged == []


# Code a worker runs again and again, or once on its way to serving: specialised
# by CPython (its bytecode rewritten) in the forkserver, before any fork.
REHEARSED = (
    "fusevol.fs.mount:open_volume",
    "fusevol.fs.mount:publish_changed",
    "fusevol.store.env:Store.__init__",
    "fusevol.fs.runner:TxnRunner.run",
    "fusevol.fs.operations:VolumeOperations.create",  # every handler's wrapper
    "fusevol.fs.operations:VolumeOperations.write.__wrapped__",
    "fusevol.fs.filedata:FileData.flush",
    "fusevol.fs.upkeep:Upkeep.run",
)

_PROBE = """
import dis, gc, importlib, json, os, sys, threading
gc.disable()
from fusevol.fs import rehearsal, worker
from fusevol.store import Store

def specialised(path):
    module, names = path.split(":")
    obj = importlib.import_module(module)
    for name in names.split("."):
        obj = getattr(obj, name)
    return any(i.opname == "RESUME_QUICK"
               for i in dis.get_instructions(obj.__code__, adaptive=True))

paths = json.loads(sys.argv[1])
before = [p for p in paths if specialised(p)]
from fusevol.fs import runner
runner.NUDGE_EVERY = 0.001  # the store thread's timer goes off in every batch
rehearsal.rehearse()
held = []
for fd in os.listdir("/proc/self/fd"):
    try:
        held.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
print(json.dumps({"before": before, "after": [p for p in paths if specialised(p)],
                  "threads": threading.active_count(), "held": held,
                  "stores": list(Store._instances)}))
"""


def test_rehearsal_specialises_a_workers_code_and_leaves_nothing_behind(tmp_path):
    """The forkserver's rehearsal of a worker's life leaves the code a worker
    runs specialised, and nothing else: no scratch file, thread, store or
    FUSE session (pyfuse3 holds one per process: a worker needs its own).
    The store thread's timer (SIGALRM, see TxnRunner's nudge_reads) going off
    does not end the process."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch),
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(REHEARSED)], env=env,
                         capture_output=True, check=True, timeout=120)
    found = json.loads(out.stdout)
    assert found["before"] == []
    assert found["after"] == list(REHEARSED)
    assert found["threads"] == 1 and found["stores"] == []
    assert not [h for h in found["held"] if h == "/dev/fuse" or h.endswith(".mdb")
                or h.startswith(str(scratch))], found["held"]
    assert os.listdir(scratch) == []
