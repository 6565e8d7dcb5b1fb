"""fusevol's own cost per request, without the kernel: the handlers called in-process.

The small-files workload (bench/workloads.py: in a new folder, create, write
4 KiB, close and stat each file, then unlink them all) sends 13 FUSE requests
per file, in this order (the kernel's fuse tracepoints show it): a negative
LOOKUP, CREATE, GETXATTR (security.capability, before the write), WRITE,
SETATTR (the times the writeback cache keeps), FLUSH, RELEASE, two GETATTRs;
then UNLINK, SETATTR (the times of the deleted file), GETATTR and a FORGET.
This bench calls the same handlers in the same order on a fusevol
volume (a real store in a temporary folder, its store thread running) and on
the in-memory ceiling (memfs.py), in one process, and prints the CPU time of
each per file and per request type: what the stack (pyfuse3, trio, the
kernel) costs is left out, so what remains is each filesystem's own work.
CPU time is per thread (the trio thread's, and the whole process's, which
includes the store thread), so it moves little with other load on the machine.

    python bench/handlers.py [FILES] [--untar | --wal]

With --untar, the requests of the untar row instead (untar_files below): files
of the standard library's sizes, with tar's fchown, fchmod and futimens. With
--wal, FILES commits of a database's write-ahead log (wal_commits below) on a
volume with its intent log, each fsync's fdatasync left out (the disk's, not
the worker's): what pgbench's transactions cost the FUSE thread.
"""

import collections
import os
import stat
import sys
import tempfile
import time

import pyfuse3
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fusevol.fs import intent as intent_module  # noqa: E402
from fusevol.fs.intent import IntentLog  # noqa: E402
from fusevol.fs.operations import VolumeOperations  # noqa: E402
from fusevol.fs.rehearsal import RequestContext, TimesFields  # noqa: E402
from fusevol.fs.runner import TxnRunner, tune_interpreter  # noqa: E402
from fusevol.fs.space import SpaceBudget  # noqa: E402
from fusevol.store import Inodes, Store, volumes  # noqa: E402
from memfs import MemoryOperations  # noqa: E402

ROOT = pyfuse3.ROOT_INODE
CAPABILITY = b"security.capability"


class Fields:
    """A SETATTR's fields: the ones named are set."""
    update_mode = update_uid = update_gid = update_size = False
    update_atime = update_mtime = update_ctime = False

    def __init__(self, *names: str):
        for name in names:
            setattr(self, "update_" + name, True)


OWNER = Fields("uid", "gid", "ctime")          # fchown
MODE = Fields("mode", "ctime")                 # fchmod
UTIMES = Fields("atime", "mtime", "ctime")     # futimens


def _timer(costs: collections.Counter):
    """An awaiter that adds the FUSE thread's CPU time of each handler to costs[kind]."""
    clock = time.thread_time_ns

    async def timed(kind, coro):
        t = clock()
        try:
            return await coro
        finally:
            costs[kind] += clock() - t
    return timed


async def small_files(ops, n: int, costs: collections.Counter, folder: bytes) -> None:
    """The kernel's requests for bench/workloads.py's small files: in a new
    folder, `n` x (create, write 4 KiB, close, stat), then `n` unlinks."""
    ctx, data = RequestContext(), os.urandom(4096)
    fields = TimesFields()
    timed = _timer(costs)

    parent = (await ops.mkdir(ROOT, folder, stat.S_IFDIR | 0o755, ctx)).st_ino
    inos = []
    for i in range(n):
        name = b"f%06d" % i
        await timed("lookup", ops.lookup(parent, name, ctx))
        info, entry = await timed("create", ops.create(parent, name, 0o100644, os.O_WRONLY, ctx))
        ino, fh = entry.st_ino, info.fh
        try:
            await timed("getxattr", ops.getxattr(ino, CAPABILITY, ctx))
        except pyfuse3.FUSEError:
            pass
        await timed("write", ops.write(fh, 0, data))
        attr = await ops.getattr(ino, ctx)
        attr.st_mtime_ns = attr.st_ctime_ns = time.time_ns()
        await timed("setattr", ops.setattr(ino, attr, fields, fh, ctx))
        await timed("flush", ops.flush(fh))
        await timed("release", ops.release(fh))
        for _ in range(2):
            await timed("getattr", ops.getattr(ino, ctx))
        inos.append(ino)
    for i, ino in enumerate(inos):
        await timed("unlink", ops.unlink(parent, b"f%06d" % i, ctx))
        attr.st_ctime_ns = time.time_ns()
        await timed("setattr", ops.setattr(ino, attr, fields, None, ctx))
        await timed("getattr", ops.getattr(ino, ctx))
        await timed("forget", ops.forget([(ino, 1)]))


