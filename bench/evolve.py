"""An evolving tree kept in fusevol (a snapshot per version), restic and borg, in one run.

The tree is a copy of a folder (by default Python's standard library,
/usr/lib/python3.11: about 1400 files, 50 MB). Each later version changes 16
bytes in the middle of 2% of the files, adds 1% new files (an existing file
with 16 bytes changed, under a new name) and deletes 1%, the same edits in
each system (seeded). After each version:

- fusevol: the edits are made in a mounted volume, then `snapshot create`;
  the store file's size on disk (`df`: store_file_bytes), the compressed
  chunk bytes (stored_bytes) and the store's overhead beyond them, with
  where it goes after the last version (df's `overhead`);
- after the last version, with the volume still mounted and no command run,
  the worker's idle upkeep (fs/upkeep.py: once the volume had no change for
  FUSEVOL_IDLE_UPKEEP_AFTER seconds it compresses again and punches free
  pages, as gc does): the bench waits for the upkeep run that follows the
  last edits to finish (it says how long it waited), then reads the sizes
  and verifies (left out with FUSEVOL_IDLE_UPKEEP=0). The upkeep also runs
  between versions, while restic and borg back up (their times share the
  machine with it);
- then `fusevol gc` with the volume still mounted (the
  worker holds the store: its free pages are punched out of the file), then
  unmounted (gc writes the file again), each verified;
- restic (`restic backup`, its default compression) and borg
  (`borg create --compression zstd,3`) back up a plain copy; their
  repository sizes (`du -sb`).

Usage (root: it mounts a volume):
    PYTHONPATH=. python bench/evolve.py [--source DIR] [--versions 5] [--base DIR] [--json FILE]
Needs `restic` and `borg` (Debian: apt-get install restic borgbackup); a
missing one is left out and said so. Prints a Markdown table.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from targets import MiB, Volume, run  # noqa: E402

PEER_ENV = {"RESTIC_PASSWORD": "bench", "BORG_PASSPHRASE": "",
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}


def _after_gc(vol, last: dict, peers) -> dict:
    """`fusevol gc` run and timed, verify, and the store's figures beside the
    last version's row."""
    start = time.monotonic()
    report = json.loads(vol.cli("gc", "--json"))
    seconds = time.monotonic() - start
    return _verified_row(vol, last, peers, gc_seconds=seconds,
                         gc={k: report.get(k) for k in ("recompressed", "densified", "file")})


def _verified_row(vol, last: dict, peers, **extra) -> dict:
    """verify, then the store's figures beside the last version's row."""
    vol.cli("verify")
    df = vol.df()
    return {"version": last["version"], "files": last["files"], "logical": last["logical"],
            "fusevol_file": df["store_file_bytes"], "fusevol_chunks": df["stored_bytes"],
            "fusevol_overhead": df.get("overhead"), **extra, **{p: last[p] for p in peers}}


def _after_upkeep(vol, last: dict, peers, since: float, timeout: float = 300) -> dict:
    """Wait for the worker's idle upkeep that follows the last change (a run
    started after `since` that went through), verify, and the store's figures."""
    from fusevol.fs import upkeepstate

    start = time.monotonic()
    while True:
        status = upkeepstate.read_status(vol.store, vol.volume) or {}
        if (status.get("started", 0) > since and not status.get("running")
                and status.get("last", {}).get("outcome") == "done"):
            break
        if time.monotonic() - start > timeout:
            raise SystemExit(f"no idle upkeep finished in {timeout} s: {status}")
        time.sleep(0.2)
    waited = time.monotonic() - start
    return _verified_row(vol, last, peers, waited_seconds=waited, upkeep=status["last"])


def files_of(root: str) -> list[str]:
    out = []
    for folder, _, names in os.walk(root):
        out.extend(os.path.relpath(os.path.join(folder, n), root) for n in names
                   if os.path.isfile(os.path.join(folder, n)) and not os.path.islink(os.path.join(folder, n)))
    return sorted(out)


