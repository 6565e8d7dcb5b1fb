"""The optional rows of bench/compare.py (h): Docker and PostgreSQL.

They need more than the bench installs and take longer, so they run only in the
full bench and say why when they cannot run:

- docker: a private dockerd with `fusevol serve` as its volume plugin;
  `docker run --rm -v VOL:/data busybox true` and a container that writes
  2000 small files, with a fusevol volume against Docker's local driver.
- pgbench: PostgreSQL (Debian's postgresql) with its data directory in each
  target: `pgbench -i` (scale 10) time, then TPC-B with 4 clients (tps).
"""

import glob
import io
import os
import pwd
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from targets import FUSEVOL, MAKERS, Rclone, run

PG_PORT = 55432


@dataclass
class Result:
    figures: dict = field(default_factory=dict)   # system -> key -> [values]
    skipped: dict = field(default_factory=dict)   # "what" -> reason
    errors: list = field(default_factory=list)

    def add(self, system: str, key: str, value: float) -> None:
        self.figures.setdefault(system, {}).setdefault(key, []).append(value)


def measure(section: str, base: str, p, systems: list, log) -> Result:
    return {"docker": docker_rows, "pgbench": pgbench_rows}[section](base, p, systems, log)


# -- docker ------------------------------------------------------------------------

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
IMAGE = "fusevol-bench:latest"
SMALL_FILES_SCRIPT = ("i=0; while [ $i -lt 2000 ]; do echo data > /data/f$i; i=$((i+1)); done; sync")


def _why_no_docker() -> str | None:
    for tool in ("dockerd", "docker"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh --test installs it)"
    if not os.path.exists(BUSYBOX):
        return "busybox-static is not installed"
    return None


