"""What counting a FUSE request costs: the handler wrapper of fusevol/fs/operations.py
with its metrics (two clock reads, two list additions) against the same wrapper without
them, around a handler that does nothing, on trio as pyfuse3 runs it.

    PYTHONPATH=. python bench/metrics_overhead.py [CALLS]
"""

import errno
import functools
import sys
import time

import pyfuse3
import trio

from fusevol.errors import FusevolError
from fusevol.fs import metrics, operations


def uncounted(fn):
    """The wrapper as it was before it counted requests."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        if self.readonly:
            raise pyfuse3.FUSEError(errno.EROFS)
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except FusevolError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class Ops:
    readonly = False

    def __init__(self):
        self.metrics = metrics.WorkerMetrics()

    async def getattr(self, inode, ctx=None):
        return inode


async def per_call_ns(fn, ops, calls: int) -> float:
    started = time.perf_counter_ns()
    for i in range(calls):
        await fn(ops, i)
    return (time.perf_counter_ns() - started) / calls


async def main(calls: int) -> None:
    ops = Ops()
    counted = operations.handler(Ops.getattr)
    plain = uncounted(Ops.getattr)
    best = {"without metrics": float("inf"), "with metrics": float("inf")}
    for _ in range(7):  # interleaved, best of 7: the machine is shared
        best["without metrics"] = min(best["without metrics"], await per_call_ns(plain, ops, calls))
        best["with metrics"] = min(best["with metrics"], await per_call_ns(counted, ops, calls))
    for name, ns in best.items():
        print(f"{name:>16}: {ns:6.0f} ns per request")
    print(f"{'cost':>16}: {best['with metrics'] - best['without metrics']:6.0f} ns per request")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
