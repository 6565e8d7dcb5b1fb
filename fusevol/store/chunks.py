"""Content-addressed chunks with reference counts.

A chunk is stored once under the BLAKE3-256 hash of its raw content, however
many block maps (and, later, snapshot trees) refer to it. Each reference holds
one count; the chunk is deleted in the transaction that drops the last one, so
space comes back as soon as nothing reaches the data.
"""

import threading

import blake3
import zstandard

from .. import native
from ..errors import StoreDamaged
from . import schema
from .env import Txn, row_disk_bytes

RAW, ZSTD = schema.CODECS["none"], schema.CODECS["zstd"]
CODECS = schema.CODECS
# Keep the compressed form only when it saves at least this fraction (ZFS's
# rule): below it the CPU of compressing every block, and of decompressing it
# on every read, buys too little (random-looking data with a few zeros in it
# saves ~11% and cost half of a sequential write's speed).
MIN_SAVING = 1 / 8
PROBE = 8192

_local = threading.local()


def chunk_id(data) -> bytes:
    return blake3.blake3(data).digest()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "zc", None)
    if c is None:
        c = _local.zc = zstandard.ZstdCompressor(level=1)
    return c


def _prober() -> zstandard.ZstdCompressor:
    c = getattr(_local, "zp", None)
    if c is None:  # a level of -5: 4x faster on 8 KiB than level 1 (8 vs 31 us)
        c = _local.zp = zstandard.ZstdCompressor(level=-5)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "zd", None)
    if d is None:
        d = _local.zd = zstandard.ZstdDecompressor()
    return d


def encode(data: bytes, compression: str) -> bytes:
    if CODECS[compression] == ZSTD and _worth_compressing(data):
        packed = _compressor().compress(data)
        if len(packed) <= len(data) * (1 - MIN_SAVING):
            return bytes((ZSTD,)) + packed
    return bytes((RAW,)) + data


def _worth_compressing(data) -> bool:
    """Compress a sample first, at a fast level: on incompressible data
    (media, archives, random) a full try cost most of a flush's CPU for
    nothing. Data the sample says is near the bar is not tried."""
    if len(data) <= 4 * PROBE:
        return True
    probe = _prober().compress(memoryview(data)[:PROBE])
    return len(probe) <= PROBE * (1 - MIN_SAVING)


def decode(payload) -> bytes:
    codec = payload[0]
    body = payload[1:]
    if codec == RAW:
        return bytes(body)
    if codec == ZSTD:
        return _decompressor().decompress(body)  # frames carry their content size
    raise StoreDamaged(f"chunk with unknown codec {codec}")


def decode_checked(payload, cid: bytes) -> bytes:
    """A chunk's bytes, checked against its id. LMDB keeps no checksums: a
    byte flipped on the disk would otherwise be handed out as file content.
    `payload` may be a buffer into LMDB's map: a raw chunk is hashed there
    and copied once."""
    try:
        if payload[0] == RAW:
            body = memoryview(payload)[1:]
            if chunk_id(body) == cid:
                return bytes(body)
            data = None
        else:
            data = decode(payload)
    except zstandard.ZstdError:
        data = None
    if data is None or chunk_id(data) != cid:
        raise StoreDamaged(f"chunk {cid.hex()} is damaged (its content does not match its id); "
                            "fusevol verify names the files it reaches")
    return data


def prepare_blocks(blocks, compression: str) -> dict[int, tuple[bytes, bytes] | None]:
    """For (index, data) blocks: index -> (chunk id, encoded payload), or None
    for an all-zero block (a hole). Safe to run in any thread."""
    out = {}
    for index, data in blocks:
        if native.is_zero(data):
            out[index] = None
        else:
            out[index] = (chunk_id(data), encode(data, compression))
    return out


def add_ref(txn: Txn, data: bytes, compression: str = "zstd", cid: bytes | None = None,
            payload: bytes | None = None) -> bytes:
    """Store data (if new) and take one reference to it; return its chunk id.
    `payload` is data already encoded (see prepare_blocks)."""
    cid = cid or chunk_id(data)
    ref = txn.get("refs", cid)
    if ref is not None:
        count, raw_len, stored_len = schema.unpack_ref(ref)
        txn.put("refs", cid, schema.pack_ref(count + 1, raw_len, stored_len))
        return cid
    if payload is None:
        payload = encode(data, compression)
    txn.put("chunks", cid, payload)
    txn.put("refs", cid, schema.pack_ref(1, len(data), len(payload)))
    txn.chunk_delta[0] += 1
    txn.chunk_delta[1] += len(data)
    txn.chunk_delta[2] += len(payload)
    return cid


def incref(txn: Txn, cid: bytes) -> None:
    ref = txn.get("refs", cid)
    if ref is None:
        raise StoreDamaged(f"reference to missing chunk {cid.hex()}")
    count, raw_len, stored_len = schema.unpack_ref(ref)
    txn.put("refs", cid, schema.pack_ref(count + 1, raw_len, stored_len))


