"""How snapshot operations scale with the number of files in a volume, and in one folder.

Each layout is a fresh store holding one volume of small files, built directly
through the store (few big transactions; FUSE would only make the build slow):

- `1k`:   one folder of 1,000 files
- `100k`: one folder of 100,000 files
- `1M`:   1,000 folders of 1,000 files

Then, each timed with its commit (durable, as the CLI does):

- the first snapshot, which writes an object for every file and folder;
- a snapshot after one file changed, and after 10 files changed (the target:
  cost what changed, not what did not; 100k in one folder <= 1.5x 1k);
- diff and incremental send between two snapshots one change apart (send
  written to /dev/null; its bytes are shown too);
- a full send of the first snapshot (not at 1M: minutes, and not a target);
- a clone of a snapshot.

The first snapshot and a snapshot after one change also show their CPU time
(this process's): on a shared machine a wall time follows the load, CPU time
much less, and the commit's wait on the disk is in the wall time alone.

When the smallest and the largest one-folder layouts are both measured (1k and
100k by default), their snapshots after one change are timed once more,
alternated (one in one store, then one in the other, PAIRED times): the
target is their ratio, and on a shared machine the load moves between two
layouts measured minutes apart more than it moves between neighbours.

Usage: PYTHONPATH=. python bench/snapshots.py [--quick] [--json FILE] [LAYOUT ...]
LAYOUT is a name above or FOLDERSxFILES (e.g. 10x1000); the default is 1k 100k 1M,
--quick runs 1k 20k 10x1000 (under a minute, for CI). Prints a Markdown table.
"""

import argparse
import json
import os
import random
import shutil
import stat
import sys
import tempfile
import time

from fusevol.store import Inodes, Store, snapshots, stream, volumes
from fusevol.store.diff import diff
from fusevol.store.schema import ROOT_INO

LAYOUTS = {"1k": (1, 1000), "20k": (1, 20_000), "100k": (1, 100_000), "1M": (1000, 1000)}
DEFAULT = ["1k", "100k", "1M"]
QUICK = ["1k", "20k", "10x1000"]
FILES_PER_TXN = 20_000
REPEAT = 5  # the cheap operations are timed this many times; the median is shown
REPEAT_ONE = 21  # a snapshot after one change: a few ms, so a commit that waits on a busy disk moves it most
PAIRED = 41
FULL_SEND_MAX = 200_000  # files: a full send beyond this is left out


def parse_layout(text: str) -> tuple[int, int]:
    if text in LAYOUTS:
        return LAYOUTS[text]
    folders, _, per = text.partition("x")
    return int(folders), int(per)


def build(store: Store, folders: int, per_folder: int) -> tuple[Inodes, list[int]]:
    with store.write() as txn:
        record = volumes.create(txn, "bench")
    inodes = Inodes(record.vid, store.block_size, record.compression)
    files: list[int] = []
    n, i = folders * per_folder, 0
    while i < n:
        with store.write() as txn:
            for _ in range(min(FILES_PER_TXN, n - i)):
                if i % per_folder == 0:
                    folder, _ = inodes.create(txn, ROOT_INO, f"d{i // per_folder:05d}".encode(),
                                              stat.S_IFDIR | 0o755, 0, 0)
                ino, _ = inodes.create(txn, folder, f"f{i:07d}".encode(), stat.S_IFREG | 0o644, 0, 0)
                data = f"file {i}\n".encode() * 20
                inodes.write_blocks(txn, ino, [(0, data)], len(data))
                files.append(ino)
                i += 1
    return inodes, files


