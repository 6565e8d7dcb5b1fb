"""Run `fusevol serve` as a real process and talk HTTP to its socket, as dockerd does."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

from fusevol.errors import FusevolError
from fusevol.fs import mount


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 150):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class PluginDaemon:
    def __init__(self, store: str, socket_path: str, log_path: str, *serve_args: str):
        self.serve_args = serve_args  # more options for `fusevol serve`
        self.store = store
        self.socket = socket_path
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def driver_name(self) -> str:
        return os.path.basename(self.socket).removesuffix(".sock")

    def start(self, timeout: float = 60) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fusevol", "serve", "--store", self.store,
                 "--socket", self.socket, *self.serve_args],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fusevol serve exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.call("/Plugin.Activate")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"fusevol serve did not answer in {timeout}s:\n{self.log()}")
            time.sleep(0.1)

    def mountpoint_of(self, volume: str) -> str:
        return os.path.join(self.store, "mnt", volume)

    def workers(self) -> list[dict]:
        return mount.workers(self.store)

    def wait_idle_workers_stopped(self, timeout: float = 30) -> None:
        """Wait until no worker serves and nothing is mounted in the driver's folder:
        the daemon keeps a worker a few seconds after its last Unmount (--idle-worker-time)."""
        deadline = time.monotonic() + timeout
        while self.workers() or mounts_under(os.path.join(self.store, "mnt")):
            if time.monotonic() > deadline:
                raise AssertionError(f"workers still serve after {timeout} s: {self.workers()}")
            time.sleep(0.05)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def call(self, endpoint: str, body=None) -> tuple[int, dict]:
        """POST a request (a dict, or raw bytes) and return (status, reply)."""
        data = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        conn = UnixHTTPConnection(self.socket)
        try:
            conn.request("POST", endpoint, body=data,
                         headers={"Accept": "application/vnd.docker.plugins.v1.2+json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the daemon alone (its workers run in their own sessions) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def cleanup(self) -> None:
        """Stop the daemon and detach whatever it left mounted, then wait for its workers."""
        self.kill(signal.SIGTERM)
        unmount_under(os.path.join(self.store, "mnt"))
        deadline = time.monotonic() + 60
        for info in mount.workers(self.store):
            while mount.pid_alive(info.pid) and time.monotonic() < deadline:
                time.sleep(0.05)


def mounts_under(base: str) -> list[str]:
    base = os.path.abspath(base) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(base)]


def unmount_under(base: str) -> None:
    # Deepest first: views are bind mounts of folders inside their source's mount.
    for point in sorted(set(mounts_under(base)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def stop_driver_mounts(store_path: str, mnt_dir: str) -> None:
    """A test's end: stop every worker of the store (each stores what it holds), then
    detach whatever is left in the driver's folder (views, dead mounts)."""
    for info in mount.workers(store_path):
        if mount.is_mountpoint(info.mountpoint):
            try:
                mount.unmount(store_path, info.mountpoint, timeout=30)
            except FusevolError:
                pass
    unmount_under(mnt_dir)
