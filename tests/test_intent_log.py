"""fsync of small writes through the intent log (fs/intent.py, store/intentlog.py):
SIGKILL the worker after fsyncs returned, then check every fsync'ed byte, read
back through a new mount or through a command that reads the volume while no
worker serves it (export), on real mounts and real LMDB files."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import needs_fuse, run_cli
from fusevol.fs.registry import flush_worker, worker_of
from fusevol.store import intentlog

PAGE = 8192

# A write-ahead log as a database writes one: 8 KiB pages appended, the last
# page written again as it fills (in part, and in place), each commit fsync'ed
# (fdatasync); a second file gets a page at a random place per commit. After
# each fsync it prints the number of commits made durable.
WRITER = r"""
import os, random, sys
wal, table, commits = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(7)
w = os.open(wal, os.O_WRONLY | os.O_CREAT, 0o644)
t = os.open(table, os.O_WRONLY | os.O_CREAT, 0o644)
os.ftruncate(t, 4 << 20)
os.fsync(t)
def page(tag, i):
    return (tag * 1000003 + i).to_bytes(8, "big") * (8192 // 8)
for i in range(commits):
    # the half-filled last page first (as a log rewrites it), then whole
    os.pwrite(w, page(1, i)[:4096], i * 8192)
    os.pwrite(w, page(1, i), i * 8192)
    os.fdatasync(w)
    os.pwrite(t, page(2, i), rng.randrange(512) * 8192)
    os.fsync(t)
    print(i + 1, flush=True)
import time
while True:
    time.sleep(1)
"""


def expected(commits: int) -> tuple[bytes, dict[int, bytes]]:
    """The log file's content and the table's pages after `commits` commits."""
    import random

    rng = random.Random(7)
    wal = bytearray()
    table = {}
    for i in range(commits):
        wal += (1 * 1000003 + i).to_bytes(8, "big") * (PAGE // 8)
        table[rng.randrange(512)] = (2 * 1000003 + i).to_bytes(8, "big") * (PAGE // 8)
    return bytes(wal), table


def _kill_worker(store_path: str, volume: str) -> None:
    worker = worker_of(store_path, volume=volume)
    os.kill(worker.pid, signal.SIGKILL)
    deadline = time.time() + 10
    while os.path.exists(f"/proc/{worker.pid}") and time.time() < deadline:
        time.sleep(0.05)


def _run_writer(mp: str, commits: int) -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, os.path.join(mp, "wal"),
                               os.path.join(mp, "table"), str(commits)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = 0
    while done < commits:
        line = writer.stdout.readline()
        assert line, f"writer died: {writer.stderr.read()}"
        done = int(line)
    return writer


def _check(wal: bytes, table: bytes, commits: int) -> None:
    want_wal, want_table = expected(commits)
    assert wal[:len(want_wal)] == want_wal, "fsync'ed log pages lost"
    assert len(table) == 4 << 20
    for index, page in want_table.items():
        got = table[index * PAGE:(index + 1) * PAGE]
        assert got == page, f"fsync'ed table page {index} lost"


def _read_back(mp: str) -> tuple[bytes, bytes]:
    """The writer's two files, as the volume mounted at `mp` shows them."""
    with open(os.path.join(mp, "wal"), "rb") as f:
        wal = f.read()
    with open(os.path.join(mp, "table"), "rb") as f:
        return wal, f.read()


def _log_records(store_path: str) -> int:
    """Records the volume's intent log holds now (a worker is serving)."""
    total = 0
    for name in os.listdir(intentlog.log_dir(store_path)):
        if name.split(".")[-1] in ("0", "1"):
            with open(os.path.join(intentlog.log_dir(store_path), name), "rb") as f:
                total += len(intentlog.decode_all(f.read()))
    return total


@needs_fuse
@pytest.mark.parametrize("read_back", ["mount", "export"])
def test_sigkill_after_logged_fsyncs_keeps_every_fsynced_byte(mounts, store_path, read_back):
    mp = mounts.mount("db", env={"FUSEVOL_INTENT_CHECKPOINT_EVERY": "3600"})
    commits = 200
    writer = _run_writer(mp, commits)
    # The fsyncs went to the log (and no checkpoint covered them).
    assert _log_records(store_path) >= commits
    _kill_worker(store_path, "db")
    writer.kill()
    writer.wait()
    mounts.umount(mp)  # detaches the dead mount
    if read_back == "export":
        # A command that reads the volume with no worker serving it.
        tar = run_cli(store_path, "export", "db").stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            files = {m.name.lstrip("./"): t.extractfile(m).read() for m in t if m.isfile()}
        wal, table = files["wal"], files["table"]
    else:
        wal, table = _read_back(mounts.mount("db", create=False))
    _check(wal, table, commits)
    # The log was applied and let go of.
    assert not any(n.endswith((".0", ".1")) for n in os.listdir(intentlog.log_dir(store_path)))


@needs_fuse
def test_records_past_the_first_layout_land_in_zeros_laid_out_ahead(mounts, store_path):
    """A log file is laid out with zeros ahead of its records as they come (a
    record that grew the file would cost its sync a journal commit); records
    written over those zeros survive a SIGKILL like any other."""
    mp = mounts.mount("db", env={"FUSEVOL_INTENT_CHECKPOINT_EVERY": "3600"})
    commits = 400  # two records of 8 KiB each: past the first layout's 4 MiB
    writer = _run_writer(mp, commits)
    end, size = 0, 0
    for name in os.listdir(intentlog.log_dir(store_path)):
        if name.split(".")[-1] in ("0", "1"):
            path = os.path.join(intentlog.log_dir(store_path), name)
            with open(path, "rb") as f:
                records = intentlog.decode_all(f.read())
            if records:
                end = sum(intentlog.encoded_size(r.ranges) for r in records)
                size = os.path.getsize(path)
    assert end > intentlog.PREALLOCATE
    assert size > end, "the records grew the log file: nothing was laid out ahead of them"
    _kill_worker(store_path, "db")
    writer.kill()
    writer.wait()
    mounts.umount(mp)
    _check(*_read_back(mounts.mount("db", create=False)), commits)


CONCURRENT_FSYNCS = r"""
import os, sys, threading
folder, n = sys.argv[1], int(sys.argv[2])
start = threading.Barrier(8)
def writer(k):
    fd = os.open(os.path.join(folder, f"f{k}"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.fsync(fd)
    start.wait()
    for i in range(n):
        os.pwrite(fd, bytes([k]) * 8192, i * 8192)
        os.fdatasync(fd)
    os.close(fd)
threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def _published_intent_counts(store_path: str, volume: str) -> dict:
    from fusevol.fs import metrics
    with open(metrics.metrics_path(store_path, volume)) as f:
        return json.load(f)["intent_log"]


@needs_fuse
def test_concurrent_fsyncs_share_the_log_sync(mounts, store_path):
    """Eight writers fsync'ing their own files at once: fsyncs whose requests
    wait to be read append before the sync and share it (an fsync alone syncs
    at once)."""
    mp = mounts.mount("db", env={"FUSEVOL_INTENT_CHECKPOINT_EVERY": "3600",
                                 "FUSEVOL_METRICS_INTERVAL": "0.2"})
    subprocess.run([sys.executable, "-c", CONCURRENT_FSYNCS, mp, "100"], check=True, timeout=300)
    time.sleep(1)  # published
    counts = _published_intent_counts(store_path, "db")
    assert counts["logged"] >= 800
    assert counts["log_syncs"] < counts["logged"] * 0.9, counts


@needs_fuse
def test_an_older_record_never_undoes_a_later_durable_commit(mounts, store_path):
    """A logged fsync, then a rename (fsyncs must checkpoint after it), then the
    same bytes written again and fsync'ed: after a crash the later bytes stay."""
    mp = mounts.mount("db", env={"FUSEVOL_INTENT_CHECKPOINT_EVERY": "3600"})
    path = os.path.join(mp, "f")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.fsync(fd)
    os.pwrite(fd, b"old!" * 1024, 0)
    os.fsync(fd)
    assert _log_records(store_path) == 1
    os.rename(path, path + "2")
    os.pwrite(fd, b"new!" * 1024, 0)
    os.fsync(fd)  # not through the log: a rename is pending
    os.pwrite(fd, b"more" * 1024, 8192)
    os.fsync(fd)  # through the log again
    os.close(fd)
    _kill_worker(store_path, "db")
    mounts.umount(mp)
    mp = mounts.mount("db", create=False)
    with open(os.path.join(mp, "f2"), "rb") as f:
        data = f.read()
    assert data[:4096] == b"new!" * 1024
    assert data[8192:] == b"more" * 1024


@needs_fuse
def test_clean_unmount_leaves_no_log(mounts, store_path):
    mp = mounts.mount("db")
    with open(os.path.join(mp, "f"), "wb") as f:
        f.write(b"x" * 5000)
        f.flush()
        os.fsync(f.fileno())
    mounts.umount(mp)
    assert not [n for n in os.listdir(intentlog.log_dir(store_path)) if n.startswith(("1.", "2."))]
    mp = mounts.mount("db", create=False)
    with open(os.path.join(mp, "f"), "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(b"x" * 5000).digest()


@needs_fuse
def test_a_truncate_after_logged_fsyncs_is_never_undone_in_part(mounts, store_path):
    """Bytes made durable by a checkpoint, a logged fsync, then a truncate (no
    fsync): after a crash the file is as before the truncate or as after it,
    never the logged bytes over zeros."""
    mp = mounts.mount("db", env={"FUSEVOL_INTENT_CHECKPOINT_EVERY": "3600"})
    path = os.path.join(mp, "f")
    with open(path, "wb") as f:
        f.write(b"O" * 16384)
    assert flush_worker(store_path, "db")  # a checkpoint: durable in the store
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, b"A" * 4096, 0)
    os.fsync(fd)
    assert _log_records(store_path) == 1
    os.ftruncate(fd, 0)
    os.close(fd)
    time.sleep(0.5)  # the truncate's batch is committed (not durably)
    _kill_worker(store_path, "db")
    mounts.umount(mp)
    mp = mounts.mount("db", create=False)
    with open(os.path.join(mp, "f"), "rb") as f:
        data = f.read()
    assert data in (b"", b"A" * 4096 + b"O" * 12288), (len(data), data[:8], data[4096:4104])
