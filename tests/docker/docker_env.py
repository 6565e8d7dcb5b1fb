"""Fixtures of the Docker tests: a private dockerd, a busybox image made on the spot,
and `fusevol serve` as its volume plugin. (The tests import them: a second
conftest.py would shadow tests/conftest.py for `from conftest import ...`.)

dockerd finds legacy plugins by socket name in /run/docker/plugins, so the
plugin gets a random name (fv-XXXXXXXX) and tests of other stores on this host
never meet it.
"""

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid

import pytest

from plugin_daemon import PluginDaemon, mounts_under, unmount_under

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
IMAGE = "fusevol-test:latest"


def _why_no_docker() -> str | None:
    if os.geteuid() != 0:
        return "dockerd needs root"
    for tool in ("dockerd", "docker", "fusermount3"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh --test installs it)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if not os.path.exists(BUSYBOX):
        return "busybox-static is not installed (scripts/setup.sh --test installs it)"
    return None


class Docker:
    def __init__(self, host: str, config_dir: str):
        self.env = dict(os.environ, DOCKER_HOST=host, DOCKER_CONFIG=config_dir)

    def __call__(self, *args: str, check: bool = True, timeout: float = 180,
                 input: bytes | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", *args], capture_output=True, env=self.env,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stderr.decode(errors='replace')}")
        return proc

    def out(self, *args: str, **kw) -> str:
        return self(*args, **kw).stdout.decode().strip()

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(["docker", *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)


def _image_tar() -> bytes:
    """A root filesystem: busybox with its applets, and /seed files for copy-up."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add_dir(name, uid=0, mode=0o755):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, uid
            tar.addfile(info)

        def add_file(name, data: bytes, uid=0, mode=0o644):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, 1_000_000_000
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "tmp", "data", "seed", "seed/sub", "etc"):
            add_dir(d, mode=0o1777 if d == "tmp" else 0o755)
        with open(BUSYBOX, "rb") as f:
            add_file("bin/busybox", f.read(), mode=0o755)
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
        for applet in applets.stdout.split():
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        add_file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\nuser:x:1000:1000:user:/:/bin/sh\n")
        add_file("etc/group", b"root:x:0:\nuser:x:1000:\n")
        add_file("seed/a.txt", b"seeded by the image\n", uid=1000, mode=0o640)
        add_file("seed/sub/b.bin", bytes(range(256)) * 1024)
        link = tarfile.TarInfo("seed/link")
        link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
        tar.addfile(link)
    return buf.getvalue()


@contextlib.contextmanager
def dockerd(base):
    """A private dockerd with its data under `base`, the test image imported.
    Two of them stand for two hosts (they share /run/docker/plugins, so each
    host's plugin is told apart by its driver name)."""
    # The exec root holds unix sockets: keep its path short (108 bytes at most).
    exec_root = tempfile.mkdtemp(prefix="fvd-", dir="/tmp")
    host = f"unix://{exec_root}/docker.sock"
    log = open(base / "dockerd.log", "wb")
    proc = subprocess.Popen(
        ["dockerd", "--iptables=false", "--ip-masq=false", "--bridge=none",
         "--data-root", str(base / "data"), "--exec-root", exec_root, "-H", host,
         "--pidfile", f"{exec_root}/docker.pid"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    dk = Docker(host, str(base / "config"))
    try:
        deadline = time.monotonic() + 60
        while dk("info", check=False, timeout=30).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dockerd did not start; see {base / 'dockerd.log'}")
            time.sleep(0.2)
        dk("import", "-", IMAGE, input=_image_tar())
        yield dk
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for root in (str(base / "data"), exec_root):
            unmount_under(root)
        if not mounts_under(exec_root):
            shutil.rmtree(exec_root, ignore_errors=True)


def skip_without_docker() -> None:
    reason = _why_no_docker()
    if reason:
        pytest.skip(f"Docker end-to-end tests: {reason}")


@pytest.fixture(scope="session")
def docker(tmp_path_factory):
    skip_without_docker()
    with dockerd(tmp_path_factory.mktemp("dockerd")) as dk:
        yield dk


@pytest.fixture(scope="session")
def plugin(docker, tmp_path_factory):
    """`fusevol serve` on /run/docker/plugins/fv-XXXXXXXX.sock; its driver name is fv-XXXXXXXX."""
    base = tmp_path_factory.mktemp("plugin")
    name = f"fv-{uuid.uuid4().hex[:8]}"
    daemon = PluginDaemon(str(base / "store"), f"/run/docker/plugins/{name}.sock", str(base / "serve.log"))
    daemon.start()
    yield daemon
    ids = docker.out("ps", "-aq").split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    daemon.cleanup()


@pytest.fixture
def volume_name():
    """A fresh volume name per call."""
    return lambda prefix="v": f"{prefix}-{uuid.uuid4().hex[:8]}"
