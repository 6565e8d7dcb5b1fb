"""How snapshot operations scale with the number of files in a volume.

For each size, a fresh store gets a volume of small files in folders of 1000,
built directly through the store (few big transactions; FUSE would only make
the build slow). Then, each timed with its commit (durable, as the CLI does):

- the first snapshot, which writes an object for every file and folder;
- a snapshot after 10 files changed, which must cost what changed, not what did not;
- a clone of that snapshot;
- a diff between the two snapshots.

Usage: PYTHONPATH=. python bench/snapshots.py [SIZE ...]   (default 1000 10000 100000)
Prints a Markdown table of milliseconds per operation.
"""

import random
import shutil
import stat
import sys
import tempfile
import time

from fusevol.store import Inodes, Store, snapshots, volumes
from fusevol.store.diff import diff
from fusevol.store.schema import ROOT_INO

PER_DIR = 1000
FILES_PER_TXN = 20_000
REPEAT = 5  # the cheap operations are timed this many times; the median is shown


def build(store: Store, n: int) -> tuple[Inodes, list[int]]:
    with store.write() as txn:
        record = volumes.create(txn, "bench")
    inodes = Inodes(record["vid"], store.block_size, record["compression"])
    files: list[int] = []
    i = 0
    while i < n:
        with store.write() as txn:
            for _ in range(min(FILES_PER_TXN, n - i)):
                if i % PER_DIR == 0:
                    folder, _ = inodes.create(txn, ROOT_INO, f"d{i // PER_DIR:05d}".encode(),
                                              stat.S_IFDIR | 0o755, 0, 0)
                ino, _ = inodes.create(txn, folder, f"f{i:07d}".encode(), stat.S_IFREG | 0o644, 0, 0)
                data = f"file {i}\n".encode() * 20
                inodes.write_blocks(txn, ino, [(0, data)], len(data))
                files.append(ino)
                i += 1
    return inodes, files


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def measure(n: int) -> dict[str, float]:
    path = tempfile.mkdtemp(prefix="fusevol-bench-")
    try:
        store = Store.open(path)
        results = {}
        start = time.perf_counter()
        inodes, files = build(store, n)
        results["build the volume (for scale; not a snapshot operation)"] = (time.perf_counter() - start) * 1000

        def snap(name):
            with store.write() as txn:
                snapshots.create(txn, "bench", name)

        results["first snapshot (writes every object)"] = timed(lambda: snap("s0"))
        rng = random.Random(n)
        changed, folders = [], set()
        for r in range(REPEAT):
            picked = rng.sample(range(n), 10)
            folders.update((r, i // PER_DIR) for i in picked)
            with store.write() as txn:
                for ino in (files[i] for i in picked):
                    data = f"changed {r} {ino}\n".encode()
                    inodes.write_blocks(txn, ino, [(0, data)], len(data))
            changed.append(timed(lambda: snap(f"s{r + 1}")))
        results["snapshot after 10 files changed"] = median(changed)
        results["(folders those 10 files were in, on average)"] = len(folders) / REPEAT

        def clone(k):
            with store.write() as txn:
                snapshots.clone(txn, "bench", "s1", f"clone{k}")

        results["clone of a snapshot"] = median([timed(lambda k=k: clone(k)) for k in range(REPEAT)])

        def compare():
            with store.read() as txn:
                old = bytes.fromhex(snapshots.get(txn, "bench", "s0")["root"])
                new = bytes.fromhex(snapshots.get(txn, "bench", "s1")["root"])
                changes = diff(txn, old, new)
            assert len(changes) == 10, changes

        results["diff of the two snapshots (10 changes)"] = median([timed(compare) for _ in range(REPEAT)])
        store.close()
        return results
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(sizes: list[int]) -> None:
    table = {}
    for n in sizes:
        table[n] = measure(n)
        print(f"measured {n} files", file=sys.stderr)
    rows = list(next(iter(table.values())))
    print("| operation (ms) | " + " | ".join(f"{n:,} files" for n in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for row in rows:
        print(f"| {row} | " + " | ".join(f"{table[n][row]:.1f}" for n in sizes) + " |")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 10_000, 100_000])
