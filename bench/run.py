"""fusevol benchmarks: the same workloads on a plain directory and on a mounted volume.

Both live on the same disk (under --base), so the plain directory is the native
baseline and every fusevol figure is printed with its ratio to it. Run as root
(mounts, drop_caches):

    PYTHONPATH=. /opt/fusevol/bin/python bench/run.py [--size 1G] [--json out.json]
        [--knobs] [--peers] [--only seq,rand,small,untar]

--knobs compares the kernel-cache settings of a volume (FUSEVOL_* variables read
at mount time); --peers stores a dedup data set in restic and borg as well and
compares repository sizes with `fusevol df`.
"""

import argparse
import datetime
import glob
import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time

from targets import MiB, Native, Volume, fio, machine, parse_size, run


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (robust where wall time is noisy)."""
    if pid is None:
        return None
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


# -- workloads: each returns rows (key, label, unit, value, higher_is_better) -----

def bench_seq(t, size: int) -> list:
    rows = []
    cpu_before = cpu_seconds(t.worker_pid())
    start = time.monotonic()
    fio(t.dir, "seq", "--rw=write", "--bs=1M", f"--size={size}", "--end_fsync=1")
    secs = time.monotonic() - start  # fio's own figure leaves out the final fsync
    rows.append(("seq_write", f"sequential write {size // MiB} MiB (bs 1M, end_fsync)",
                 "MiB/s", size / MiB / secs, True))
    if cpu_before is not None:
        rows.append(("worker_cpu", "FUSE worker CPU time during the sequential write", "s",
                     cpu_seconds(t.worker_pid()) - cpu_before, False))
    rss = peak_rss_mib(t.worker_pid())
    if rss is not None:
        rows.append(("worker_rss", "FUSE worker peak RSS after the sequential write",
                     "MiB", rss, False))
    t.cold()
    start = time.monotonic()
    fio(t.dir, "seq", "--rw=read", "--bs=1M", f"--size={size}")
    secs = time.monotonic() - start
    rows.append(("seq_read", f"sequential read {size // MiB} MiB, cold (bs 1M)",
                 "MiB/s", size / MiB / secs, True))
    return rows


def bench_rand(t, size: int, runtime: int) -> list:
    rows = []
    t.cold()
    job = fio(t.dir, "seq", "--rw=randread", "--bs=4k", f"--size={size}",
              f"--runtime={runtime}", "--time_based")
    rows.append(("rand_read", f"random 4k read, cold, {runtime} s", "IOPS",
                 job["read"]["iops"], True))
    rsize = min(size, 128 * MiB)
    start = time.monotonic()
    job = fio(t.dir, "rand", "--rw=randwrite", "--bs=4k", f"--size={rsize}", "--end_fsync=1")
    # fio lays the file out first; count only the random writes and the fsync.
    secs = time.monotonic() - start - job["job_runtime"] / 1000 + job["write"]["runtime"] / 1000
    rows.append(("rand_write", f"random 4k write over {rsize // MiB} MiB (end_fsync)", "IOPS",
                 rsize / 4096 / max(secs, 1e-6), True))
    for path in glob.glob(os.path.join(t.dir, "rand.*")):
        os.unlink(path)
    return rows


def bench_small(t, nfiles: int, ndirs: int = 100) -> list:
    block = os.urandom(4096)
    root = os.path.join(t.dir, "small")
    paths = [os.path.join(root, f"d{i % ndirs:03d}", f"f{i:06d}") for i in range(nfiles)]
    rows = []

    def timed(label, key, fn, cold=False):
        if cold:
            t.cold()
        start = time.monotonic()
        fn()
        os.sync()
        rows.append((key, f"{label} ({nfiles} x 4 KiB in {ndirs} dirs)", "files/s",
                     nfiles / (time.monotonic() - start), True))

    def create():
        for d in range(ndirs):
            os.makedirs(os.path.join(root, f"d{d:03d}"))
        for p in paths:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, block)
            os.close(fd)

    def stat_all():
        for p in paths:
            os.stat(p)

    def read_all():
        for p in paths:
            with open(p, "rb") as f:
                if len(f.read()) != 4096:
                    raise RuntimeError(f"short read of {p}")

    def delete():
        for p in paths:
            os.unlink(p)
        for d in range(ndirs):
            os.rmdir(os.path.join(root, f"d{d:03d}"))

    timed("create + sync", "small_create", create)
    timed("stat, cold", "small_stat", stat_all, cold=True)
    timed("stat again, warm", "small_stat_warm", stat_all)
    timed("read back", "small_read", read_all)
    timed("delete + sync", "small_delete", delete)
    os.rmdir(root)
    return rows


def make_tree_tar(base: str, nfiles: int) -> tuple[str, int]:
    """A source-like tree: nested dirs of small text files, as a tar."""
    rng = random.Random(42)
    words = [("".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10))))
             for _ in range(2000)]
    src = os.path.join(base, "tree-src")
    for i in range(nfiles):
        d = os.path.join(src, f"pkg{i % 40:02d}", f"mod{i % 7}")
        os.makedirs(d, exist_ok=True)
        lines = []
        for _ in range(int(rng.paretovariate(1.2) * 40)):
            lines.append("    " * rng.randint(0, 3) + " ".join(rng.choices(words, k=rng.randint(3, 12))))
        with open(os.path.join(d, f"file{i:05d}.py"), "w") as f:
            f.write("\n".join(lines[:3000]) + "\n")
    path = os.path.join(base, "tree.tar")
    with tarfile.open(path, "w") as tar:
        tar.add(src, arcname="tree")
    shutil.rmtree(src)
    return path, nfiles


def bench_untar(t, tar_path: str, nfiles: int) -> list:
    dest = os.path.join(t.dir, "untar")
    os.makedirs(dest)
    start = time.monotonic()
    run(["tar", "-xf", tar_path, "-C", dest])
    os.sync()
    secs = time.monotonic() - start
    mib = os.path.getsize(tar_path) / MiB
    rows = [("untar", f"untar + sync of a source tree ({nfiles} files, {mib:.0f} MiB tar)",
             "s", secs, False)]
    t.cold()
    start = time.monotonic()
    # Through a pipe: GNU tar does not read the files when writing to /dev/null itself.
    run(["sh", "-c", f"tar -cf - -C {dest} . | cat > /dev/null"])
    rows.append(("tar_read", "tar the tree back, cold (reads every file)", "s",
                 time.monotonic() - start, False))
    shutil.rmtree(dest)
    return rows


# -- running, tables ----------------------------------------------------------

SECTIONS = ("seq", "rand", "small", "untar")


def run_target(t, args, tar_info) -> dict:
    rows = []
    if "seq" in args.only:
        rows += bench_seq(t, args.size)
    if "rand" in args.only:
        if "seq" not in args.only:
            fio(t.dir, "seq", "--rw=write", "--bs=1M", f"--size={args.size}")
        rows += bench_rand(t, args.size, args.runtime)
    for path in glob.glob(os.path.join(t.dir, "seq.*")):
        os.unlink(path)
    if "small" in args.only:
        rows += bench_small(t, args.files)
    if "untar" in args.only:
        rows += bench_untar(t, *tar_info)
    return {key: (label, unit, value, better) for key, label, unit, value, better in rows}


def fmt(value) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def table(results: dict) -> str:
    native, vol = results["native"], results["fusevol"]
    lines = ["| benchmark | unit | native | fusevol | fusevol / native |",
             "|---|---|---:|---:|---:|"]
    for key, (label, unit, value, better) in vol.items():
        nat = native.get(key, (None, None, None, None))[2]
        unit_note = unit + (" (higher is better)" if better else " (lower is better)")
        ratio = f"{value / nat:.2f}" if nat else "—"
        lines.append(f"| {label} | {unit_note} | {fmt(nat)} | {fmt(value)} | {ratio} |")
    return "\n".join(lines)


KNOB_SETS = [
    ("default", {}),
    ("writeback cache off", {"FUSEVOL_WRITEBACK_CACHE": "0"}),
    ("entry/attr timeout 0", {"FUSEVOL_ENTRY_TIMEOUT": "0", "FUSEVOL_ATTR_TIMEOUT": "0"}),
    ("keep_cache off", {"FUSEVOL_KEEP_CACHE": "0"}),
    ("page push off", {"FUSEVOL_PUSH_PAGES": "0"}),
]


def bench_knobs(t, size: int, nfiles: int, tar_info) -> dict:
    rows = {}
    start = time.monotonic()
    fio(t.dir, "seq", "--rw=write", "--bs=1M", f"--size={size}", "--end_fsync=1")
    rows["seq_write"] = ("sequential write (bs 1M)", "MiB/s", size / MiB / (time.monotonic() - start), True)
    start = time.monotonic()
    fio(t.dir, "seq", "--rw=write", "--bs=4k", f"--size={size // 4}", "--end_fsync=1",
        "--filename=small-writes.bin")
    rows["seq_write_4k"] = ("sequential write (bs 4k)", "MiB/s",
                            size / 4 / MiB / (time.monotonic() - start), True)
    fio(t.dir, "seq", "--rw=read", "--bs=1M", f"--size={size}")  # first read fills the cache
    start = time.monotonic()
    fio(t.dir, "seq", "--rw=read", "--bs=1M", f"--size={size}")
    rows["reread"] = ("re-read, new open (bs 1M)", "MiB/s", size / MiB / (time.monotonic() - start), True)
    for path in glob.glob(os.path.join(t.dir, "*.bin")) + glob.glob(os.path.join(t.dir, "seq.*")):
        os.unlink(path)
    small = {key: (label, unit, value, better) for key, label, unit, value, better in bench_small(t, nfiles)}
    for key in ("small_create", "small_stat_warm", "small_read"):
        label, unit, value, better = small[key]
        rows[key] = (f"small files: {label}", unit, value, better)
    untar = {r[0]: r for r in bench_untar(t, *tar_info)}
    rows["untar"] = ("untar + sync", "s", untar["untar"][3], False)
    return rows


def knob_table(results: dict) -> str:
    names = [name for name, _ in KNOB_SETS]
    base = results["default"]
    lines = ["| benchmark | unit | " + " | ".join(names) + " |",
             "|---|---|" + "---:|" * len(names)]
    for key, (label, unit, _, better) in base.items():
        cells = []
        for name in names:
            value = results[name][key][2]
            cells.append(fmt(value) if name == "default" else f"{fmt(value)} ({value / base[key][2]:.2f})")
        arrow = "higher is better" if better else "lower is better"
        lines.append(f"| {label} | {unit} ({arrow}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_peers(base: str, size: int) -> str:
    """Two copies of one random file under different names, in each system."""
    data = os.path.join(base, "dedup-src")
    os.makedirs(data)
    with open(os.path.join(data, "a.bin"), "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    shutil.copy(os.path.join(data, "a.bin"), os.path.join(data, "copy-of-a.bin"))
    logical = 2 * (size // MiB) * MiB
    rows = []

    def du(path):
        return int(run(["du", "-sb", path]).stdout.split()[0])

    vol = Volume(base)
    try:
        start = time.monotonic()
        run(["cp", "-r", data + "/.", vol.dir])
        os.sync()
        secs = time.monotonic() - start
        vol.umount()
        df = vol.df()
        rows.append(("fusevol (stored_bytes)", df["stored_bytes"], secs))
        rows.append(("fusevol (store file on disk)", df["store_file_bytes"], None))
        vol.mount()
    finally:
        vol.close()
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "BORG_PASSPHRASE": "",
           "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}
    if shutil.which("restic"):
        repo = os.path.join(base, "restic-repo")
        run(["restic", "init", "--repo", repo], env=env)
        start = time.monotonic()
        run(["restic", "backup", "--repo", repo, data], env=env)
        rows.append(("restic", du(repo), time.monotonic() - start))
    if shutil.which("borg"):
        repo = os.path.join(base, "borg-repo")
        run(["borg", "init", "--encryption=none", repo], env=env)
        start = time.monotonic()
        run(["borg", "create", "--compression", "zstd,1", f"{repo}::one", data], env=env)
        rows.append(("borg", du(repo), time.monotonic() - start))
    shutil.rmtree(data)
    lines = [f"Data set: two copies of one {size // MiB} MiB random file ({logical // MiB} MiB logical).", "",
             "| system | stored | of logical | time to store |", "|---|---:|---:|---:|"]
    for name, nbytes, secs in rows:
        lines.append(f"| {name} | {nbytes / MiB:.1f} MiB | {nbytes / logical:.3f} | "
                     + (f"{secs:.1f} s |" if secs is not None else "— |"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="sequential file size (default 1G)")
    ap.add_argument("--files", type=int, default=10000, help="small files (default 10000)")
    ap.add_argument("--tree-files", type=int, default=5000, help="files of the untar tree")
    ap.add_argument("--runtime", type=int, default=10, help="seconds of each random run")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help="sections: " + ",".join(SECTIONS) + " (none: only --knobs/--peers)")
    ap.add_argument("--base", default="/var/tmp", help="where the temp dirs go (one disk)")
    ap.add_argument("--knobs", action="store_true", help="compare the kernel-cache settings")
    ap.add_argument("--peers", action="store_true", help="restic/borg repository sizes (dedup)")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    args.size = parse_size(args.size)
    args.only = set(args.only.split(","))
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root (FUSE mounts, drop_caches)")

    base = tempfile.mkdtemp(prefix="fusevol-bench-", dir=args.base)
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
           "command": " ".join(sys.argv), "native": os.environ.get("FUSEVOL_NATIVE", "auto")}
    report = [f"Machine: {out['machine']}", f"Date: {out['date']}", ""]
    try:
        tar_info = make_tree_tar(base, args.tree_files)
        results = {}
        for make in (lambda: Native(base), lambda: Volume(base)) if args.only & set(SECTIONS) else ():
            t = make()
            try:
                print(f"running {t.name} ...", file=sys.stderr)
                results[t.name] = run_target(t, args, tar_info)
            finally:
                t.close()
        if results:
            out["results"] = results
            report.append(table(results))
        if args.knobs:
            knobs = {}
            # The first volume of a run is slower (cold caches of the tools and the tar):
            # a warm-up round with the default settings is measured and dropped.
            for name, env in [("warm-up", {})] + KNOB_SETS:
                print(f"running kernel-cache setting: {name} ...", file=sys.stderr)
                t = Volume(base, env)
                try:
                    knobs[name] = bench_knobs(t, min(args.size, 256 * MiB), min(args.files, 2000), tar_info)
                finally:
                    t.close()
            del knobs["warm-up"]
            out["knobs"] = knobs
            report += ["", "Kernel-cache settings (value, and ratio to the default):", "", knob_table(knobs)]
        if args.peers:
            print("running peers (fusevol, restic, borg) ...", file=sys.stderr)
            peers = bench_peers(base, min(args.size, 256 * MiB))
            out["peers"] = peers
            report += ["", peers]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = "\n".join(report)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**out, "report": text}, f, indent=2)


if __name__ == "__main__":
    main()
