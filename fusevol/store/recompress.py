"""Chunks written fast, kept dense: gc compresses packed chunks again, harder.

A worker compresses as it writes, at levels its write rate can afford (zstd
1 for whole blocks, 3 for shorter ones: chunks.py). gc has no one waiting on
it, so it compresses each packed chunk once more at LEVEL and keeps the new
form where it is smaller: the chunk's id (the hash of its bytes) and its
count stay, its old entry becomes dead space of its pack, which gc's pack
compaction then reclaims. zstd decompresses a higher level as fast as a
lower one, so reads cost the same.

Packs are numbered in the order they were written, so `recompressed_to`
(meta) remembers the first pack not yet gone through: each chunk is
compressed again once, by the first gc after it was written. Chunks larger
than a pack's entry (values of their own) compress too little to be worth it
and are left as they are.
"""

import zstandard

from ..progress import NoProgress
from . import chunks, packs, schema
from .env import Txn

# On Python's standard library (bench/evolve.py's data, 50 MB): whole 128 KiB
# blocks stored at level 1 take 8.24 MiB, at 9 7.21 MiB; shorter ones (small
# files, tails) at level 3 8.02 MiB, at 9 7.50 MiB; level 9 compressed the
# 50 MB in 1.3 s of one core, level 19 in 20 s for 0.9 MiB less.
LEVEL = 9
WATERMARK = b"recompressed_to"


def recompress(txn: Txn, progress: NoProgress | None = None) -> dict:
    """Compress again every packed chunk of the packs written since the last
    gc; what it saved."""
    progress = progress or NoProgress()
    raw = txn.get("meta", WATERMARK)
    first = schema.read_u64(raw) if raw else 0
    todo = [(cid, loc) for cid, loc in chunks.locations(txn) if loc.pack >= first]
    todo.sort(key=lambda item: item[1])  # pack by pack, as they lie
    report = {"chunks_recompressed": 0, "stored_bytes_saved": 0}
    progress.start("recompressing", len(todo))
    compressor = zstandard.ZstdCompressor(level=LEVEL)
    for cid, loc in todo:
        progress.advance(1)
        payload = packs.view(txn, loc)
        if payload is None:
            continue  # its pack is gone: verify names it
        try:
            data = chunks.decode(payload)
        except Exception:
            continue  # damaged: left where verify finds it
        if chunks.chunk_id(data) != cid:
            continue
        denser = bytes((chunks.ZSTD,)) + compressor.compress(data)
        if payload[0] == chunks.RAW:  # kept raw: compressing must pay for reads' CPU
            keep = len(denser) <= len(payload) * (1 - chunks.MIN_SAVING)
        else:
            keep = len(denser) < len(payload)
        if keep:
            chunks.replace_stored(txn, cid, denser)
            report["chunks_recompressed"] += 1
            report["stored_bytes_saved"] += len(payload) - len(denser)
    return report


def mark_done(txn: Txn) -> None:
    """At the end of gc: every pack written so far holds dense chunks but the
    last, which writers may still append to (packs.JOIN_MAX): the next gc
    starts there."""
    next_pack = txn.get("meta", b"next_pack")
    last = schema.read_u64(next_pack) - 1 if next_pack else 0
    raw = txn.get("meta", WATERMARK)
    if last > (schema.read_u64(raw) if raw else 0):
        txn.put("meta", WATERMARK, schema.u64(last))
