#!/usr/bin/env python3
"""How fast the CLI answers: `fusevol volume ls` and `fusevol snapshot create` on a
small volume (200 files), as a user runs them (bytecode caches written and warm),
and `snapshot create` of such a volume mounted (served by a worker of the same
tree), one file of it changed before each (unless --no-mount: that needs FUSE).

For each source tree given, every command runs N times, the trees taking turns in
every repetition (an A/B of two versions in one sitting); printed per command: the
minimum and median wall time, the minimum user+sys CPU (the figure that holds on a
loaded machine), and, with --instructions, the instructions the interpreter executes
(valgrind's count: the same on a loaded machine as on a quiet one).

    PYTHONPATH=. /opt/fusevol/bin/python bench/cli_start.py --reps 20 \\
        --tree before=/path/to/old/checkout --tree after=. [--instructions]
"""

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib



def entry(tree: str) -> str:
    """What the tree's `fusevol` script runs (its pyproject's console script), as `-c` code."""
    with open(os.path.join(tree, "pyproject.toml"), "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["fusevol"]
    module, _, attr = target.partition(":")
    return f"import sys; from {module} import {attr} as main; sys.argv[0] = 'fusevol'; sys.exit(main())"


def _env(tree: str, store: str) -> dict:
    # (with `-c` the working directory comes first on sys.path: each run is started in its tree)
    env = dict(os.environ, PYTHONPATH=tree, FUSEVOL_STORE=store)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # users' runs write and reuse .pyc files
    return env


def run(tree: str, store: str, args: list[str]) -> tuple[float, float]:
    """Wall time and user+sys CPU of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", entry(tree), *args], env=_env(tree, store),
                            cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if status != 0:
        sys.exit(f"fusevol {' '.join(args)} failed in {tree}: {err}")
    return wall, usage.ru_utime + usage.ru_stime


def instructions(tree: str, store: str, args: list[str]) -> float | None:
    """Millions of instructions one run executes (valgrind), None without valgrind."""
    if shutil.which("valgrind") is None:
        return None
    # Under valgrind, LMDB cannot map the store's usual terabyte: a smaller map
    # (the store is small), or the command fails and its count means nothing.
    env = dict(_env(tree, store), FUSEVOL_MAP_SIZE=str(4 << 30))
    out = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                          "--cachegrind-out-file=/dev/null", sys.executable, "-c", entry(tree), *args],
                         env=env, cwd=tree, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"fusevol {' '.join(args)} failed under valgrind in {tree}: {out.stderr[-2000:]}")
    for line in out.stderr.splitlines():
        if "I   refs:" in line or "I refs:" in line:
            return int(line.split(":")[1].replace(",", "")) / 1e6
    return None


def small_volume(store: str, tree: str, name: str = "small") -> None:
    """A volume of 200 small files, imported from a tar made here."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for i in range(200):
            body = f"file {i}\n".encode()
            info = tarfile.TarInfo(f"f{i:03d}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    subprocess.run([sys.executable, "-c", entry(tree), "import", "-q", name], input=data.getvalue(),
                   env=_env(tree, store), cwd=tree, stdout=subprocess.DEVNULL, check=True)


def mounted_volume(store: str, tree: str, name: str) -> str:
    """small_volume `name`, mounted by `tree`'s worker; its mountpoint."""
    small_volume(store, tree, name)
    mountpoint = os.path.join(store, "bench-" + name)
    os.makedirs(mountpoint)
    subprocess.run([sys.executable, "-c", entry(tree), "mount", "--background", name, mountpoint],
                   env=_env(tree, store), cwd=tree, check=True)
    return mountpoint


def unmount(store: str, tree: str, mountpoint: str) -> None:
    subprocess.run([sys.executable, "-c", entry(tree), "umount", mountpoint],
                   env=_env(tree, store), cwd=tree, stdout=subprocess.DEVNULL)


def change_one_file(mountpoint: str, count: int) -> None:
    """One change for the next snapshot to hold: in the kernel's pages, not yet the worker's."""
    with open(os.path.join(mountpoint, "f000"), "w") as f:
        f.write(f"changed {count}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                    help="a source tree (repeatable; default: this one)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--instructions", action="store_true",
                    help="also count instructions with valgrind (a few seconds a command)")
    ap.add_argument("--no-mount", action="store_true",
                    help="leave out `snapshot create` of a mounted volume")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [t.split("=", 1) for t in args.tree] or [["fusevol", root]]
    trees = [(label, os.path.abspath(path)) for label, path in trees]
    store = tempfile.mkdtemp(prefix="fusevol-clistart-")
    mounted: dict[str, tuple[str, str]] = {}  # label -> (volume, mountpoint)
    try:
        small_volume(store, trees[0][1])
        commands = {"volume ls": ["volume", "ls"], "snapshot create": None}
        if not args.no_mount:
            commands["snapshot (mounted)"] = None
            for i, (label, tree) in enumerate(trees):  # each tree's own worker
                mounted[label] = (f"served{i}", mounted_volume(store, tree, f"served{i}"))
        got = {(label, c): [] for label, _ in trees for c in commands}
        for label, tree in trees:  # once each: .pyc files written, caches warm
            run(tree, store, ["volume", "ls"])
        count = 0

        def argv_of(label: str, name: str) -> list[str]:
            if commands[name] is not None:
                return commands[name]
            if name == "snapshot create":
                return ["snapshot", "create", f"small@s{count}"]
            volume, mountpoint = mounted[label]
            change_one_file(mountpoint, count)
            return ["snapshot", "create", f"{volume}@s{count}"]

        for rep in range(args.reps):
            order = trees[rep % len(trees):] + trees[:rep % len(trees)]
            for label, tree in order:
                for name in commands:
                    count += 1
                    got[(label, name)].append(run(tree, store, argv_of(label, name)))
        print(f"{args.reps} runs each, load average {os.getloadavg()[0]:.1f}:")
        for name in commands:
            for label, tree in trees:
                walls = [w for w, _ in got[(label, name)]]
                cpus = [c for _, c in got[(label, name)]]
                line = (f"  {name:<18} {label:>10}: wall min {min(walls) * 1000:5.1f} ms, "
                        f"median {statistics.median(walls) * 1000:5.1f} ms; "
                        f"CPU min {min(cpus) * 1000:4.0f} ms")
                if args.instructions:
                    count += 1
                    ir = instructions(tree, store, argv_of(label, name))
                    line += f"; {ir:.0f} M instructions" if ir is not None else ""
                print(line)
    finally:
        for label, tree in trees:
            if label in mounted:
                unmount(store, tree, mounted[label][1])
        shutil.rmtree(store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
