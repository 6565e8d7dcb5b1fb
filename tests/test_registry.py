"""The worker registry judges a worker alive by the lock it holds on its entry,
not by its pid: a managed plugin's workers run in the plugin's pid namespace,
where their pids name other processes (or none) of the host's."""

import os
import shutil
import subprocess
import sys

import pytest

from fusevol.fs import registry
from fusevol.records import Worker

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REGISTER = """
import sys
from fusevol.fs import registry
from fusevol.records import Worker
import os
registry.register(sys.argv[1], Worker(pid=os.getpid(), volume="vol", mountpoint="/mnt/volumes/vol"))
print(os.getpid(), flush=True)
sys.stdin.read()  # serve until told to end
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a new pid namespace needs root and unshare(1)")
def test_a_worker_of_another_pid_namespace_is_seen_while_it_lives_and_gone_after(tmp_path):
    store = str(tmp_path)
    proc = subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, "-c", REGISTER, store],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": ROOT_DIR})
    try:
        ns_pid = int(proc.stdout.readline())
        assert ns_pid == 1  # its own namespace: the host's pid 1 is another process
        assert [w.volume for w in registry.workers(store)] == ["vol"]
        seen = registry.workers(store)[0]
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert registry.wait_unregistered(store, seen, timeout=5)
    assert registry.workers(store) == []
    assert os.listdir(os.path.join(store, "run", "workers")) == []  # its stale entry removed


def test_an_entry_whose_lock_is_free_is_stale_whatever_its_pid(tmp_path):
    store = str(tmp_path)
    live = registry.register(store, Worker(pid=os.getpid(), volume="a", mountpoint="/a"))
    dead = registry.register(store, Worker(pid=os.getpid(), volume="b", mountpoint="/b"))
    os.close(dead._fd)  # the process "ended" without removing its entry: the lock goes
    dead._fd = None
    assert [w.volume for w in registry.workers(store)] == ["a"]
    assert not os.path.exists(dead.path)
    live.close()
    assert registry.workers(store) == []


def test_a_worker_whose_pid_ended_is_gone_though_its_lock_lingers(tmp_path):
    """A killed worker's pid ends before its last thread lets go of its files (a
    thread still in a system call): in our own pid namespace the pid decides."""
    store = str(tmp_path)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    gone_pid = int(ended.stdout)
    lingering = registry.register(store, Worker(pid=gone_pid, volume="a", mountpoint="/a"))
    assert registry.workers(store) == []
    lingering.close()


def test_a_flush_finds_no_worker_when_its_mount_went_before_the_entry(tmp_path):
    """An idle worker stopping unmounts first and lets go of its entry after:
    a flush in between met the bare folder (getxattr: ENODATA, the CLI's
    snapshot failed); it is no worker to flush, the unmount stored all."""
    store = str(tmp_path)
    folder = tmp_path / "mnt" / "vol"
    folder.mkdir(parents=True)
    entry = registry.register(store, Worker(pid=os.getpid(), volume="vol", mountpoint=str(folder)))
    try:
        assert registry.flush_worker(store, "vol") is False
    finally:
        entry.close()
    # Nor does a snapshot asked of it: the caller takes it itself.
    entry = registry.register(store, Worker(pid=os.getpid(), volume="vol", mountpoint=str(folder),
                                            takes_snapshots=True))
    try:
        assert registry.snapshot_by_worker(store, "vol", "s") is None
    finally:
        entry.close()