def _busybox_image() -> bytes:
    """A root filesystem of busybox and its applets: nothing to pull."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "data", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in ("sh", "true", "echo", "sync"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return buf.getvalue()


def _unmount_under(root: str) -> None:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(root.rstrip("/") + "/")]
    for point in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def docker_rows(base: str, p, systems: list, log) -> Result:
    """A private dockerd and `fusevol serve` as its plugin: `docker run` of a trivial
    container with a volume of Docker's local driver and with a fusevol volume."""
    result = Result()
    why = _why_no_docker()
    if why:
        result.skipped["docker rows"] = why
        return result
    # The exec root holds unix sockets: its path must stay short.
    exec_root = tempfile.mkdtemp(prefix="fvb-", dir="/tmp")
    data_root = os.path.join(base, "docker-data")
    env = dict(os.environ, DOCKER_HOST=f"unix://{exec_root}/docker.sock",
               DOCKER_CONFIG=os.path.join(base, "docker-config"))
    plugin = f"fvb-{uuid.uuid4().hex[:8]}"
    socket_path = f"/run/docker/plugins/{plugin}.sock"
    with open(os.path.join(base, "dockerd.log"), "ab") as logf:
        dockerd = subprocess.Popen(
            ["dockerd", "--iptables=false", "--ip-masq=false", "--bridge=none", "--data-root", data_root,
             "--exec-root", exec_root, "-H", env["DOCKER_HOST"], "--pidfile", f"{exec_root}/docker.pid"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        serve = subprocess.Popen(
            FUSEVOL + ["serve", "--store", os.path.join(base, "plugin-store"), "--socket", socket_path],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)

    def docker(*args, input=None):
        return subprocess.run(["docker", *args], env=env, input=input, capture_output=True,
                              check=True, timeout=300)

    try:
        deadline = time.monotonic() + 90
        while subprocess.run(["docker", "info"], env=env, capture_output=True).returncode != 0 \
                or not os.path.exists(socket_path):
            if dockerd.poll() is not None or serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd or fusevol serve did not start: see {base}/dockerd.log")
            time.sleep(0.2)
        docker("import", "-", IMAGE, input=_busybox_image())
        for driver, system in (("local", "native"), (plugin, "fusevol")):
            for rep in range(p.reps):
                name = f"bench-{system}-{rep}"
                docker("volume", "create", "-d", driver, name)
                docker("run", "--rm", "-v", f"{name}:/data", IMAGE, "true")  # the first use
                start = time.monotonic()
                docker("run", "--rm", "-v", f"{name}:/data", IMAGE, "true")
                result.add(system, "docker_run", time.monotonic() - start)
                start = time.monotonic()
                docker("run", "--rm", "-v", f"{name}:/data", IMAGE, "sh", "-c", SMALL_FILES_SCRIPT)
                result.add(system, "docker_small", time.monotonic() - start)
                docker("volume", "rm", name)
    except (RuntimeError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None)
        result.errors.append(f"docker rows: {e}" + (f": {detail.decode(errors='replace')[-500:]}"
                                                    if detail else ""))
    finally:
        for proc in (serve, dockerd):
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for root in (data_root, exec_root, os.path.join(base, "plugin-store")):
            _unmount_under(root)
        shutil.rmtree(exec_root, ignore_errors=True)
        if os.path.exists(socket_path):
            os.unlink(socket_path)
    return result


# -- pgbench -----------------------------------------------------------------------

def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else None


def pgbench_rows(base: str, p, systems: list, log) -> Result:
    result = Result()
    bindir = _pg_bin()
    if bindir is None or not os.path.exists(os.path.join(bindir, "pgbench")):
        result.skipped["pgbench rows"] = "PostgreSQL is not installed (apt-get install -y postgresql)"
        return result
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        result.skipped["pgbench rows"] = "no postgres user"
        return result
    makers = [(s, MAKERS[s]) for s in systems]
    if "rclone" in systems:
        # rclone keeps no owners or modes: files belong to whom the mount says, with the
        # modes it says, and initdb wants its folder to be its own, 0700.
        owner = pwd.getpwnam("postgres")
        rclone_for_postgres = ["--uid", str(owner.pw_uid), "--gid", str(owner.pw_gid),
                               "--dir-perms", "0700", "--file-perms", "0600"]
        makers[systems.index("rclone")] = ("rclone", lambda base: Rclone(base, rclone_for_postgres))
    reps = p.reps
    for rep in range(reps):
        for system, make in makers:
            log(f"pgbench {rep + 1}/{reps}: {system}")
            t = make(base)
            try:
                init, tps = _pgbench_once(bindir, t.dir, base, p)
                result.add(system, "pgbench_init", init)
                result.add(system, "pgbench_tps", tps)
            except Exception as e:
                result.errors.append(f"pgbench on {system}, repetition {rep + 1}: {e}")
                log(f"  failed: {e}")
            finally:
                t.close()
    return result


def _as_postgres(*cmd: str) -> subprocess.CompletedProcess:
    try:
        return run(["runuser", "-u", "postgres", "--", *cmd])
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{os.path.basename(cmd[0])} exited {e.returncode}: "
                           f"{(e.stderr or e.stdout).strip()[-800:]}") from None


def _let_others_through(path: str, base: str) -> None:
    """The temporary folders are root's (0700): postgres must reach its data dir."""
    while True:
        os.chmod(path, os.stat(path).st_mode | 0o111)
        if os.path.samefile(path, base) or path == "/":
            return
        path = os.path.dirname(path)


def _pgbench_once(bindir: str, target_dir: str, base: str, p) -> tuple[float, float]:
    data = os.path.join(target_dir, "pgdata")
    sockets = os.path.join(base, "pg-sockets")
    os.makedirs(sockets, exist_ok=True)
    _let_others_through(target_dir, base)
    os.mkdir(data)
    user = pwd.getpwnam("postgres")
    for path in (data, sockets):
        os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(data, 0o700)
    _as_postgres(os.path.join(bindir, "initdb"), "-D", data, "-A", "trust")
    opts = f"-c listen_addresses='' -k {sockets} -p {PG_PORT}"
    _as_postgres(os.path.join(bindir, "pg_ctl"), "-D", data, "-o", opts, "-w", "-l",
                 os.path.join(sockets, "server.log"), "start")
    try:
        pgbench = [os.path.join(bindir, "pgbench"), "-h", sockets, "-p", str(PG_PORT)]
        start = time.monotonic()
        _as_postgres(*pgbench, "-i", "-s", str(p.pg_scale), "-q", "postgres")
        init = time.monotonic() - start
        out = _as_postgres(*pgbench, "-c", "4", "-j", "2", "-T", str(p.pg_runtime), "postgres").stdout
        tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(bindir, "pg_ctl"), "-D", data,
                        "-m", "fast", "-w", "stop"], capture_output=True)
    return init, tps
