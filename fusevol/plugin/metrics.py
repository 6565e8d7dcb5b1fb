"""The daemon's Prometheus endpoint (`fusevol serve --metrics ADDR`, off by default).

Figures are gathered when Prometheus scrapes, never on a timer: the store's
totals and each volume's size from one read transaction, and each running
worker's counters from the file it publishes every few seconds
(fs/metrics.py). Workers are never asked anything, so a scrape costs a
mounted volume nothing. Rendering goes through prometheus-client.
"""

import json
import logging
import os
import time

import trio

from ..errors import InvalidArgument
from ..fs import metrics as worker_metrics
from ..fs import registry
from ..store import chunks, datafiles, volumes
from . import http

log = logging.getLogger(__name__)

# Histogram bounds: every other power of two of a latency in ns, 1 us (2**10) to 17 s (2**34).
_BOUND_BITS = range(10, 35, 2)


def parse_address(text: str) -> tuple[str, str | int]:
    """("unix", PATH) for "unix:PATH", ("tcp", (HOST, PORT)) for "HOST:PORT" or ":PORT"."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise InvalidArgument(f"metrics address {text!r}: give an absolute path (unix:/run/x.sock)")
        return "unix", path
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"metrics address {text!r}: use HOST:PORT (127.0.0.1:9332), :PORT "
                              "or unix:PATH")
    return "tcp", (host.strip("[]") or "", int(port))


def _histogram(family, labels: list[str], buckets: list[int], sum_ns: int) -> None:
    """Add one histogram to `family` from power-of-two buckets (fs/metrics.py)."""
    cumulative, seen = [], 0
    bits = iter(_BOUND_BITS)
    bound = next(bits)
    for bit_length, count in enumerate(buckets):
        while bound is not None and bit_length > bound:
            cumulative.append((repr(2 ** bound / 1e9), seen))
            bound = next(bits, None)
        seen += count
    while bound is not None:
        cumulative.append((repr(2 ** bound / 1e9), seen))
        bound = next(bits, None)
    cumulative.append(("+Inf", seen))
    family.add_metric(labels, cumulative, sum_ns / 1e9)


class StoreCollector:
    """A prometheus-client collector over one store and the daemon's supervisor."""

    def __init__(self, supervisor):
        self.sup = supervisor

    def _worker_records(self) -> dict[str, dict]:
        folder = os.path.join(self.sup.store_path, "run", "metrics")
        found = {}
        for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if not entry.endswith(".json"):
                continue
            try:
                with open(os.path.join(folder, entry)) as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            if registry.pid_alive(record.get("pid", -1)):
                found[entry[:-len(".json")]] = record
        return found

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        def gauge(name, doc, labels=()):
            return GaugeMetricFamily(f"fusevol_{name}", doc, labels=list(labels))

        with self.sup.store.read() as txn:
            totals = chunks.totals(txn)
            records = volumes.list_all(txn, removed=True)
            sizes = {v.name: volumes.stats(txn, v) for v in records}
        logical = sum(sizes[v.name].logical_bytes for v in records if v.vid is not None)

        store = {
            "logical_bytes": ("What all volumes hold (bytes).", logical),
            "unique_bytes": ("Bytes of distinct chunks (after dedup).", totals["unique_bytes"]),
            "stored_bytes": ("Bytes the chunks take (after compression).", totals["stored_bytes"]),
            "chunks": ("Distinct chunks stored.", totals["chunks"]),
            "file_bytes": ("Disk space of the store's LMDB file.", _file_bytes(self.sup.store_path)),
            "data_files_bytes": ("Disk space of the store's data files (large chunks).",
                                 datafiles.disk_bytes(self.sup.store_path)),
            "dedup_ratio": ("logical / unique bytes.",
                            logical / totals["unique_bytes"] if totals["unique_bytes"] else 1.0),
            "compression_ratio": ("unique / stored bytes.", totals["unique_bytes"] /
                                  totals["stored_bytes"] if totals["stored_bytes"] else 1.0),
        }
        for key, (doc, value) in store.items():
            family = gauge(f"store_{key}", doc)
            family.add_metric([], value)
            yield family

        volume_bytes = gauge("volume_logical_bytes", "What a volume holds (bytes).", ["volume"])
        volume_inodes = gauge("volume_inodes", "Files, folders and links of a volume.", ["volume"])
        volume_mounts = gauge("volume_mounts", "Docker mounts of a volume.", ["volume"])
        for v in records:
            if v.removed:
                continue
            volume_bytes.add_metric([v.name], sizes[v.name].logical_bytes)
            volume_inodes.add_metric([v.name], sizes[v.name].inodes)
            volume_mounts.add_metric([v.name], v.mount_count)
        yield from (volume_bytes, volume_inodes, volume_mounts)

        starts = CounterMetricFamily("fusevol_worker_starts", "Workers this daemon started, "
                                     "per volume (a restart after a crash counts).", labels=["volume"])
        for name, count in sorted(self.sup.worker_starts.items()):
            starts.add_metric([name], count)
        yield starts

        requests = CounterMetricFamily("fusevol_fuse_requests",
                                       "FUSE requests a volume's worker answered, by operation.",
                                       labels=["volume", "operation"])
        durations = HistogramMetricFamily(
            "fusevol_fuse_request_duration_seconds",
            "Time a worker took to answer FUSE requests, by operation (one request in 16 "
            "is timed: a clock read costs more than counting).", labels=["volume", "operation"])
        commits = HistogramMetricFamily("fusevol_commit_duration_seconds",
                                        "Store commits of a volume's worker.", labels=["volume"])
        read = CounterMetricFamily("fusevol_read_bytes", "Bytes read through a volume.",
                                   labels=["volume"])
        written = CounterMetricFamily("fusevol_written_bytes", "Bytes written to a volume.",
                                      labels=["volume"])
        up = gauge("worker_up", "1 while a worker serves the volume.", ["volume"])
        dirty = gauge("dirty_bytes", "Written data a worker holds in memory, not stored yet.",
                      ["volume"])
        unstored = gauge("unstored_bytes", "Data handed to the store thread, not on disk yet.",
                         ["volume"])
        open_files = gauge("open_files", "Open file handles of a volume.", ["volume"])
        age = gauge("metrics_age_seconds", "How old a worker's published figures are.", ["volume"])
        now = time.time()
        for name, record in sorted(self._worker_records().items()):
            for operation, op in sorted(record.get("ops", {}).items()):
                if operation == worker_metrics.COMMIT:
                    _histogram(commits, [name], op["buckets"], op["sum_ns"])
                    continue
                requests.add_metric([name, operation], op["count"])
                if any(op["buckets"]):
                    _histogram(durations, [name, operation], op["buckets"], op["sum_ns"])
            read.add_metric([name], record.get("bytes_read", 0))
            written.add_metric([name], record.get("bytes_written", 0))
            up.add_metric([name], 1)
            dirty.add_metric([name], record.get("dirty_bytes", 0))
            unstored.add_metric([name], record.get("unstored_bytes", 0))
            open_files.add_metric([name], record.get("open_files", 0))
            age.add_metric([name], max(0.0, now - record.get("time", now)))
        yield from (requests, durations, commits, read, written, up, dirty, unstored, open_files,
                    age)


