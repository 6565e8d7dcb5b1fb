"""Threads doing random things to a handful of names of one volume at once:
writes at random offsets (some fsync'ed), reads, truncates, renames over each
other, unlinks (some while the file is open and still written), listings and
stats, while snapshots are taken. No model of the content (the threads race on
purpose): what must hold is that no call fails with an errno the race cannot
explain, the worker logs no error, and the store verifies (every reference
counted, every chunk's hash right) with every snapshot in it.
"""

import errno
import os
import random
import threading
import time

import pytest

from conftest import run_cli

NAMES = 6
THREADS = 6
OPS = 1500
# What racing threads can make each other see.
RACE_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR}


def _chaos(root: str, rnd: random.Random, ops: int, bad: list) -> None:
    names = [os.path.join(root, f"f{i}") for i in range(NAMES)]
    for n in range(ops):
        path, op = rnd.choice(names), rnd.random()
        try:
            if op < 0.3:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                os.pwrite(fd, rnd.randbytes(rnd.choice((10, 4096, 70000, 200000))),
                          rnd.randrange(600_000))
                if rnd.random() < 0.3:
                    os.fsync(fd)
                os.close(fd)
            elif op < 0.45:
                fd = os.open(path, os.O_RDONLY)
                os.pread(fd, rnd.choice((100, 131072, 300000)), rnd.randrange(600_000))
                os.close(fd)
            elif op < 0.55:
                fd = os.open(path, os.O_RDWR)
                os.ftruncate(fd, rnd.randrange(700_000))
                os.close(fd)
            elif op < 0.65:
                os.rename(path, rnd.choice(names))
            elif op < 0.72:
                os.unlink(path)
            elif op < 0.8:
                os.listdir(root)
            elif op < 0.9:  # an open file, written and read after its name may be gone
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                if rnd.random() < 0.5:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                os.pwrite(fd, rnd.randbytes(50000), rnd.randrange(300_000))
                os.pread(fd, 100000, 0)
                os.close(fd)
            else:
                os.stat(path)
        except OSError as e:
            if e.errno not in RACE_ERRNOS:
                bad.append(f"operation {n} on {os.path.basename(path)}: {e}")
                return


@pytest.mark.parametrize("writeback", ["1", "0"])
def test_racing_threads_and_snapshots_leave_a_store_that_verifies(mounts, writeback):
    env = {"FUSEVOL_FLUSH_AT": str(256 << 10), "FUSEVOL_WRITEBACK_CACHE": writeback}
    mp = mounts.mount("chaos", env=env)
    bad: list[str] = []
    threads = [threading.Thread(target=_chaos, args=(mp, random.Random(k), OPS, bad))
               for k in range(THREADS)]
    for t in threads:
        t.start()
    snapshots = 0
    while any(t.is_alive() for t in threads):
        run_cli(mounts.store_path, "snapshot", "create", f"chaos@s{snapshots}")
        snapshots += 1
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert bad == []
    mounts.umount(mp)
    with open(os.path.join(mounts.store_path, "run", "log", "chaos.log")) as f:
        log = f.read()
    assert "ERROR" not in log and "CRITICAL" not in log
    report = run_cli(mounts.store_path, "verify").stdout.decode()
    assert f"{snapshots} snapshots: ok" in report, report