def decref(txn: Txn, cid: bytes) -> None:
    """Drop one reference; delete the chunk when it was the last."""
    ref = txn.get("refs", cid)
    if ref is None:
        raise StoreDamaged(f"reference to missing chunk {cid.hex()}")
    count, raw_len, stored_len = schema.unpack_ref(ref)
    if count > 1:
        txn.put("refs", cid, schema.pack_ref(count - 1, raw_len, stored_len))
        return
    txn.delete("refs", cid)
    txn.delete("chunks", cid)
    txn.chunk_delta[0] -= 1
    txn.chunk_delta[1] -= raw_len
    txn.chunk_delta[2] -= stored_len


def ref_info(txn: Txn, cid: bytes) -> tuple[int, int, int]:
    """(reference count, raw length, stored length) of a chunk."""
    ref = txn.get("refs", cid)
    if ref is None:
        raise StoreDamaged(f"reference to missing chunk {cid.hex()}")
    return schema.unpack_ref(ref)


def raw_length(txn: Txn, cid: bytes) -> int:
    ref = txn.get("refs", cid)
    if ref is None:
        raise StoreDamaged(f"reference to missing chunk {cid.hex()}")
    return schema.unpack_ref(ref)[1]


def read(txn: Txn, cid: bytes) -> bytes:
    """A chunk's bytes, checked against its id (see decode_checked)."""
    payload = txn.get("chunks", cid)
    if payload is None:
        raise StoreDamaged(f"missing chunk {cid.hex()}")
    return decode_checked(payload, cid)


def read_if_stored(txn: Txn, cid: bytes) -> bytes | None:
    """A chunk's bytes, checked, or None while the store does not hold it
    (a block a writer has not committed yet)."""
    payload = txn.get("chunks", cid)
    return None if payload is None else decode_checked(payload, cid)


def has(txn: Txn, cid: bytes) -> bool:
    return txn.get("refs", cid) is not None


def stored(txn: Txn, cid: bytes) -> bytes | None:
    """A chunk as stored (codec byte + data), unchecked; None if absent."""
    payload = txn.get("chunks", cid)
    return None if payload is None else bytes(payload)


def put_stored(txn: Txn, cid: bytes, payload: bytes, raw_len: int) -> None:
    """Store a chunk received as stored (its id checked by the caller), held by
    no one yet: the object that lists it takes the first reference."""
    txn.put("chunks", cid, payload)
    txn.put("refs", cid, schema.pack_ref(0, raw_len, len(payload)))
    txn.chunk_delta[0] += 1
    txn.chunk_delta[1] += raw_len
    txn.chunk_delta[2] += len(payload)


def set_count(txn: Txn, cid: bytes, count: int) -> None:
    """Set a chunk's reference count (gc's repair)."""
    _, raw_len, stored_len = ref_info(txn, cid)
    txn.put("refs", cid, schema.pack_ref(count, raw_len, stored_len))


def recount(txn: Txn, cid: bytes, count: int, raw_len: int, payload) -> None:
    """Give a chunk held with no count row its count back (gc's repair)."""
    txn.put("refs", cid, schema.pack_ref(count, raw_len, len(payload)))


def counted(txn: Txn) -> int:
    """How many chunks have a count row."""
    return txn.txn.stat(txn.store.dbs["refs"])["entries"]


def forget(txn: Txn, cid: bytes) -> None:
    """Delete a chunk and its count row, whatever it counts (gc's sweep; the
    totals are recounted after)."""
    txn.delete("refs", cid)
    txn.delete("chunks", cid)


def count_rows(txn: Txn):
    """(chunk id, count, raw length, stored length) of every counted chunk."""
    for cid, raw in txn.scan("refs", b""):
        yield (bytes(cid), *schema.unpack_ref(raw))


def stored_rows(txn: Txn):
    """(chunk id, stored form) of every chunk the store holds data for,
    counted or not (what verify re-hashes)."""
    for cid, payload in txn.scan("chunks", b""):
        yield bytes(cid), payload


def uncounted(txn: Txn):
    """(chunk id, stored form) of chunks held with no count row (leaked)."""
    for cid, payload in stored_rows(txn):
        if txn.get("refs", cid) is None:
            yield cid, bytes(payload)


def disk_bytes(txn: Txn, cid: bytes) -> int:
    """What a chunk takes in the store's file, its count row included."""
    psize = txn.store.env.stat()["psize"]
    ref = txn.get("refs", cid)
    stored_len = schema.unpack_ref(ref)[2] if ref is not None else 0
    return row_disk_bytes(psize, len(cid), stored_len) + row_disk_bytes(psize, len(cid), 16)


def totals(txn: Txn) -> dict:
    raw = txn.get("meta", b"chunk_totals")
    chunks, raw_bytes, stored = (schema.read_u64(raw, i * 8) for i in range(3)) if raw else (0, 0, 0)
    return {"chunks": chunks, "unique_bytes": raw_bytes, "stored_bytes": stored}
