"""`docker run --rm -v VOL:/data busybox true` with fusevol volumes against a local one.

One private dockerd; one `fusevol serve` per source tree given (its own store
and socket, the tree first on PYTHONPATH), so two versions of the code are
measured in one sitting: the systems take turns in every repetition (the order
rotates), and load from elsewhere on the machine falls on all of them. Each
figure is the median of the repetitions, and its ratio to the local volume.

    PYTHONPATH=. /opt/fusevol/bin/python bench/docker_start.py --reps 15 \\
        --tree before=/path/to/old/checkout --tree after=. \\
        --tree cold=. --serve-args "cold=--idle-worker-time 0"

--serve-args gives one tree's `fusevol serve` more options (a tree may be
given twice under two labels). Needs root, dockerd, busybox.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import extras

IMAGE = "fusevol-bench:latest"


class Plugin:
    """`fusevol serve` of one source tree as a legacy plugin of the private dockerd."""

    def __init__(self, label: str, tree: str, base: str, extra_env: dict, args: list):
        self.label, self.tree = label, os.path.abspath(tree)
        self.driver = f"fvs-{uuid.uuid4().hex[:8]}"
        self.socket = f"/run/docker/plugins/{self.driver}.sock"
        self.store = os.path.join(base, f"store-{label}")
        self.log = os.path.join(base, f"serve-{label}.log")
        env = dict(os.environ, PYTHONPATH=self.tree, **extra_env)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fusevol", "-v", "serve", "--store", self.store,
                 "--socket", self.socket, *args], cwd=self.tree, env=env,
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        extras._unmount_under(self.store)
        if os.path.exists(self.socket):
            os.unlink(self.socket)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                    help="a source tree to serve volumes from (repeatable; default: this one)")
    ap.add_argument("--reps", type=int, default=12, help="repetitions (default 12)")
    ap.add_argument("--base", default="/var/tmp", help="where dockerd's data and the stores go")
    ap.add_argument("--serve-args", action="append", default=[], metavar="LABEL=ARGS",
                    help="more options of one tree's `fusevol serve` (repeatable)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of every `fusevol serve` (repeatable)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/docker_start.py needs root (dockerd, FUSE mounts)")
    why = extras._why_no_docker()
    if why:
        sys.exit(why)
    trees = [t.split("=", 1) for t in args.tree] or [["fusevol", "."]]
    extra_env = dict(e.split("=", 1) for e in args.env)
    serve_args = {label: text.split() for label, text in (a.split("=", 1) for a in args.serve_args)}
    base = tempfile.mkdtemp(prefix="fusevol-dstart-", dir=args.base)
    exec_root = tempfile.mkdtemp(prefix="fvs-", dir="/tmp")  # holds sockets: a short path
    data_root = os.path.join(base, "docker-data")
    env = dict(os.environ, DOCKER_HOST=f"unix://{exec_root}/docker.sock",
               DOCKER_CONFIG=os.path.join(base, "docker-config"))
    plugins = []
    with open(os.path.join(base, "dockerd.log"), "ab") as logf:
        dockerd = subprocess.Popen(
            ["dockerd", "--iptables=false", "--ip-masq=false", "--bridge=none",
             "--data-root", data_root, "--exec-root", exec_root, "-H", env["DOCKER_HOST"],
             "--pidfile", f"{exec_root}/docker.pid"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)

    def docker(*cmd, input=None):
        return subprocess.run(["docker", *cmd], env=env, input=input, capture_output=True,
                              check=True, timeout=300)

    try:
        plugins = [Plugin(label, tree, base, extra_env, serve_args.get(label, []))
                   for label, tree in trees]
        deadline = time.monotonic() + 90
        while (subprocess.run(["docker", "info"], env=env, capture_output=True).returncode != 0
               or not all(os.path.exists(p.socket) for p in plugins)):
            if dockerd.poll() is not None or any(p.proc.poll() is not None for p in plugins) \
                    or time.monotonic() > deadline:
                sys.exit(f"dockerd or fusevol serve did not start: see {base}")
            time.sleep(0.2)
        docker("import", "-", IMAGE, input=extras._busybox_image())
        systems = [("local", "local")] + [(p.label, p.driver) for p in plugins]
        for label, driver in systems:
            docker("volume", "create", "-d", driver, f"dstart-{label}")
            docker("run", "--rm", "-v", f"dstart-{label}:/data", IMAGE, "true")  # the first use
        times: dict[str, list[float]] = {label: [] for label, _ in systems}
        for rep in range(args.reps):
            shift = rep % len(systems)
            for label, _ in systems[shift:] + systems[:shift]:
                start = time.monotonic()
                docker("run", "--rm", "-v", f"dstart-{label}:/data", IMAGE, "true")
                times[label].append(time.monotonic() - start)
        local = statistics.median(times["local"])
        print(f"docker run --rm -v VOL:/data busybox true, {args.reps} repetitions, medians:")
        for label, got in times.items():
            med = statistics.median(got)
            print(f"  {label:>10}: {med * 1000:6.0f} ms  {med / local:5.2f}x local  "
                  f"(min {min(got) * 1000:.0f}, max {max(got) * 1000:.0f} ms)")
        for label, _ in systems:
            docker("volume", "rm", f"dstart-{label}")
    finally:
        for p in plugins:
            p.stop()
        dockerd.terminate()
        try:
            dockerd.wait(60)
        except subprocess.TimeoutExpired:
            dockerd.kill()
            dockerd.wait()
        for root in (data_root, exec_root):
            extras._unmount_under(root)
        shutil.rmtree(exec_root, ignore_errors=True)
        if os.environ.get("KEEP") is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")


if __name__ == "__main__":
    main()
