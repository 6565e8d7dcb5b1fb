"""Chunks written fast, kept dense: gc compresses packed chunks again, harder.

A worker compresses as it writes, at levels its write rate can afford (zstd
1 for whole blocks, 3 for shorter ones: chunks.py). gc has no one waiting on
it, so it compresses each packed chunk once more at LEVEL and keeps the new
form where it is smaller (chunks kept raw stay raw): the chunk's id (the
hash of its bytes) and its count stay; a pack whose chunks moved is written again at once (its other
entries appended to the open pack, packs.rewrite), so no dead space stays.
zstd decompresses a higher level as fast as a lower one: reads cost the same.

Pack by pack, BATCH_PACKS to a transaction: LMDB reuses the pages a commit
freed two commits later, so the file grows by a few batches at most, not by
the store's size (one transaction holding every new pack and every old one
would double it). Packs are numbered in the order they were written, so
`recompressed_to` (meta) remembers the first pack not gone through: each
chunk is compressed again once, by the first gc after it was written.
Chunks larger than a pack's entry (values of their own) compress too little
to be worth it and are left as they are.
"""

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


def recompress(store: Store, progress: NoProgress | None = None) -> dict:
    """Compress again every packed chunk of the packs written since the last
    run; what it saved."""
    progress = progress or NoProgress()
    report = {"chunks_recompressed": 0, "stored_bytes_saved": 0, "packs_rewritten": 0}
    with store.read() as txn:
        raw = txn.get("meta", WATERMARK)
        number = schema.read_u64(raw) if raw else 0
        end = _next_pack(txn)
    progress.start("recompressing", max(0, end - number))
    compressor = zstandard.ZstdCompressor(level=LEVEL)
    ours: list[tuple[int, int]] = []  # the pack numbers this run's transactions took
    while number < end:
        with store.write(durable=False) as txn:
            first = _next_pack(txn)
            batch = _numbers(txn, number, end, BATCH_PACKS)
            for n in batch:
                _pack(txn, n, compressor, report)
            ours.append((first, _next_pack(txn)))
        progress.advance((batch[-1] + 1 if batch else end) - number)
        number = batch[-1] + 1 if batch else end
    with store.write() as txn:
        # Past the packs this run wrote (dense already), never past the last
        # pack, which writers may append to (packs.JOIN_MAX).
        mark = end
        for lo, hi in sorted(ours):
            if lo <= mark < hi:
                mark = hi
        mark = min(mark, _next_pack(txn) - 1)
        raw = txn.get("meta", WATERMARK)
        if mark > (schema.read_u64(raw) if raw else 0):
            txn.put("meta", WATERMARK, schema.u64(mark))
    return report


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


def _pack(txn: Txn, number: int, compressor: zstandard.ZstdCompressor, report: dict) -> None:
    """Compress the live chunks of one pack again; write the pack again if any moved."""
    pack = packs.content(txn, number)
    if pack is None:
        return
    pack = bytes(pack)
    try:
        found = packs.entries(pack)
    except Exception:
        return  # damaged: left where verify finds it
    moved = False
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
        cid = chunks.chunk_id(data)
        if chunks.location(txn, cid) != packs.Location(number, offset, length):
            continue  # a dead entry (its chunk elsewhere, or gone)
        denser = bytes((chunks.ZSTD,)) + compressor.compress(data)
        if len(denser) < len(payload):
            chunks.replace_stored(txn, cid, denser)
            report["chunks_recompressed"] += 1
            report["stored_bytes_saved"] += len(payload) - len(denser)
            moved = True
    if moved and packs.rewrite(txn, number):
        report["packs_rewritten"] += 1
