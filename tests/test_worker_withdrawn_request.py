"""A caller killed in the middle of a request must not freeze its volume's worker
with the store's write lock held (found by the crash rounds: a daemon killed
during a Mount could not start again).

The kernel withdraws a request whose caller dies before the worker reads it,
and an interrupt it queued once the worker answers. pyfuse3 reads /dev/fuse
with the GIL held once epoll said it was readable: a withdrawn request leaves
that read blocked, and the worker's store thread, which needs the GIL to
commit its open batch, holds LMDB's write lock until the next request comes.
Every other writer of the store (workers, daemon, CLI) waits meanwhile."""

import os
import subprocess
import sys
import time

from conftest import needs_fuse

KILLS = 150
LOCK_WAIT = 5.0  # seconds another process may wait for the write lock after a kill


def write_lock_free(store_path: str) -> bool:
    """Whether another process gets the store's write lock within LOCK_WAIT seconds."""
    probe = ("import lmdb, sys; env = lmdb.open(sys.argv[1], max_dbs=32, map_size=1 << 40); "
             "env.begin(write=True).abort()")
    try:
        subprocess.run([sys.executable, "-c", probe, os.path.join(store_path, "db")],
                       timeout=LOCK_WAIT, check=True)
        return True
    except subprocess.TimeoutExpired:
        return False


@needs_fuse
def test_killed_callers_never_hold_the_store(mounts, store_path):
    mp = mounts.mount("vol")
    # statfs is a store call: the worker has a batch open while it answers.
    caller = f"import os\nwhile True: os.statvfs({mp!r})"
    for i in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-c", caller])
        time.sleep(0.12 + (i % 7) * 0.003)  # past start-up: statfs in a loop
        proc.kill()
        proc.wait()
        assert write_lock_free(store_path), \
            f"after {i + 1} killed callers the store's write lock stays held (a frozen worker)"
