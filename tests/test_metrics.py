"""`fusevol serve --metrics ADDR`: Prometheus figures of the store and of every running
worker, scraped over TCP and a unix socket and parsed as Prometheus parses them."""

import http.client
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import HAVE_FUSE
from plugin_daemon import PluginDaemon, UnixHTTPConnection
from fusevol.plugin.metrics import parse_address

pytestmark = pytest.mark.skipif(not HAVE_FUSE, reason="needs root, /dev/fuse and fusermount3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_with_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEVOL_METRICS_INTERVAL", "0.2")  # workers publish often
    port = _free_port()
    daemon = PluginDaemon(str(tmp_path / "store"), str(tmp_path / f"fv-{uuid.uuid4().hex[:6]}.sock"),
                          str(tmp_path / "serve.log"), "--metrics", f"127.0.0.1:{port}")
    daemon.start()
    yield daemon, port
    daemon.cleanup()


@pytest.fixture
def served(tmp_path, monkeypatch):
    yield from _serve_with_metrics(tmp_path, monkeypatch)


def scrape(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type").startswith("text/plain; version=")
        text = resp.read().decode()
    finally:
        conn.close()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_of_a_busy_volume(served):
    daemon, port = served
    assert daemon.call("/VolumeDriver.Create", {"Name": "busy"})[0] == 200
    status, reply = daemon.call("/VolumeDriver.Mount", {"Name": "busy", "ID": "c1"})
    assert status == 200
    path = reply["Mountpoint"]
    data = os.urandom(300_000)
    for i in range(5):
        with open(os.path.join(path, f"f{i}"), "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
    for i in range(5):
        with open(os.path.join(path, f"f{i}"), "rb", buffering=0) as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            assert f.read() == data
    for _ in range(40):  # opendir, readdir, releasedir: the kernel caches none of them
        assert len(os.listdir(path)) == 5
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(port)
        written = value(samples, "fusevol_written_bytes_total", volume="busy") or 0
        opendirs = value(samples, "fusevol_fuse_requests_total", volume="busy",
                         operation="opendir") or 0
        if (written >= 5 * len(data) and opendirs >= 40) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert written >= 5 * len(data)
    assert value(samples, "fusevol_read_bytes_total", volume="busy") > 0
    assert value(samples, "fusevol_fuse_requests_total", volume="busy", operation="create") == 5
    assert value(samples, "fusevol_fuse_requests_total", volume="busy", operation="fsync") == 5
    # Every 16th request of an operation is timed.
    counts = {dict(labels)["operation"]: v for (name, labels), v in samples.items()
              if name == "fusevol_fuse_requests_total"}
    timed = {op: value(samples, "fusevol_fuse_request_duration_seconds_count",
                       volume="busy", operation=op) or 0 for op in counts}
    assert timed == {op: n // 16 for op, n in counts.items()}
    busiest = max(counts, key=counts.get)
    assert counts[busiest] >= 16
    assert value(samples, "fusevol_fuse_request_duration_seconds_bucket", volume="busy",
                 operation=busiest, le="+Inf") == counts[busiest] // 16
    assert value(samples, "fusevol_fuse_request_duration_seconds_sum", volume="busy",
                 operation=busiest) > 0
    assert value(samples, "fusevol_commit_duration_seconds_count", volume="busy") >= 5
    assert value(samples, "fusevol_worker_up", volume="busy") == 1
    assert value(samples, "fusevol_worker_starts_total", volume="busy") == 1
    assert value(samples, "fusevol_volume_mounts", volume="busy") == 1
    assert value(samples, "fusevol_volume_logical_bytes", volume="busy") == 5 * len(data)
    assert value(samples, "fusevol_store_unique_bytes") == len(data)  # five copies, stored once
    assert value(samples, "fusevol_store_dedup_ratio") == pytest.approx(5.0)
    assert value(samples, "fusevol_store_file_bytes") > 0

    assert daemon.call("/VolumeDriver.Unmount", {"Name": "busy", "ID": "c1"})[0] == 200
    daemon.wait_idle_workers_stopped()
    samples = scrape(port)
    assert value(samples, "fusevol_worker_up", volume="busy") is None  # its figures went with it
    assert value(samples, "fusevol_volume_mounts", volume="busy") == 0
    assert value(samples, "fusevol_worker_starts_total", volume="busy") == 1


@pytest.fixture
def often_reconciled(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEVOL_RECONCILE_INTERVAL", "0.2")  # the daemon checks its workers often
    yield from _serve_with_metrics(tmp_path, monkeypatch)


def test_an_idle_worker_is_sent_nothing_and_writes_nothing(often_reconciled):
    """A mounted volume no one uses costs no CPU: the daemon's checks for dead workers
    send it no request, and it does not rewrite figures that did not change."""
    daemon, port = often_reconciled
    assert daemon.call("/VolumeDriver.Create", {"Name": "calm"})[0] == 200
    status, reply = daemon.call("/VolumeDriver.Mount", {"Name": "calm", "ID": "c1"})
    assert status == 200
    with open(os.path.join(reply["Mountpoint"], "f"), "wb") as f:
        f.write(b"x" * 4096)
    record = os.path.join(daemon.store, "run", "metrics", "calm.json")

    def requests():
        samples = scrape(port)
        return {dict(labels)["operation"]: v for (name, labels), v in samples.items()
                if name == "fusevol_fuse_requests_total"}

    deadline = time.monotonic() + 10
    while not requests().get("release") and time.monotonic() < deadline:
        time.sleep(0.2)  # the close reached the worker and its figures
    time.sleep(1.0)  # the flush after close, its figures published
    before, written_at = requests(), os.stat(record).st_mtime_ns
    time.sleep(2.0)  # ten reconcile rounds, ten publishing intervals
    after = requests()
    # A FORGET is the kernel's own: it evicts inodes when memory is short or
    # caches are dropped (another job's drop_caches), whatever the daemon does.
    assert {k: v for k, v in after.items() if k != "forget"} == \
        {k: v for k, v in before.items() if k != "forget"}
    if after == before:
        assert os.stat(record).st_mtime_ns == written_at
    assert daemon.call("/VolumeDriver.Unmount", {"Name": "calm", "ID": "c1"})[0] == 200


def test_metrics_on_a_unix_socket_and_bad_addresses(tmp_path):
    path = str(tmp_path / "metrics.sock")
    daemon = PluginDaemon(str(tmp_path / "store"), str(tmp_path / "fv-u.sock"),
                          str(tmp_path / "serve.log"), "--metrics", f"unix:{path}")
    daemon.start()
    try:
        conn = UnixHTTPConnection(path)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"fusevol_store_stored_bytes", "fusevol_store_compression_ratio"} <= names
        conn = UnixHTTPConnection(path)
        conn.request("GET", "/other")
        assert conn.getresponse().status == 404
        conn.close()
    finally:
        daemon.cleanup()
    for bad in ("nowhere", "host:port", "unix:relative", ":0", ":70000"):
        proc = subprocess.run([sys.executable, "-m", "fusevol", "--store", str(tmp_path / "s2"),
                               "serve", "--socket", str(tmp_path / "x.sock"), "--metrics", bad],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 4 and "metrics address" in proc.stderr, (bad, proc.stderr)
    assert parse_address("[::1]:9332") == ("tcp", ("::1", 9332))
