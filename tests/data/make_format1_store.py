"""Make tests/data/format1-store.tar.zst: a store written by fusevol of store
format 1 (every chunk and tree object a value of its own), for the test that
a newer fusevol opens, uses and converts it (tests/unit/test_store_packs.py).

Run with an old checkout first on the path (format 1 was main at ec90d67):
    mkdir /tmp/fv1 && git archive ec90d67 fusevol | tar -x -C /tmp/fv1
    PYTHONPATH=/tmp/fv1 python tests/data/make_format1_store.py tests/data/format1-store.tar.zst
Deterministic content (seeded), so the test knows what every file holds.

The same script wrote tests/data/format2-store.tar.zst (small blobs in packs,
each packed object's count in its `orefs` row) with format 2, main at a51920c:
    PYTHONPATH=/tmp/fv2 python tests/data/make_format1_store.py tests/data/format2-store.tar.zst 2
and tests/data/format3-store.tar.zst (counts of packed objects by their
place, every pack plain) with format 3, main at 7c4ec17:
    PYTHONPATH=/tmp/fv3 python tests/data/make_format1_store.py tests/data/format3-store.tar.zst 3
"""

import io
import os
import random
import stat
import subprocess
import sys
import tarfile
import tempfile

from fusevol.store import Inodes, Store, schema, snapshots, volumes

FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
BS = 128 * 1024


def content(rng: random.Random, i: int) -> bytes:
    """Small text, or a few KB of words (packed by a newer fusevol), or (one
    file) a block of random bytes and a few more (too large for a pack)."""
    if i == 2:
        return rng.randbytes(BS + 100)
    if i % 2:
        return f"file {i}\n".encode() * rng.randint(1, 40)
    words = [b"alpha", b"beta", b"gamma", b"delta", bytes(rng.randbytes(3).hex(), "ascii")]
    return b" ".join(rng.choice(words) for _ in range(rng.randint(400, 2000)))


def fill(txn, inodes: Inodes, rng: random.Random, files: int) -> None:
    docs, _ = inodes.create(txn, schema.ROOT_INO, b"docs", DIR, 0, 0)
    wide, _ = inodes.create(txn, schema.ROOT_INO, b"wide", DIR, 0, 0)
    for i in range(files):
        data = content(rng, i)
        parent = docs if i % 2 else wide
        ino, _ = inodes.create(txn, parent, b"f%03d" % i, FILE, 0, 0)
        blocks = [(k, data[k * BS:(k + 1) * BS]) for k in range(-(-len(data) // BS))]
        inodes.write_blocks(txn, ino, blocks, len(data))


def main(out: str, version: int = 1) -> None:
    assert schema.FORMAT_VERSION == version, f"run with a fusevol of store format {version} on the path"
    rng = random.Random(1)
    root = tempfile.mkdtemp()
    store = Store.open(os.path.join(root, "store"))
    with store.write() as txn:
        record = volumes.create(txn, "old")
    inodes = Inodes(record.vid, store.block_size, record.compression)
    with store.write() as txn:
        fill(txn, inodes, rng, 200)  # 100 files in each folder
    with store.write() as txn:
        snapshots.create(txn, "old", "one")
    with store.write() as txn:
        ino = inodes.lookup(txn, schema.ROOT_INO, b"docs")
        victim = inodes.lookup(txn, ino, b"f001")
        inodes.write_blocks(txn, victim, [(0, b"changed after one\n" * 10)], 180)
        inodes.unlink(txn, ino, b"f003")
    with store.write() as txn:
        snapshots.create(txn, "old", "two")
    store.close()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(os.path.join(root, "store", "db", "data.mdb"), arcname="db/data.mdb")
    data = subprocess.run(["zstd", "-19", "-q", "-c"], input=buf.getvalue(),
                          capture_output=True, check=True).stdout
    with open(out, "wb") as f:
        f.write(data)
    print(f"{out}: {len(data)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