def timed(fn, cpu: list | None = None) -> float:
    """Milliseconds fn took (its CPU time, this process's, appended to cpu)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if cpu is not None:
        cpu.append((time.process_time() - start_cpu) * 1000)
    return (time.perf_counter() - start) * 1000


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def measure(folders: int, per_folder: int, base: str | None, keep: list | None = None) -> dict[str, float]:
    """The figures of one layout; with `keep`, its store stays open and a
    function that changes one file and snapshots (its wall and CPU ms) is
    appended there (the caller closes the store: keep's second item)."""
    path = tempfile.mkdtemp(prefix="fusevol-bench-", dir=base)
    n = folders * per_folder
    try:
        store = Store.open(path)
        results = {}
        start = time.perf_counter()
        inodes, files = build(store, folders, per_folder)
        results["build the volume (for scale; not a snapshot operation)"] = (time.perf_counter() - start) * 1000

        def snap(name):
            with store.write() as txn:
                snapshots.create(txn, "bench", name)

        def change(picked, tag):
            with store.write() as txn:
                for ino in (files[i] for i in picked):
                    data = f"changed {tag} {ino}\n".encode()
                    inodes.write_blocks(txn, ino, [(0, data)], len(data))

        cpu = []
        results["first snapshot (writes every object)"] = timed(lambda: snap("s0"), cpu)
        results["(its CPU time, this process)"] = cpu[0]
        rng = random.Random(n)
        one, cpu = [], []
        for r in range(REPEAT_ONE):
            change([rng.randrange(n)], f"one{r}")
            one.append(timed(lambda: snap(f"one{r}"), cpu))
        results["snapshot after 1 file changed"] = median(one)
        results["(CPU time of that snapshot, median)"] = median(cpu)
        ten = []
        for r in range(REPEAT):
            change(rng.sample(range(n), 10), f"ten{r}")
            ten.append(timed(lambda: snap(f"ten{r}")))
        results["snapshot after 10 files changed"] = median(ten)

        def compare(a, b, count):
            with store.read() as txn:
                old = bytes.fromhex(snapshots.get(txn, "bench", a).root)
                new = bytes.fromhex(snapshots.get(txn, "bench", b).root)
                changes = diff(txn, old, new)
            assert len(changes) == count, changes

        pairs = [(f"one{r}", f"one{r + 1}") for r in range(REPEAT - 1)]
        results["diff, 1 change apart"] = median([timed(lambda a=a, b=b: compare(a, b, 1)) for a, b in pairs])
        sent = {}

        def send(name, base_name):
            with open(os.devnull, "wb") as out:
                sent[name] = stream.send(store, "bench", name, out,
                                         base=("bench", base_name) if base_name else None)["bytes"]

        results["incremental send, 1 change apart"] = median(
            [timed(lambda a=a, b=b: send(b, a)) for a, b in pairs])
        results["(bytes of that stream)"] = sent[pairs[-1][1]]
        if n <= FULL_SEND_MAX:
            results["full send of the first snapshot"] = timed(lambda: send("s0", None))
        else:
            results["full send of the first snapshot"] = float("nan")

        def clone(k):
            with store.write() as txn:
                snapshots.clone(txn, "bench", "s0", f"clone{k}")

        results["clone of a snapshot"] = median([timed(lambda k=k: clone(k)) for k in range(REPEAT)])
        if keep is not None:
            def one_change(r):
                change([rng.randrange(n)], f"paired{r}")
                cpu = []
                return timed(lambda: snap(f"paired{r}"), cpu), cpu[0]

            def close():
                store.close()
                Store._instances.pop(path, None)
                shutil.rmtree(path, ignore_errors=True)
            keep.append((one_change, close))
            path = None  # closed by the caller
            return results
        store.close()
        Store._instances.pop(path, None)
        return results
    finally:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def paired(small, large) -> dict[str, float]:
    """Snapshots after one change in two stores, alternated: medians and ratios."""
    times = {"small": ([], []), "large": ([], [])}
    for r in range(PAIRED):
        for side, one_change in (("small", small), ("large", large)):
            wall, cpu = one_change(r)
            times[side][0].append(wall)
            times[side][1].append(cpu)
    out = {side: (median(w), median(c)) for side, (w, c) in times.items()}
    return {"small_ms": out["small"][0], "large_ms": out["large"][0],
            "small_cpu_ms": out["small"][1], "large_cpu_ms": out["large"][1],
            "ratio": out["large"][0] / out["small"][0], "cpu_ratio": out["large"][1] / out["small"][1]}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("layouts", nargs="*")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the figures as JSON too")
    parser.add_argument("--base", help="where the stores go (the disk under test)")
    args = parser.parse_args(argv)
    if args.base:
        os.makedirs(args.base, exist_ok=True)
    names = args.layouts or (QUICK if args.quick else DEFAULT)
    table = {}
    one_folder = sorted((n for n in names if parse_layout(n)[0] == 1), key=lambda n: parse_layout(n)[1])
    pair = (one_folder[0], one_folder[-1]) if len(one_folder) > 1 else ()
    kept = {}
    for name in names:
        folders, per = parse_layout(name)
        keep = [] if name in pair else None
        table[name] = measure(folders, per, args.base, keep)
        if keep:
            kept[name] = keep[0]
        print(f"measured {name} ({folders} x {per} files)", file=sys.stderr)
    pairing = None
    if pair:
        try:
            pairing = paired(kept[pair[0]][0], kept[pair[1]][0])
        finally:
            for _, close in kept.values():
                close()
    rows = list(next(iter(table.values())))
    label = {name: f"{name} ({'one folder' if parse_layout(name)[0] == 1 else f'{parse_layout(name)[0]} folders'})"
             for name in names}
    print("| operation (ms) | " + " | ".join(label[n] for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for row in rows:
        cells = [("-" if table[n][row] != table[n][row] else
                  f"{table[n][row]:,.0f}" if row.startswith("(bytes") else f"{table[n][row]:.1f}")
                 for n in names]
        print(f"| {row} | " + " | ".join(cells) + " |")
    if pairing:
        print(f"\nSnapshot after 1 file changed, {pair[0]} and {pair[1]} alternated ({PAIRED} each, medians): "
              f"{pairing['small_ms']:.1f} and {pairing['large_ms']:.1f} ms, {pair[1]} / {pair[0]} = "
              f"{pairing['ratio']:.2f} (CPU {pairing['small_cpu_ms']:.1f} and {pairing['large_cpu_ms']:.1f} ms, "
              f"{pairing['cpu_ratio']:.2f})")
    if args.json:
        out = {name: {k: (v if v == v else None) for k, v in r.items()} for name, r in table.items()}
        if pairing:
            out["paired"] = {"layouts": list(pair), **pairing}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
