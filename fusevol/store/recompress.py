"""Chunks written fast, kept dense: packed chunks compressed again, harder.

A worker compresses as it writes, at levels its write rate can afford (zstd
1 for whole blocks, 3 for shorter ones: chunks.py). gc, and a worker's idle
upkeep once its volume is quiet (fs/upkeep.py), have no one waiting on them,
so they compress each packed chunk once more at LEVEL and keep the new form
where it is smaller (chunks kept raw stay raw): the chunk's id (the hash of
its bytes) and its count stay; a pack whose chunks moved is written again at
once (its other entries appended to the open pack, packs.rewrite), so no
dead space stays. zstd decompresses a higher level as fast as a lower one:
reads cost the same.

A pass goes pack by pack, BATCH_PACKS to a step, each step one short write
transaction: the chunks are read in a read transaction and compressed with
no lock held, and the write transaction only swaps in the forms of chunks
still stored where they were read (a writer may have moved or freed one
meanwhile), so other writers wait for no compression. LMDB reuses the pages
a commit freed two commits later, so the file grows by a few steps at most,
not by the store's size (one transaction holding every new pack and every
old one would double it). Packs are numbered in the order they were
written, so `recompressed_to` (meta) remembers the first pack not gone
through, written by each step: each chunk is compressed again once, by the
first pass after it was written, and a pass stopped half way (an upkeep
that gives way to writes, a crash) goes on where it stopped.
Chunks larger than a pack's entry (values of their own) compress too little
to be worth it and are left as they are.
"""

import time

import zstandard

from ..progress import NoProgress
from . import chunks, packs, schema
from .env import Store, Txn

# On Python's standard library (bench/evolve.py's data, 50 MB): whole 128 KiB
# blocks stored at level 1 take 8.24 MiB, at 9 7.21 MiB; shorter ones (small
# files, tails) at level 3 8.02 MiB, at 9 7.50 MiB; level 9 compressed the
# 50 MB in 1.3 s of one core, level 19 in 20 s for 0.9 MiB less.
LEVEL = 9
BATCH_PACKS = 8
WATERMARK = b"recompressed_to"


class Pass:
    """One pass over the packs written before it started, step by step."""

    def __init__(self, store: Store, batch_packs: int | None = None):
        self.store = store
        self.batch_packs = batch_packs or BATCH_PACKS
        self.report = {"chunks_recompressed": 0, "stored_bytes_saved": 0, "packs_rewritten": 0}
        self.compressor = zstandard.ZstdCompressor(level=LEVEL)
        with store.read() as txn:
            self.number = _watermark(txn)
            self.end = _next_pack(txn)
        self.start = self.number
        self.ours: list[tuple[int, int]] = []  # the pack numbers this pass's steps took
        self.finished = False
        self.last_write_seconds = 0.0  # how long the last step held the write lock

    @property
    def todo(self) -> int:
        """Pack numbers left (a bound: some are gone)."""
        return max(0, self.end - self.number)

    def step(self) -> bool:
        """Compress the chunks of the next few packs again; whether any are left."""
        if self.finished:
            return False
        with self.store.read() as txn:
            batch = _numbers(txn, self.number, self.end, self.batch_packs)
            found = [(n, bytes(p)) for n in batch if (p := packs.content(txn, n)) is not None]
        # No lock held: what each chunk would be at LEVEL.
        denser = [(n, c) for n, pack in found for c in self._candidates(n, pack)]
        upto = batch[-1] + 1 if batch else self.end
        with self.store.write(durable=False) as txn:
            began = time.monotonic()
            first = _next_pack(txn)
            moved = set()
            for n, (cid, loc, old, new) in denser:
                if chunks.location(txn, cid) != loc or chunks.stored(txn, cid) != old:
                    continue  # moved or let go of meanwhile
                chunks.replace_stored(txn, cid, new)
                self.report["chunks_recompressed"] += 1
                self.report["stored_bytes_saved"] += len(old) - len(new)
                moved.add(n)
            for n in sorted(moved):
                if packs.rewrite(txn, n):
                    self.report["packs_rewritten"] += 1
            self.ours.append((first, _next_pack(txn)))
            self.number = upto
            if upto >= self.end:
                self.finished = True
                # Past the packs this pass wrote (dense already), never past the
                # last pack, which writers may append to (packs.JOIN_MAX).
                for lo, hi in sorted(self.ours):
                    if lo <= upto < hi:
                        upto = hi
            _advance(txn, min(upto, _next_pack(txn) - 1))
        self.last_write_seconds = time.monotonic() - began
        return not self.finished

    def _candidates(self, number: int, pack: bytes):
        """(chunk id, location, stored form, denser form) of each live
        compressed chunk of a pack that LEVEL stores in fewer bytes."""
        try:
            found = packs.entries(pack)
        except Exception:
            return  # damaged: left where verify finds it
        for kind, offset, length in found:
            if kind != packs.CHUNK:
                continue
            payload = pack[offset: offset + length]
            if payload[:1] != bytes((chunks.ZSTD,)):
                # Kept raw: incompressible, or of a volume made with compression=none,
                # whose reads are not to pay for decompressing.
                continue
            try:
                data = chunks.decode(payload)
            except Exception:
                continue  # damaged, or no chunk of ours: left as it is
            new = bytes((chunks.ZSTD,)) + self.compressor.compress(data)
            if len(new) < len(payload):
                yield chunks.chunk_id(data), packs.Location(number, offset, length), payload, new


def recompress(store: Store, progress: NoProgress | None = None) -> dict:
    """Compress again every packed chunk of the packs written since the last
    pass; what it saved."""
    progress = progress or NoProgress()
    run = Pass(store)
    progress.start("recompressing", run.todo)
    while True:
        before = run.number
        more = run.step()
        progress.advance(run.number - before)
        if not more:
            return run.report


def _watermark(txn: Txn) -> int:
    raw = txn.get("meta", WATERMARK)
    return schema.read_u64(raw) if raw else 0


def _advance(txn: Txn, mark: int) -> None:
    if mark > _watermark(txn):
        txn.put("meta", WATERMARK, schema.u64(mark))


def _next_pack(txn: Txn) -> int:
    raw = txn.get("meta", b"next_pack")
    return schema.read_u64(raw) if raw else 1


def _numbers(txn: Txn, start: int, end: int, most: int) -> list[int]:
    """Up to `most` pack numbers from start on, below end."""
    out = []
    cur = txn.cursor("packs")
    if cur.set_range(schema.u64(start)):
        for key in cur.iternext(keys=True, values=False):
            n = schema.read_u64(key)
            if n >= end or len(out) >= most:
                break
            out.append(n)
    return out