async def untar_files(ops, sizes: list, costs: collections.Counter, folder: bytes) -> None:
    """The kernel's requests for GNU tar extracting one regular file of each size
    (its fuse tracepoints show them): a negative LOOKUP, CREATE, a GETXATTR
    (security.capability) per write(2) of 10 KiB, the WRITE of the whole file
    that the writeback cache sends at fchown, SETATTR of its times, SETATTR of
    the owner (fchown), GETXATTR, GETATTR, SETATTR of the mode (fchmod) and
    of the times (futimens), FLUSH, RELEASE, GETATTR."""
    ctx, data = RequestContext(), os.urandom(max(sizes))
    fields = TimesFields()
    timed = _timer(costs)

    async def getxattr(ino):
        try:
            await timed("getxattr", ops.getxattr(ino, CAPABILITY, ctx))
        except pyfuse3.FUSEError:
            pass

    parent = (await ops.mkdir(ROOT, folder, stat.S_IFDIR | 0o755, ctx)).st_ino
    for i, size in enumerate(sizes):
        name = b"f%06d.py" % i
        await timed("lookup", ops.lookup(parent, name, ctx))
        info, entry = await timed("create", ops.create(parent, name, 0o100600, os.O_WRONLY, ctx))
        ino, fh = entry.st_ino, info.fh
        for _ in range(max(1, -(-size // 10240))):
            await getxattr(ino)
        if size:  # an empty file gets no WRITE
            await timed("write", ops.write(fh, 0, data[:size]))
        attr = await ops.getattr(ino, ctx)
        attr.st_mtime_ns = attr.st_ctime_ns = time.time_ns()
        await timed("setattr", ops.setattr(ino, attr, fields, fh, ctx))
        attr.st_uid = attr.st_gid = 0
        await timed("setattr", ops.setattr(ino, attr, OWNER, fh, ctx))
        await getxattr(ino)
        await timed("getattr", ops.getattr(ino, ctx))
        attr.st_mode = stat.S_IFREG | 0o644
        await timed("setattr", ops.setattr(ino, attr, MODE, fh, ctx))
        attr.st_atime_ns = attr.st_mtime_ns = 1_600_000_000 * 10**9
        await timed("setattr", ops.setattr(ino, attr, UTIMES, fh, ctx))
        await timed("flush", ops.flush(fh))
        await timed("release", ops.release(fh))
        await timed("getattr", ops.getattr(ino, ctx))


async def wal_commits(ops, n: int, costs: collections.Counter, name: bytes) -> None:
    """The kernel's requests for `n` commits of a write-ahead log (pgbench's,
    fuse tracepoints and the worker's counters): GETXATTR (before the write(2)),
    the WRITE of the 8 KiB page that the writeback cache sends at the fsync, a
    SETATTR of the times for one commit in three (the kernel's times move by
    the tick), FSYNC; the log is written in place, a page after the other."""
    ctx, fields = RequestContext(), TimesFields()
    timed = _timer(costs)
    info, entry = await ops.create(ROOT, name, 0o100600, os.O_RDWR, ctx)
    ino, fh = entry.st_ino, info.fh
    await ops.write(fh, 0, bytes(1 << 20))
    await ops.fsync(fh, True)
    page = os.urandom(8192)
    for i in range(n):
        try:
            await timed("getxattr", ops.getxattr(ino, CAPABILITY, ctx))
        except pyfuse3.FUSEError:
            pass
        await timed("write", ops.write(fh, i * 8192 % (1 << 20), page))
        if i % 3 == 0:
            attr = await ops.getattr(ino, ctx)
            attr.st_mtime_ns = attr.st_ctime_ns = time.time_ns()
            await timed("setattr", ops.setattr(ino, attr, fields, fh, ctx))
        await timed("fsync", ops.fsync(fh, True))
    await ops.release(fh)


def stdlib_sizes(n: int) -> list:
    """The sizes of the first `n` regular files of the standard library (the untar row's tree)."""
    import sysconfig
    sizes = []
    for top, dirs, files in os.walk(sysconfig.get_paths()["stdlib"]):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "site-packages", "lib-dynload"))
        for f in sorted(files):
            path = os.path.join(top, f)
            if os.path.isfile(path) and not os.path.islink(path):
                sizes.append(os.path.getsize(path))
                if len(sizes) == n:
                    return sizes
    return sizes


def _fusevol(folder: str, wal: bool = False):
    store = Store.open(os.path.join(folder, "store"))
    with store.write() as txn:
        record = volumes.create(txn, "bench", {})
    inodes = Inodes(record.vid, store.block_size, record.compression)
    runner = TxnRunner(store)
    runner.start()
    space = SpaceBudget(store, None, 0, pending=lambda: runner.unstored_bytes)
    log = None
    if wal:
        intent_module._fdatasync_all = lambda fds: None  # the disk's time, not the worker's
        log = IntentLog.open(store.path, inodes, runner)
        quiet, _ = os.pipe()  # a FUSE session with no request waiting
        log.requests_from(quiet)
    return VolumeOperations(runner, inodes, space, intent=log), runner


async def _measure(ops, n: int, untar: bool = False,
                   wal: bool = False) -> tuple[collections.Counter, float, float]:
    costs: collections.Counter = collections.Counter()
    await small_files(ops, 200, collections.Counter(), b"warm-up")
    t, p = time.thread_time(), time.process_time()
    if untar:
        await untar_files(ops, stdlib_sizes(n), costs, b"untar")
    elif wal:
        await wal_commits(ops, n, costs, b"wal")
    else:
        await small_files(ops, n, costs, b"small")
    if isinstance(ops, VolumeOperations):  # what the store thread still has to do
        await ops.runner.sync()
    return costs, time.thread_time() - t, time.process_time() - p


def main() -> None:
    untar, wal = "--untar" in sys.argv, "--wal" in sys.argv
    args = [a for a in sys.argv[1:] if a not in ("--untar", "--wal")]
    n = int(args[0]) if args else 5000
    tune_interpreter()  # as a worker does
    with tempfile.TemporaryDirectory(dir=os.environ.get("FUSEVOL_BENCH_DIR", "/var/tmp")) as d:
        ops, runner = _fusevol(d, wal)
        try:
            fv = trio.run(_measure, ops, n, untar, wal)
        finally:
            runner.stop()
            if ops.intent is not None:
                ops.intent.close()
    mem = trio.run(_measure, MemoryOperations(), n, untar, wal)
    what = ("untar files (the standard library's first sizes)" if untar
            else "commits of a write-ahead log" if wal else "small files")
    print(f"{n} {what}, handlers called in-process (CPU us per {'commit' if wal else 'file'})")
    print("| request | per file | memfs us | fusevol us | ratio |")
    print("|---|---:|---:|---:|---:|")
    per_file = ({"getattr": 2, "setattr": 4, "getxattr": "3-4"} if untar
                else {"setattr": "1/3"} if wal else {"getattr": 3, "setattr": 2})
    for kind in sorted(fv[0], key=lambda k: -fv[0][k]):
        m, f = mem[0][kind] / n / 1000, fv[0][kind] / n / 1000
        print(f"| {kind} | {per_file.get(kind, 1)} | {m:.1f} | {f:.1f} | {f / m if m else 0:.1f}x |")
    print(f"| trio thread, all | {15 if untar else '3 1/3' if wal else 13} | {mem[1] / n * 1e6:.1f} | {fv[1] / n * 1e6:.1f} | "
          f"{fv[1] / mem[1]:.1f}x |")
    print(f"| process (+ store thread) | | {mem[2] / n * 1e6:.1f} | {fv[2] / n * 1e6:.1f} | "
          f"{fv[2] / mem[2]:.1f}x |")


if __name__ == "__main__":
    main()
