"""A throw-away one-node Ceph cluster with an S3 gateway on 127.0.0.1, for tests.

One monitor, one OSD (bluestore on a sparse file) and radosgw (beast frontend),
all from Debian's packages, in one folder: no cephx (`auth_* = none`), one
replica, no manager (radosgw needs none, and it costs the most memory and
start-up time). Starting takes seconds; `stop()` kills every daemon it started
and removes the folder.

Run by hand: `python tests/ceph_cluster.py [DIR]` starts one, prints the
endpoint and keys as shell variables, and waits for Ctrl-C.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
ACCESS_KEY = "FUSEVOLTESTACCESSKEY"
SECRET_KEY = "fusevol-test-secret-key-0123456789abcdef"


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONF = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
# radosgw watches objects to hear of cache changes; a gateway that was killed
# holds its watches until this runs out, and every bucket change waits for it.
osd client watch timeout = 5
paxos propose interval = 0.01
mon osd full ratio = 0.99
mon osd nearfull ratio = 0.98
osd failsafe full ratio = 0.995
run dir = {dir}/run
admin socket = {dir}/run/$name.asok
log file = {dir}/log/$name.log
pid file = {dir}/run/$name.pid
mon data = {dir}/mon
osd data = {dir}/osd
osd objectstore = bluestore
bluestore block create = true
bluestore block size = {block_size}
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mount = false
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 134217728
osd op num shards = 1
osd op num threads per shard = 2
ms async op threads = 1
debug ms = 0
debug osd = 0
debug bluestore = 0
debug rocksdb = 0
debug mon = 0
debug paxos = 0
debug rgw = 0

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {dir}/rgw
rgw thread pool size = 32
rgw dns name = 127.0.0.1
rgw enable usage log = false
rgw max chunk size = 4194304
"""


class CephCluster:
    def __init__(self, path: str | None = None, block_size: int = 20 << 30):
        self.dir = path or tempfile.mkdtemp(prefix="fusevol-ceph-")
        self.own_dir = path is None
        self.block_size = block_size
        self.conf = os.path.join(self.dir, "ceph.conf")
        self.procs: dict[str, subprocess.Popen] = {}
        self.rgw_port = _free_port()
        self.mon_port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.rgw_port}"
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY

    # -- helpers -------------------------------------------------------------------
    def _run(self, *args, timeout: float = 60) -> str:
        proc = subprocess.run([*args, "-c", self.conf], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def _daemon(self, name: str, *args) -> None:
        log = open(os.path.join(self.dir, "log", f"{name}.out"), "ab")
        self.procs[name] = subprocess.Popen([*args, "-f", "-c", self.conf], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = self.log_tail(name)
                raise RuntimeError(f"{name} exited {proc.returncode} while starting:\n{tail}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        out = []
        for path in (os.path.join(self.dir, "log", f"{name}.out"),):
            try:
                with open(path, errors="replace") as f:
                    out += f.read().splitlines()[-lines:]
            except OSError:
                pass
        return "\n".join(out)

    def _wait(self, what: str, check, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            self._check_alive()
            try:
                if check():
                    return
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ceph test cluster: {what} not ready after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> "CephCluster":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        t0 = time.monotonic()
        for sub in ("run", "log", "mon", "osd", "rgw"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        fsid = str(uuid.uuid4())
        with open(self.conf, "w") as f:
            f.write(CONF.format(fsid=fsid, mon_port=self.mon_port, rgw_port=self.rgw_port,
                                dir=self.dir, block_size=self.block_size))
        monmap = os.path.join(self.dir, "monmap")
        self._run("monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]",
                  "--fsid", fsid, monmap)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap)
        self._daemon("mon", "ceph-mon", "-i", "a")
        osd_uuid = str(uuid.uuid4())
        self._wait("monitor", lambda: self._run("ceph", "osd", "new", osd_uuid, "0",
                                                 timeout=10) is not None, timeout=30)
        self._run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, timeout=120)
        self._daemon("osd", "ceph-osd", "-i", "0")
        self._wait("OSD", self._osd_up, timeout=60)
        self._daemon("rgw", "radosgw", "-n", "client.rgw")
        self._wait("radosgw", self._rgw_answers, timeout=60)
        self._run("radosgw-admin", "user", "create", "--uid", "fusevol-test",
                  "--display-name", "fusevol test", "--access-key", self.access_key,
                  "--secret", self.secret_key, timeout=60)
        self.start_seconds = time.monotonic() - t0

    def _osd_up(self) -> bool:
        status = json.loads(self._run("ceph", "osd", "stat", "-f", "json", timeout=10))
        return status.get("num_up_osds") == 1 and status.get("num_in_osds") == 1

    def _rgw_answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint, timeout=2).read()
        except urllib.error.HTTPError:
            return True  # an S3 error answer is an answer
        return True

    def stop_rgw(self) -> None:
        """Stop the gateway only (the server going away in the middle of a
        transfer): SIGTERM, as a service manager stops it, which drops open
        connections and lets it give up its watches."""
        proc = self.procs.pop("rgw", None)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def start_rgw(self) -> None:
        self._daemon("rgw", "radosgw", "-n", "client.rgw")
        self._wait("radosgw", self._rgw_answers, timeout=60)

    def memory_bytes(self) -> int:
        """Resident memory of the daemons now running."""
        total = 0
        for proc in self.procs.values():
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def stop(self) -> None:
        for name in ("rgw", "osd", "mon"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Handlers of our own: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    cluster = CephCluster(sys.argv[1] if len(sys.argv) > 1 else None).start()
    print(f"export AWS_ACCESS_KEY_ID={cluster.access_key} AWS_SECRET_ACCESS_KEY={cluster.secret_key}")
    print(f"# endpoint {cluster.endpoint}, started in {cluster.start_seconds:.1f} s, "
          f"{cluster.memory_bytes() >> 20} MiB resident")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
