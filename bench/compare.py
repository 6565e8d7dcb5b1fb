"""fusevol beside its ceiling and a peer, in one run: every figure a ratio.

The same workloads run on a plain directory (ext4, the disk that holds the
store: the baseline), on bench/memfs.py (an in-memory pyfuse3 filesystem with a
volume's kernel options: what the FUSE stack itself costs, the ceiling), on a
fusevol volume of a fresh store and on rclone's FUSE mount of a local folder.
Repetitions interleave the systems, so load from elsewhere on the machine
falls on all of them; each figure is the median of the repetitions.

    PYTHONPATH=. /opt/fusevol/bin/python bench/compare.py            # full (3 repetitions)
    PYTHONPATH=. /opt/fusevol/bin/python bench/compare.py --quick    # a few minutes, 1 repetition

Writes bench/results/NAME.md, NAME.json and NAME-*.png (NAME: full or quick).
Run as root: it mounts, and drops the page cache for the cold reads.
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import types

from targets import MAKERS, Native, Volume, machine, parse_size, rclone_missing
import extras
import report
import workloads

SYSTEMS = ("native", "memfs", "fusevol", "memfs-xattr-off", "fusevol-xattr-off", "rclone")
# fusevol-xattr-off (a volume made with -o xattr=off) and memfs-xattr-off (its
# ceiling: memfs answering ENOSYS to xattrs) run when --systems names them.
DEFAULT_SYSTEMS = ("native", "memfs", "fusevol", "rclone")
SECTIONS = {"small": "a", "untar": "b", "file": "c,d,e,g", "parallel": "f", "docker": "h",
            "pgbench": "h"}


def params(args) -> types.SimpleNamespace:
    quick = args.quick
    return types.SimpleNamespace(
        quick=quick,
        reps=args.reps or (1 if quick else 3),
        files=args.files or (1000 if quick else 5000),
        size=parse_size(args.size or ("256M" if quick else "1G")),
        runtime=args.runtime or (3 if quick else 10),
        rand_size=parse_size(args.rand_size or ("32M" if quick else "128M")),
        par_size=parse_size(args.par_size or ("64M" if quick else "256M")),
        pg_scale=10, pg_runtime=5 if quick else 20,
        tar_files=0, tar_mib=0.0,
    )


def run_system(name: str, base: str, p, sections: set, tar_path: str) -> tuple[dict, list]:
    """One repetition of the single-target workloads on a fresh target."""
    figures, memory = {}, []
    t = MAKERS[name](base)
    try:
        if "small" in sections:
            figures.update(workloads.small_files(t, p.files))
        if "untar" in sections:
            figures.update(workloads.untar(t, tar_path))
        if "file" in sections:
            more, memory = workloads.big_file(t, p.size, p.runtime, p.rand_size,
                                              sample_memory=(name == "fusevol"))
            figures.update(more)
    finally:
        t.close()
    return figures, memory


def run_parallel(name: str, base: str, p) -> dict:
    """f: 1, 2 and 4 plain directories, or 4 volumes of one fresh fusevol store."""
    targets = []
    try:
        if name == "native":
            targets = [Native(base) for _ in range(4)]
        else:
            first = Volume(base)
            targets = [first] + [Volume(base, store_root=first.root, volume=f"bench{i}")
                                 for i in range(2, 5)]
        return workloads.parallel_writes(targets, p.par_size)
    finally:
        # The store's directory goes with the volume that created it: close it last.
        for t in reversed(targets):
            t.close()


def summarize(samples: dict, rows: dict) -> list[dict]:
    """Median of each figure per system, its ratio to the plain directory and,
    where the ceiling ran, fusevol's ratio to the ceiling."""
    out = []
    for key, row in rows.items():
        values = {}
        for system in SYSTEMS:
            got = samples.get(system, {}).get(key)
            if got:
                values[system] = {"median": statistics.median(got), "samples": got}
        if not values:
            continue
        native = values.get("native", {}).get("median")
        for system, v in values.items():
            v["vs_native"] = v["median"] / native if native and system != "native" else None
        fusevol, ceiling = values.get("fusevol"), values.get("memfs")
        xattr_off, xattr_off_ceiling = values.get("fusevol-xattr-off"), values.get("memfs-xattr-off")
        out.append({
            "key": key, "label": row.label, "unit": row.unit,
            "higher_is_better": row.higher_is_better, "target": row.target,
            "target_vs_ceiling": row.vs_ceiling, "values": values,
            "fusevol_vs_ceiling": (fusevol["median"] / ceiling["median"]
                                   if fusevol and ceiling and ceiling["median"] else None),
            "xattr_off_vs_fusevol": (xattr_off["median"] / fusevol["median"]
                                     if xattr_off and fusevol and fusevol["median"] else None),
            "xattr_off_vs_ceiling": (xattr_off["median"] / xattr_off_ceiling["median"]
                                     if xattr_off and xattr_off_ceiling and xattr_off_ceiling["median"]
                                     else None),
        })
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 repetition, smaller files, no docker/pgbench (a few minutes; CI)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--files", type=int, help="small files of workload a (default 5000, quick 1000)")
    ap.add_argument("--size", help="the big file of c, d, e (default 1G, quick 256M)")
    ap.add_argument("--runtime", type=int, help="seconds of the random read (default 10, quick 3)")
    ap.add_argument("--rand-size", help="span of the random writes (default 128M, quick 32M)")
    ap.add_argument("--par-size", help="per volume in f (default 256M, quick 64M)")
    ap.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                    help=f"default: {','.join(DEFAULT_SYSTEMS)}; also fusevol-xattr-off (a volume "
                    "made with -o xattr=off, beside the default one) and memfs-xattr-off (its "
                    "ceiling: memfs answering ENOSYS to xattrs)")
    ap.add_argument("--only", help="sections: " + ",".join(SECTIONS) + " (default: all; "
                    "quick: all but docker, pgbench)")
    ap.add_argument("--base", default="/var/tmp", help="where the temp dirs go (the disk under test)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                    help="folder of the results (default bench/results)")
    ap.add_argument("--name", help="file name of the results (default: full or quick)")
    ap.add_argument("--no-plots", action="store_true", help="no PNG plots (no matplotlib needed)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/compare.py needs root (FUSE mounts, drop_caches)")
    p = params(args)
    name = args.name or ("quick" if p.quick else "full")
    sections = set(args.only.split(",")) if args.only else set(SECTIONS) - (
        {"docker", "pgbench"} if p.quick else set())
    unknown = sections - set(SECTIONS)
    if unknown:
        sys.exit(f"unknown sections: {', '.join(sorted(unknown))}")
    systems = [s for s in args.systems.split(",") if s]
    if set(systems) - set(SYSTEMS):
        sys.exit(f"unknown systems: {', '.join(sorted(set(systems) - set(SYSTEMS)))}")
    skipped = {}
    if "rclone" in systems and rclone_missing():
        skipped["rclone"] = rclone_missing()
        systems.remove("rclone")
    for tool in ("fio", "fusermount3", "tar"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/compare.py needs {tool}")

    os.makedirs(args.out, exist_ok=True)
    base = tempfile.mkdtemp(prefix="fusevol-compare-", dir=args.base)
    samples: dict[str, dict[str, list]] = {s: {} for s in SYSTEMS}
    memory_trace: list = []
    errors: list[str] = []
    started = time.monotonic()

    def add(system: str, figures: dict) -> None:
        for key, value in figures.items():
            samples[system].setdefault(key, []).append(value)

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {text}", file=sys.stderr, flush=True)

    try:
        tar_path = None
        if "untar" in sections:  # `--only docker` runs the Docker rows alone, at once
            tar_path, p.tar_files, p.tar_mib = workloads.make_stdlib_tar(base)
        single = sections & {"small", "untar", "file"}
        for rep in range(p.reps):
            for system in systems:
                if single:
                    log(f"repetition {rep + 1}/{p.reps}: {system}")
                    try:
                        figures, memory = run_system(system, base, p, single, tar_path)
                        add(system, figures)
                        if memory and not memory_trace:
                            memory_trace = memory
                    except Exception as e:  # one system failing must not hide the others
                        errors.append(f"{system}, repetition {rep + 1}: {e}")
                        log(f"  failed: {e}")
            if "parallel" in sections:
                for system in ("native", "fusevol"):
                    if system in systems:
                        log(f"repetition {rep + 1}/{p.reps}: {system}, volumes written at once")
                        try:
                            add(system, run_parallel(system, base, p))
                        except Exception as e:
                            errors.append(f"{system} (parallel), repetition {rep + 1}: {e}")
                            log(f"  failed: {e}")
        for section in ("docker", "pgbench"):
            if section in sections:
                log(f"{section} (optional rows)")
                result = extras.measure(section, base, p, systems, log)
                for system, figures in result.figures.items():
                    for key, values in figures.items():
                        samples[system].setdefault(key, []).extend(values)
                skipped.update(result.skipped)
                errors.extend(result.errors)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    rows = summarize(samples, workloads.rows(p))
    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "command": " ".join(sys.argv), "quick": p.quick, "repetitions": p.reps,
        "systems": systems, "skipped": skipped, "errors": errors,
        "seconds": round(time.monotonic() - started), "rows": rows,
        "memory_trace": memory_trace,
    }
    text = report.markdown(out)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(out, f, indent=1)
    if not args.no_plots:
        for line in report.plots(out, args.out, name, install=not p.quick):
            log(line)
    print(text)


if __name__ == "__main__":
    main()
