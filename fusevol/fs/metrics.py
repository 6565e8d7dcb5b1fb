"""A worker's counters: FUSE requests by operation with their latencies, bytes read and
written, commits. Cheap enough for every request, and published to a file the
daemon reads when Prometheus scrapes it (plugin/metrics.py): no IPC per request.

A request costs one addition to a list: its operation's count. Every 16th
request of an operation is also timed (a clock read costs more than all the
rest here: about 160 ns on the benchmark machine, bench/metrics_overhead.py)
into a histogram of power-of-two buckets (the bucket is the latency's bit
length in nanoseconds: no search) and a sum, kept beside the count in the same
list. Only the trio thread writes request counters and only the store thread
writes commit counters (every commit is timed); the publisher reads both and
tolerates a torn read (one count late).
"""

import json
import logging
import os
import time

log = logging.getLogger(__name__)

BUCKETS = 48                # bit lengths 0..47 of a latency in ns: up to 2**47 ns (39 h)
# An operation's place in the list: its count, its buckets, the sum of their ns.
COUNT, FIRST_BUCKET, SUM = 0, 1, 1 + BUCKETS
STRIDE = SUM + 1
SAMPLE_MASK = 15            # a request whose count is a multiple of 16 is timed
PUBLISH_INTERVAL = float(os.environ.get("FUSEVOL_METRICS_INTERVAL", "5"))
OPERATIONS: list[str] = []  # every FUSE handler, in the order handler() met them
COMMIT = "commit"           # the store's commits, kept like an operation


def slot(name: str) -> int:
    """The index where an operation's buckets start (called once per handler, at import)."""
    if name not in OPERATIONS:
        OPERATIONS.append(name)
    return OPERATIONS.index(name) * STRIDE


class WorkerMetrics:
    __slots__ = ("hist", "bytes_read", "bytes_written")

    def __init__(self):
        slot(COMMIT)
        self.hist = [0] * (len(OPERATIONS) * STRIDE)
        self.bytes_read = 0
        self.bytes_written = 0

    def observe(self, at: int, ns: int) -> None:
        """Count one timed event (operations.handler does the same inline)."""
        hist = self.hist
        hist[at + COUNT] += 1
        hist[at + FIRST_BUCKET + ns.bit_length()] += 1
        hist[at + SUM] += ns

    def time_commits(self, store) -> None:
        """Count the commits of `store` (this worker's; only its store thread commits)."""
        commit, at = store.commit, slot(COMMIT)

        def timed_commit(*args, **kwargs):
            started = time.monotonic_ns()
            try:
                return commit(*args, **kwargs)
            finally:
                self.observe(at, time.monotonic_ns() - started)

        store.commit = timed_commit

    def snapshot(self) -> dict:
        ops = {}
        hist = list(self.hist)
        for index, name in enumerate(OPERATIONS):
            at = index * STRIDE
            if hist[at + COUNT]:
                ops[name] = {"count": hist[at + COUNT], "sum_ns": hist[at + SUM],
                             "buckets": hist[at + FIRST_BUCKET:at + SUM]}
        return {"ops": ops, "bytes_read": self.bytes_read, "bytes_written": self.bytes_written}


def metrics_path(store_path: str, name: str) -> str:
    return os.path.join(store_path, "run", "metrics", f"{name}.json")


def publish(path: str, counters: dict, **gauges) -> None:
    """Write the counters (WorkerMetrics.snapshot) and `gauges` for the daemon
    (atomically: it may read any time)."""
    record = {"pid": os.getpid(), "time": time.time(), **counters, **gauges}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)
    except OSError as e:  # metrics are never worth failing the volume
        log.warning("cannot publish metrics to %s: %s", path, e)


def withdraw(path: str) -> None:
    """A worker that ends takes its counters with it (Prometheus sees a counter reset)."""
    try:
        with open(path) as f:
            if json.load(f).get("pid") != os.getpid():
                return  # a newer worker's
        os.unlink(path)
    except (OSError, ValueError):
        pass