def plan_version(rng: random.Random, files: list[str], n: int) -> list[tuple]:
    """The edits that make the next version, as (op, path, ...)."""
    count = len(files)
    ops = []
    for path in rng.sample(files, max(1, count * 2 // 100)):
        ops.append(("poke", path, rng.randbytes(16)))
    for k, path in enumerate(rng.sample(files, max(1, count // 100))):
        folder, name = os.path.split(path)
        ops.append(("add", path, os.path.join(folder, f"v{n}-{k}-{name}"), rng.randbytes(16)))
    for path in rng.sample(files, max(1, count // 100)):
        ops.append(("delete", path))
    return ops


def apply(root: str, ops: list[tuple]) -> None:
    for op in ops:
        if op[0] == "poke":
            _poke(os.path.join(root, op[1]), op[2])
        elif op[0] == "add":
            with open(os.path.join(root, op[1]), "rb") as f:
                data = bytearray(f.read())
            mid = len(data) // 2
            data[mid: mid + 16] = op[3]
            with open(os.path.join(root, op[2]), "wb") as f:
                f.write(data)
        elif os.path.exists(os.path.join(root, op[1])):
            os.unlink(os.path.join(root, op[1]))


def _poke(path: str, data: bytes) -> None:
    if not os.path.exists(path):
        return  # deleted in an earlier version
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(max(0, size // 2 - 8))
        f.write(data[: max(0, min(16, size))])


def du(path: str) -> int:
    return int(run(["du", "-sb", path]).stdout.split()[0])


def measure(source: str, versions: int, base: str, gc: bool = True, gc_each: bool = False,
            keep: bool = False) -> dict:
    work = tempfile.mkdtemp(prefix="evolve-", dir=base)
    # borg is a Python program run in the tree: a relative PYTHONPATH (`PYTHONPATH=.`)
    # would make it import the edited standard library it backs up.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | PEER_ENV
    plain = os.path.join(work, "plain")
    shutil.copytree(source, plain, symlinks=True)
    peers = {}
    if shutil.which("restic"):
        peers["restic"] = os.path.join(work, "restic-repo")
        run(["restic", "init", "--repo", peers["restic"]], env=env)
    if shutil.which("borg"):
        peers["borg"] = os.path.join(work, "borg-repo")
        run(["borg", "init", "--encryption=none", peers["borg"]], env=env)
    vol = Volume(work)
    rows = []
    try:
        run(["cp", "-a", plain + "/.", vol.dir])
        rng = random.Random(2026)
        for n in range(versions):
            if n:
                ops = plan_version(rng, files_of(plain), n)
                apply(plain, ops)
                apply(vol.dir, ops)
            row = {"version": n, "files": len(files_of(plain)), "logical": du(plain)}
            edited = time.time()
            start = time.monotonic()
            vol.cli("snapshot", "create", f"bench@v{n}")
            row["fusevol_seconds"] = time.monotonic() - start
            if gc_each:  # a store gc'd between snapshots (gc sees one snapshot's objects at a time)
                vol.cli("gc")
            df = vol.df()
            row["fusevol_file"] = df["store_file_bytes"]
            row["fusevol_chunks"] = df["stored_bytes"]
            row["fusevol_overhead"] = df.get("overhead")  # where the rest goes (df --json)
            if "restic" in peers:
                start = time.monotonic()
                run(["restic", "backup", "--repo", peers["restic"], "."], env=env, cwd=plain)
                row["restic_seconds"] = time.monotonic() - start
                row["restic"] = du(peers["restic"])
            if "borg" in peers:
                start = time.monotonic()
                run(["borg", "create", "--compression", "zstd,3", f"{peers['borg']}::v{n}", "."],
                    env=env, cwd=plain)
                row["borg_seconds"] = time.monotonic() - start
                row["borg"] = du(peers["borg"])
            rows.append(row)
            print(f"version {n}: {row}", file=sys.stderr)
        # Every version is still there, byte for byte: the last one against the plain copy.
        _same(plain, vol.dir)
        after_gc = mounted_gc = upkept = None
        if os.environ.get("FUSEVOL_IDLE_UPKEEP", "1") != "0":
            upkept = _after_upkeep(vol, rows[-1], peers, since=edited)
            print(f"mounted, after the idle upkeep: {upkept}", file=sys.stderr)
            _same(plain, vol.dir)
        if gc:
            # gc with the volume mounted: the worker holds the store, so the
            # file is not written again; what gc frees is punched out of it.
            mounted_gc = _after_gc(vol, rows[-1], peers)
            print(f"mounted, after gc: {mounted_gc}", file=sys.stderr)
            _same(plain, vol.dir)
            # The store at rest: unmounted, then `fusevol gc` (which compresses
            # again and, with no process holding the store, writes its file
            # again), verified, and the volume read back after it.
            vol.umount()
            after_gc = _after_gc(vol, rows[-1], peers)
            print(f"after gc: {after_gc}", file=sys.stderr)
            vol.mount()
            _same(plain, vol.dir)
    finally:
        if keep:  # the store left unmounted for a look at its tables
            vol.umount()
            print(f"kept: {vol.store}", file=sys.stderr)
        else:
            vol.close()
            shutil.rmtree(work, ignore_errors=True)
    return {"source": source, "versions": versions, "rows": rows, "after_gc": after_gc,
            "mounted_gc": mounted_gc, "upkept": upkept,
            "missing": [p for p in ("restic", "borg") if p not in peers]}


def _same(plain: str, mounted: str) -> None:
    diff = subprocess.run(["diff", "-r", "-q", "--no-dereference", plain, mounted],
                          capture_output=True, text=True)
    if diff.returncode:
        raise SystemExit(f"the volume differs from the plain copy:\n{(diff.stdout + diff.stderr)[:2000]}")


def table(result: dict) -> str:
    peers = [p for p in ("restic", "borg") if p not in result["missing"]]
    head = ["version", "files", "logical", "fusevol store file", "fusevol chunks", "overhead"] + peers
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    extra = []
    if result.get("upkept"):
        extra.append(dict(result["upkept"], version=f"{result['upkept']['version']}, "
                          "mounted, after the idle upkeep"))
    if result.get("mounted_gc"):
        extra.append(dict(result["mounted_gc"], version=f"{result['mounted_gc']['version']}, "
                          "mounted, after gc"))
    if result.get("after_gc"):
        extra.append(dict(result["after_gc"], version=f"{result['after_gc']['version']}, "
                          "unmounted, after gc"))
    rows = result["rows"] + extra
    for r in rows:
        cells = [str(r["version"]), str(r["files"]), f"{r['logical'] / MiB:.1f} MiB",
                 f"{r['fusevol_file'] / MiB:.1f} MiB", f"{r['fusevol_chunks'] / MiB:.1f} MiB",
                 f"{(r['fusevol_file'] - r['fusevol_chunks']) / r['fusevol_chunks']:.0%}"]
        cells += [f"{r[p] / MiB:.1f} MiB" for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    for last in [result["rows"][-1]] + extra:
        if not last.get("fusevol_overhead"):
            continue
        parts = last["fusevol_overhead"]
        names = {"object_bytes": "tree objects", "free_bytes": "pages LMDB keeps free for reuse",
                 "dead_bytes": "dead entries in packs",
                 "slack_bytes": "entry heads and the unused end of packs' last pages",
                 "count_bytes": "count rows (refs, orefs, ocounts) with their pages' slack",
                 "other_bytes": "volume rows (inodes, entries, block maps) and the store's"}
        lines += ["", f"| the store file beyond its chunks, version {last['version']} | bytes | of the chunks |",
                  "|---|---:|---:|"]
        for key, name in names.items():
            if key not in parts:
                continue  # df of an older fusevol
            lines.append(f"| {name} | {parts[key] / MiB:.2f} MiB | {parts[key] / last['fusevol_chunks']:.1%} |")
    if result.get("upkept"):
        up = result["upkept"]
        lines.append(f"\nidle upkeep: waited {up['waited_seconds']:.1f} s after the last snapshot "
                     f"for the run that follows the last edits; it took {up['upkeep']['seconds']:.2f} s, "
                     "its longest step held the write lock " + ", ".join(
                         f"{ms:.0f} ms ({phase})" for phase, ms in up['upkeep']['longest_step_ms'].items()))
    for name, key in (("mounted", "mounted_gc"), ("unmounted", "after_gc")):
        if result.get(key):
            lines.append(f"\n`fusevol gc` ({name}) took {result[key]['gc_seconds']:.2f} s")
    times = ["fusevol"] + peers
    lines += ["", "| seconds per version (fusevol: snapshot create; the others: backup) | "
              + " | ".join(times) + " |", "|---|" + "---:|" * len(times)]
    for r in result["rows"]:
        lines.append(f"| {r['version']} | " + " | ".join(f"{r[t + '_seconds']:.2f}" for t in times) + " |")
    if result["missing"]:
        lines.append(f"\n(not installed: {', '.join(result['missing'])})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="/usr/lib/python3.11")
    ap.add_argument("--versions", type=int, default=5)
    ap.add_argument("--base", default="/var/tmp", help="where the stores and repositories go")
    ap.add_argument("--json", help="write the figures as JSON too")
    ap.add_argument("--gc-each", action="store_true",
                    help="run `fusevol gc` (volume mounted) after every version's snapshot too")
    ap.add_argument("--no-gc", action="store_true",
                    help="leave out the last row: the store unmounted, after `fusevol gc`")
    ap.add_argument("--keep", action="store_true",
                    help="leave the store (unmounted) and the copies in --base, and say where")
    args = ap.parse_args()
    result = measure(args.source, args.versions, args.base, gc=not args.no_gc, gc_each=args.gc_each,
                     keep=args.keep)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
