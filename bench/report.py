"""The results of bench/compare.py as a Markdown table and PNG plots."""

import os
import subprocess
import sys

COLUMNS = (("native", "plain dir"), ("memfs", "ceiling (memfs)"), ("fusevol", "fusevol"),
           ("memfs-xattr-off", "ceiling xattr=off"), ("fusevol-xattr-off", "fusevol xattr=off"),
           ("rclone", "rclone"))
OPTIONAL = {"fusevol-xattr-off", "memfs-xattr-off"}  # a column only in runs that had it
MATPLOTLIB = "matplotlib>=3.5"  # the `bench` extra of pyproject.toml
SHORT = {"small": "a. small files: create, stat, unlink", "small_sync": "a. small files: create + sync",
         "untar": "b. untar + sync", "seq_write": "c. sequential write + fsync",
         "seq_read": "d. sequential read, cold", "rand_read": "e. random 4k read, cold",
         "rand_write": "e. random 4k write + fsync", "pgbench_tps": "h. pgbench tps",
         "pgbench_init": "h. pgbench -i"}


def fmt(value) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def cell(system: str, row: dict) -> str:
    v = row["values"].get(system)
    if v is None:
        return "—"
    ratio = v.get("vs_native")
    return fmt(v["median"]) + (f" ({ratio:.2f}x)" if ratio is not None else "")


def markdown(out: dict) -> str:
    reps = out["repetitions"]
    columns = [(s, title) for s, title in COLUMNS if s not in OPTIONAL or s in out["systems"]]
    xattr_off = "fusevol-xattr-off" in out["systems"]
    off_ceiling = xattr_off and "memfs-xattr-off" in out["systems"]
    lines = [
        f"Machine: {out['machine']}  ",
        f"Date: {out['date']}, {out['seconds'] // 60} min  ",
        f"Command: `{out['command']}`",
        "",
        f"Each cell: the median of {reps} repetition{'s' if reps > 1 else ''}, and in brackets its "
        "ratio to the plain directory (time: above 1 is slower; rates: below 1 is slower). "
        "fusevol / ceiling is fusevol's figure over the in-memory filesystem's: what fusevol "
        "itself adds to the FUSE stack."
        + (" xattr=off / fusevol: the volume made with -o xattr=off over the default one."
           if xattr_off else "")
        + (" xattr=off / its ceiling: that volume over memfs answering ENOSYS to xattrs."
           if off_ceiling else ""),
        "",
        "| workload | unit | " + " | ".join(title for _, title in columns) + " | fusevol / ceiling | "
        + ("xattr=off / fusevol | " if xattr_off else "")
        + ("xattr=off / its ceiling | " if off_ceiling else "") + "target |",
        "|---|---|" + "---:|" * (len(columns) + xattr_off + off_ceiling) + "---:|---|",
    ]
    for row in out["rows"]:
        vs_ceiling = row["fusevol_vs_ceiling"]
        ceiling = fmt(vs_ceiling) + "x" if vs_ceiling is not None else "—"
        if row["target_vs_ceiling"] and vs_ceiling is not None:
            ceiling = f"**{ceiling}**"
        against_default = ""
        if xattr_off:
            ratio = row.get("xattr_off_vs_fusevol")
            against_default = (fmt(ratio) + "x" if ratio is not None else "—") + " | "
        if off_ceiling:
            ratio = row.get("xattr_off_vs_ceiling")
            against_default += (fmt(ratio) + "x" if ratio is not None else "—") + " | "
        lines.append(f"| {row['label']} | {row['unit']} | "
                     + " | ".join(cell(system, row) for system, _ in columns)
                     + f" | {ceiling} | {against_default}{row['target']} |")
    for system, reason in out["skipped"].items():
        lines.append(f"\nSkipped {system}: {reason}.")
    for error in out["errors"]:
        lines.append(f"\nFailed: {error}")
    return "\n".join(lines) + "\n"


# -- plots -------------------------------------------------------------------------

def _pyplot(install: bool):
    try:
        import matplotlib
    except ImportError:
        if not install:
            return None
        print(f"matplotlib (the bench extra) is missing: installing {MATPLOTLIB} "
              f"into {sys.prefix} for the plots", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", MATPLOTLIB], check=False)
        try:
            import matplotlib
        except ImportError:
            return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plots(out: dict, folder: str, name: str, install: bool) -> list[str]:
    """Write NAME-speed.png, NAME-parallel.png and NAME-memory.png; say what was done."""
    plt = _pyplot(install)
    if plt is None:
        return [f"no plots: matplotlib is not installed (pip install '{MATPLOTLIB}', "
                "or pip install '.[bench]')"]
    written = []
    rows = {row["key"]: row for row in out["rows"]}

    # Speed relative to the plain directory, higher is faster, for the rows every system runs.
    keys = [k for k in SHORT if k in rows]
    systems = [(s, title) for s, title in COLUMNS[1:] if any(s in rows[k]["values"] for k in keys)]
    if keys and systems:
        fig, ax = plt.subplots(figsize=(8, 0.25 * len(keys) * len(systems) + 1.5))
        height = 0.8 / len(systems)
        for i, (system, title) in enumerate(systems):
            speeds = []
            for k in keys:
                ratio = rows[k]["values"].get(system, {}).get("vs_native")
                speeds.append(0 if not ratio else (ratio if rows[k]["higher_is_better"] else 1 / ratio))
            ax.barh([j + i * height for j in range(len(keys))], speeds, height, label=title)
        ax.set_yticks([j + height * (len(systems) - 1) / 2 for j in range(len(keys))])
        ax.set_yticklabels([SHORT[k] for k in keys], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("speed relative to the plain directory (1 = as fast; higher is faster)")
        ax.legend(fontsize=8)
        ax.set_title(f"{out['date'][:10]}: medians of {out['repetitions']}", fontsize=9)
        fig.tight_layout()
        written.append(_save(fig, folder, f"{name}-speed.png", plt))

    if "par1" in rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for system, title in COLUMNS:
            points = [(n, rows[f"par{n}"]["values"][system]["median"]) for n in (1, 2, 4)
                      if f"par{n}" in rows and system in rows[f"par{n}"]["values"]]
            if points:
                ax.plot([n for n, _ in points], [v for _, v in points], marker="o", label=title)
        ax.set_xticks([1, 2, 4])
        ax.set_xlabel("volumes (or directories) written at once")
        ax.set_ylabel("aggregate MiB/s (fio, bs 1M, + fsync + sync)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, folder, f"{name}-parallel.png", plt))

    trace = out.get("memory_trace")
    if trace:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([t for t, _, _ in trace], [a for _, a, _ in trace], label="RssAnon (its own memory)")
        ax.plot([t for t, _, _ in trace], [f for _, _, f in trace], label="RssFile (mapped file pages)")
        ax.set_xlabel("seconds into the sequential write")
        ax.set_ylabel("MiB")
        ax.set_ylim(bottom=0)
        ax.set_title("fusevol worker memory while writing", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, folder, f"{name}-memory.png", plt))
    return [f"plot: {path}" for path in written]


def _save(fig, folder: str, filename: str, plt) -> str:
    path = os.path.join(folder, filename)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