def _file_bytes(store_path: str) -> int:
    try:
        return os.stat(os.path.join(store_path, "db", "data.mdb")).st_blocks * 512
    except OSError:
        return 0


class MetricsApp(http.App):
    def __init__(self, supervisor):
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(supervisor))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    async def handle(self, method: str, target: str, body: bytes) -> http.Reply:
        from prometheus_client import CONTENT_TYPE_LATEST

        if target.split("?", 1)[0] != "/metrics":
            return self.refuse(404, "not found; the figures are at /metrics\n")
        try:
            text = await trio.to_thread.run_sync(self.render)
        except Exception as e:  # a scrape must never end the daemon
            log.exception("metrics")
            return self.refuse(500, f"cannot gather metrics: {e}\n")
        return http.Reply(200, text, CONTENT_TYPE_LATEST)


async def serve_metrics(address: str, app: MetricsApp, nursery: trio.Nursery, bind_unix) -> None:
    """Listen on `address` (parse_address) and serve `app` there."""
    kind, where = parse_address(address)
    if kind == "unix":
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(bind_unix(where)))]
    else:
        host, port = where
        try:
            listeners = await trio.open_tcp_listeners(port, host=host or None)
        except OSError as e:
            raise InvalidArgument(f"cannot listen on {address} for metrics: {e.strerror}") from None
    log.info("metrics at %s/metrics", address)
    for listener in listeners:
        nursery.start_soon(http.serve_listener, listener, app, 1 << 16, nursery)

