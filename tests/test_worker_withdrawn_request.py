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
import select
import subprocess
import sys
import time

from conftest import needs_fuse

KILLS = 150
# Seconds another process may wait for the write lock after a kill. A frozen
# worker holds it until the next request comes, however long that is; a busy
# machine only delays the commit of the open batch.
LOCK_WAIT = 10.0

# Takes the store's write lock once per line it reads, and says so: one
# process for the whole test, so that its start is not part of the wait.
PROBE = ("import lmdb, sys\n"
         "env = lmdb.open(sys.argv[1], max_dbs=32, map_size=1 << 40)\n"
         "print('ready', flush=True)\n"
         "for _ in sys.stdin:\n"
         "    env.begin(write=True).abort()\n"
         "    print('free', flush=True)\n")


class LockProbe:
    def __init__(self, store_path: str):
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE, os.path.join(store_path, "db")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._answer(60) == "ready"

    def _answer(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def write_lock_free(self) -> bool:
        """Whether the probe gets the store's write lock within LOCK_WAIT seconds."""
        self.proc.stdin.write("take\n")
        self.proc.stdin.flush()
        return self._answer(LOCK_WAIT) == "free"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@needs_fuse
def test_killed_callers_never_hold_the_store(mounts, store_path):
    mp = mounts.mount("vol")
    # statfs is a store call: the worker has a batch open while it answers.
    caller = f"import os\nwhile True: os.statvfs({mp!r})"
    probe = LockProbe(store_path)
    try:
        for i in range(KILLS):
            proc = subprocess.Popen([sys.executable, "-c", caller])
            time.sleep(0.12 + (i % 7) * 0.003)  # past start-up: statfs in a loop
            proc.kill()
            proc.wait()
            assert probe.write_lock_free(), \
                f"after {i + 1} killed callers the store's write lock stays held (a frozen worker)"
    finally:
        probe.close()
