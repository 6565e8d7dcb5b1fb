"""Content-addressed chunks with reference counts.

A chunk is stored once under the BLAKE3-256 hash of its raw content, however
many block maps and snapshot trees refer to it. Each reference holds one
count; the chunk is let go of in the transaction that drops the last one, so
space comes back as soon as nothing reaches the data. A small chunk is kept in
a pack (packs.py), a large one in a data file (datafiles.py, written by a
volume's worker) or as a value of its own; its count row says which.
This module is the only reader and writer of `chunks` and `refs`.
"""

import functools
import struct
import threading
from typing import NamedTuple

import blake3
import zstandard

from .. import native
from ..errors import StoreDamaged
from . import countrows, datafiles, packs, schema
from .env import Txn, row_disk_bytes

RAW, ZSTD = schema.CODECS["none"], schema.CODECS["zstd"]
CODECS = schema.CODECS
# Keep the compressed form only when it saves at least this fraction (ZFS's
# rule): below it the CPU of compressing every block, and of decompressing it
# on every read, buys too little (random-looking data with a few zeros in it
# saves ~11% and cost half of a sequential write's speed).
MIN_SAVING = 1 / 8
PROBE = 8192
# zstd's level, by measurement. On Python's standard library in 128 KiB blocks
# (bench/evolve.py's data) level 3 stores 4% less than level 1 (17.8 against
# 18.5 MB) for 30% more CPU (210 against 300 MB/s on one core of the bench
# machine); on a 384 MiB file of source text written through a mount it
# stored 5.5% less but wrote at 65-70 MiB/s instead of 83-88. Decompression
# runs at the same speed. So: level 3 where compressing is a small part of the
# work (a block shorter than a whole one: a small file, a file's tail, a tree
# object), level 1 for whole blocks, which big sequential writes bring (half
# of the standard library's bytes; the rule stores 18.1 MB of it).
LEVEL_WHOLE_BLOCK = 1
LEVEL_SHORT = 3

_local = threading.local()


# blake3 lets go of the GIL for every input of 2 KiB (its GIL_MINSIZE) or more.
# On the FUSE thread a small file's flush then waited for the store thread to
# give the GIL back, for a hash of 3 us: a perf probe on PyEval_SaveThread found
# it the FUSE thread's one GIL release per small file, cProfile 37-42 us of wall
# time in it. Inputs up to HOLD_GIL_UP_TO go in pieces under that size, the GIL
# held: slower to hash (4 KiB: 9 against 3.5 us; 8 KiB: 17 against 6), but the
# flush handler took 58-72 us of CPU per small file against 75-86 (bench/handlers.py,
# three alternated runs).
HOLD_GIL_UP_TO = 8192
_GIL_MINSIZE = 2048


def chunk_id(data) -> bytes:
    size = len(data)
    if size < _GIL_MINSIZE or size > HOLD_GIL_UP_TO:
        return blake3.blake3(data).digest()
    h = blake3.blake3()
    view = memoryview(data)
    piece = _GIL_MINSIZE - 1
    for at in range(0, size, piece):
        h.update(view[at:at + piece])
    return h.digest()


def _compressor(size: int) -> zstandard.ZstdCompressor:
    if size >= schema.BLOCK_SIZE:
        c = getattr(_local, "zc", None)
        if c is None:
            c = _local.zc = zstandard.ZstdCompressor(level=LEVEL_WHOLE_BLOCK)
        return c
    c = getattr(_local, "zs", None)
    if c is None:
        c = _local.zs = zstandard.ZstdCompressor(level=LEVEL_SHORT)
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
    return compressed(data, compression) or bytes((RAW,)) + data


def compressed(data, compression: str) -> bytes | None:
    """The zstd form of data (codec byte included) when compressing it
    saves enough, else None: data kept raw."""
    if CODECS[compression] == ZSTD and _worth_compressing(data):
        packed = _compressor(len(data)).compress(data)
        if len(packed) <= len(data) * (1 - MIN_SAVING):
            return bytes((ZSTD,)) + packed
    return None


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
    return bytes(checked_view(payload, cid))


def checked_view(payload, cid: bytes):
    """decode_checked without the copy: a raw chunk's bytes as a view of
    `payload` (valid as long as it is), a compressed one's as new bytes."""
    try:
        if payload[0] == RAW:
            body = memoryview(payload)[1:]
            if chunk_id(body) == cid:
                return body
            data = None
        else:
            data = decode(payload)
    except zstandard.ZstdError:
        data = None
    if data is None or chunk_id(data) != cid:
        raise StoreDamaged(f"chunk {cid.hex()} is damaged (its content does not match its id)",
                           reason="damaged")
    return data


# prepare_blocks' payload for a block kept raw: add_ref frames it (codec byte
# + data) as it stores it, so that a flush waiting for the store thread does
# not hold a second copy of its raw blocks (a sequential write's, 8-24 MiB).
KEEP_RAW = b""
_RAW_HEAD = bytes((RAW,))


def prepare_blocks(blocks, compression: str) -> dict[int, tuple[bytes, bytes] | None]:
    """For (index, data) blocks: index -> (chunk id, encoded payload or
    KEEP_RAW), or None for an all-zero block (a hole). Safe to run in any thread."""
    out = {}
    for index, data in blocks:
        if native.is_zero(data):
            out[index] = None
        else:
            out[index] = (chunk_id(data), compressed(data, compression) or KEEP_RAW)
    return out


# A chunk's count row: alone (the chunk a value of its own in `chunks`, as
# every chunk was in format 1), packed (in a pack, see packs.py), or in a data
# file (format 6, datafiles.py).
_ALONE = struct.Struct(">QII")     # count, raw length, stored length
_PACKED = struct.Struct(">QIIQI")  # ... pack number, offset of the chunk in it
_EXTENT = struct.Struct(">QIIQQ")  # ... data file number, offset of the chunk in it
_COUNT = struct.Struct(">Q")


class Row(NamedTuple):
    count: int
    raw_len: int
    stored_len: int
    loc: packs.Location | None  # None: alone or in a data file
    ext: datafiles.Extent | None = None  # in a data file


def _row(raw) -> Row:
    if len(raw) == _PACKED.size:
        count, raw_len, stored_len, pack, offset = _PACKED.unpack(raw)
        return Row(count, raw_len, stored_len, packs.Location(pack, offset, stored_len))
    if len(raw) == _EXTENT.size:
        count, raw_len, stored_len, number, offset = _EXTENT.unpack(raw)
        return Row(count, raw_len, stored_len, None, datafiles.Extent(number, offset, stored_len))
    return Row(*_ALONE.unpack(raw), None)


def _encode_row(count: int, raw_len: int, stored_len: int, loc: packs.Location | None,
                ext: datafiles.Extent | None = None) -> bytes:
    if ext is not None:
        return _EXTENT.pack(count, raw_len, stored_len, ext.file, ext.offset)
    if loc is None:
        return _ALONE.pack(count, raw_len, stored_len)
    return _PACKED.pack(count, raw_len, stored_len, loc.pack, loc.offset)


def _get_row(txn: Txn, cid: bytes) -> Row:
    raw = countrows.get(txn, "refs", cid)
    if raw is None:
        raise StoreDamaged(f"reference to missing chunk {cid.hex()}")
    return _row(raw)


def _count_by(txn: Txn, cid: bytes, delta: int, raw=None) -> int:
    """Add delta to a chunk's count, leaving the rest of its row as it is.
    `raw`: the row (fixed form) as the caller just read it (an LMDB read less)."""
    if raw is None:
        raw = countrows.get(txn, "refs", cid)
    if raw is None:
        raise StoreDamaged(f"reference to missing chunk {cid.hex()}")
    count = _COUNT.unpack_from(raw)[0] + delta
    txn.put("refs", cid, _COUNT.pack(count) + bytes(raw)[_COUNT.size:])
    return count


def _store(txn: Txn, cid: bytes, payload, raw_len: int, count: int, packed_max: int = packs.ENTRY_MAX,
           head: bytes = b"") -> None:
    """Keep a chunk's stored form, head + payload: packed when at most
    packed_max bytes, else in a data file when the transaction writes one
    (the two parts copied straight into its buffer), else a value of its own."""
    length = len(head) + len(payload)
    loc = ext = None
    writer = txn.root().data
    if length > packed_max and writer is not None:
        ext = writer.stage(txn, head, payload)
    else:
        stored = head + payload if head else payload
        if length <= packed_max:
            loc = packs.add(txn, packs.CHUNK, stored)
        else:
            txn.put("chunks", cid, stored)
    txn.put("refs", cid, _encode_row(count, raw_len, length, loc, ext))
    txn.chunk_delta[0] += 1
    txn.chunk_delta[1] += raw_len
    txn.chunk_delta[2] += length


def _unstore(txn: Txn, cid: bytes, row: Row) -> None:
    txn.delete("refs", cid)
    _let_go(txn, cid, row)


def _let_go(txn: Txn, cid: bytes, row: Row) -> None:
    """Let go of a chunk's stored form wherever it is."""
    if row.ext is not None:
        datafiles.release(txn, row.ext)
    elif row.loc is None:
        txn.delete("chunks", cid)
    else:
        packs.release(txn, row.loc)


def add_ref(txn: Txn, data: bytes, compression: str = "zstd", cid: bytes | None = None,
            payload: bytes | None = None) -> bytes:
    """Store data (if new) and take one reference to it; return its chunk id.
    `payload` is data already encoded, or KEEP_RAW (see prepare_blocks)."""
    cid = cid or chunk_id(data)
    raw = countrows.get(txn, "refs", cid)
    if raw is not None:
        _count_by(txn, cid, 1, raw)
        return cid
    if payload is None:
        payload = encode(data, compression)
    elif payload is KEEP_RAW:  # framed where it is kept, not copied to frame it
        _store(txn, cid, data, len(data), 1, head=_RAW_HEAD)
        return cid
    _store(txn, cid, payload, len(data), 1)
    return cid


def incref(txn: Txn, cid: bytes) -> None:
    _count_by(txn, cid, 1)


def incref_many(txn: Txn, deltas: list[tuple[bytes, int]]) -> None:
    """incref() `delta` times each chunk, given in id order: their rows
    written in one call."""
    rows = []
    get = functools.partial(txn.txn.get, db=txn.store.dbs["refs"])
    count, unpack, size = _COUNT.pack, _COUNT.unpack_from, _COUNT.size
    for cid, delta in deltas:
        raw = get(cid)
        if raw is None:
            raise StoreDamaged(f"reference to missing chunk {cid.hex()}")
        if raw[0]:
            raw = countrows.expand(raw)
        rows.append((cid, count(unpack(raw)[0] + delta) + raw[size:]))
    txn.put_many("refs", rows)


def decref(txn: Txn, cid: bytes) -> int:
    """Drop one reference; delete the chunk when it was the last. Its raw
    length (a block map letting go of a block counts it: one read of the
    chunk's row for both)."""
    raw = countrows.get(txn, "refs", cid)
    if raw is None:
        raise StoreDamaged(f"reference to missing chunk {cid.hex()}")
    row = _row(raw)
    if row.count > 1:
        _count_by(txn, cid, -1, raw)
        return row.raw_len
    _unstore(txn, cid, row)
    txn.chunk_delta[0] -= 1
    txn.chunk_delta[1] -= row.raw_len
    txn.chunk_delta[2] -= row.stored_len
    return row.raw_len


def ref_info(txn: Txn, cid: bytes) -> tuple[int, int, int]:
    """(reference count, raw length, stored length) of a chunk."""
    return _get_row(txn, cid)[:3]


def raw_length(txn: Txn, cid: bytes) -> int:
    return _get_row(txn, cid).raw_len


def _payload(txn: Txn, cid: bytes, row: Row):
    """A chunk's stored form where it is (a view, valid until the transaction
    ends, or bytes); None if its data is gone."""
    if row.ext is not None:
        try:
            return datafiles.read(txn, row.ext)
        except StoreDamaged:
            return None
    if row.loc is None:
        return txn.get("chunks", cid)
    return packs.view(txn, row.loc)


def read(txn: Txn, cid: bytes) -> bytes:
    """A chunk's bytes, checked against its id (see decode_checked)."""
    raw = countrows.get(txn, "refs", cid)
    payload = _payload(txn, cid, _row(raw)) if raw is not None else None
    if payload is None:
        raise StoreDamaged(f"missing chunk {cid.hex()}")
    return decode_checked(payload, cid)


def read_present(txn: Txn, wanted: dict) -> dict:
    """key -> bytes of the chunks in `wanted` (key -> chunk id) that the store
    holds, each checked against its id; those it does not hold are left out."""
    out = {}
    for key, cid in wanted.items():
        data = read_if_stored(txn, cid)
        if data is not None:
            out[key] = data
    return out


def view_if_stored(txn: Txn, cid: bytes):
    """A chunk's bytes, checked, as checked_view gives them (a raw chunk's a
    view into the map, valid until the transaction ends), or None while the
    store does not hold it."""
    raw = countrows.get(txn, "refs", cid)
    payload = _payload(txn, cid, _row(raw)) if raw is not None else None
    if payload is None:
        if raw is not None:
            raise StoreDamaged(f"missing chunk {cid.hex()}")
        return None
    return checked_view(payload, cid)


def views_if_stored(txn: Txn, cids) -> list:
    """view_if_stored of each of cids, the ones in data files read together
    (side by side in a file, as a sequential write leaves them: one read)."""
    raws = [countrows.get(txn, "refs", cid) for cid in cids]
    rows = [_row(raw) if raw is not None else None for raw in raws]
    exts = [row.ext for row in rows if row is not None and row.ext is not None]
    from_files = datafiles.read_many(txn, exts) if exts else {}
    out = []
    for cid, row in zip(cids, rows):
        if row is None:
            out.append(None)
            continue
        payload = from_files.get(row.ext) if row.ext is not None else _payload(txn, cid, row)
        if payload is None:
            raise StoreDamaged(f"missing chunk {cid.hex()}")
        out.append(checked_view(payload, cid))
    return out


def read_if_stored(txn: Txn, cid: bytes) -> bytes | None:
    """A chunk's bytes, checked, or None while the store does not hold it
    (a block a writer has not committed yet). The row is read once."""
    view = view_if_stored(txn, cid)
    return None if view is None else bytes(view)


def has(txn: Txn, cid: bytes) -> bool:
    return txn.get("refs", cid) is not None


def stored(txn: Txn, cid: bytes) -> bytes | None:
    """A chunk as stored (codec byte + data), unchecked; None if absent."""
    raw = countrows.get(txn, "refs", cid)
    payload = _payload(txn, cid, _row(raw)) if raw is not None else txn.get("chunks", cid)
    return None if payload is None else bytes(payload)


def location(txn: Txn, cid: bytes) -> packs.Location | None:
    """Where a packed chunk is (None: not packed, or not held)."""
    raw = countrows.get(txn, "refs", cid)
    return _row(raw).loc if raw is not None else None


def identify(payload) -> bytes | None:
    """The id of a chunk's stored form (None if it does not decode)."""
    try:
        return chunk_id(decode(payload))
    except (zstandard.ZstdError, StoreDamaged):
        return None


def relocate(txn: Txn, cid: bytes, loc: packs.Location) -> None:
    """Point a chunk's row at a new copy of it (a pack rewritten)."""
    row = _get_row(txn, cid)
    txn.put("refs", cid, _encode_row(row.count, row.raw_len, row.stored_len, loc))


def pack_alone(txn: Txn, cid: bytes) -> bool:
    """Move a chunk kept as a value of its own (an older store's, or one
    larger than a writer packs) into a pack if it fits one; whether it moved."""
    row = _get_row(txn, cid)
    if row.loc is not None or row.ext is not None or row.stored_len > packs.GC_ENTRY_MAX:
        return False
    payload = txn.get("chunks", cid)
    if payload is None:
        return False
    loc = packs.add(txn, packs.CHUNK, bytes(payload))
    txn.delete("chunks", cid)
    txn.put("refs", cid, _encode_row(row.count, row.raw_len, row.stored_len, loc))
    return True


def replace_stored(txn: Txn, cid: bytes, payload: bytes) -> None:
    """Keep a chunk in another stored form of the same bytes (gc's denser
    compression, recompress.py): its count stays, its old form is let go of."""
    row = _get_row(txn, cid)
    _let_go(txn, cid, row)
    _store(txn, cid, payload, row.raw_len, row.count, packs.GC_ENTRY_MAX)
    txn.chunk_delta[0] -= 1
    txn.chunk_delta[1] -= row.raw_len
    txn.chunk_delta[2] -= row.stored_len


def put_stored(txn: Txn, cid: bytes, payload: bytes, raw_len: int) -> None:
    """Store a chunk received as stored (its id checked by the caller), held by
    no one yet: the object that lists it takes the first reference."""
    _store(txn, cid, payload, raw_len, 0)


def set_count(txn: Txn, cid: bytes, count: int) -> None:
    """Set a chunk's reference count (gc's repair)."""
    _count_by(txn, cid, count - _get_row(txn, cid).count)


def recount(txn: Txn, cid: bytes, count: int, raw_len: int, payload) -> None:
    """Give a chunk held alone with no count row its count back (gc's repair)."""
    txn.put("refs", cid, _encode_row(count, raw_len, len(payload), None))


def counted(txn: Txn) -> int:
    """How many chunks have a count row."""
    return txn.txn.stat(txn.store.dbs["refs"])["entries"]


def forget(txn: Txn, cid: bytes) -> None:
    """Delete a chunk and its count row, whatever it counts (gc's sweep; the
    totals are recounted after)."""
    raw = countrows.get(txn, "refs", cid)
    if raw is None:
        txn.delete("chunks", cid)
    else:
        _unstore(txn, cid, _row(raw))


def count_rows(txn: Txn):
    """(chunk id, count, raw length, stored length) of every counted chunk."""
    for cid, raw in countrows.scan(txn, "refs", b""):
        yield (bytes(cid), *_row(raw)[:3])


def stored_rows(txn: Txn):
    """(chunk id, stored form) of every chunk the store holds data for: the
    ones alone, counted or not, then the packed ones pack by pack (each pack
    read once), then the ones in data files. A packed chunk whose data is
    gone is not listed."""
    for cid, payload in txn.scan("chunks", b""):
        yield bytes(cid), payload
    yield from packs.read_in_order(txn, locations(txn))
    # In file order, a few at a time: each run of them one read.
    placed = sorted(extents(txn), key=lambda row: row[1])
    for i in range(0, len(placed), READ_TOGETHER):
        batch = placed[i: i + READ_TOGETHER]
        got = datafiles.read_many(txn, [ext for _, ext in batch])
        for cid, ext in batch:
            if ext in got:  # else its file is gone or short: count_rows tells
                yield cid, got[ext]
        got = None  # its buffer free for the next batch


READ_TOGETHER = 8  # data-file chunks read at once in stored_rows (a 1 MiB read)


def extents(txn: Txn):
    """(chunk id, extent) of every chunk in a data file."""
    for cid, raw in countrows.scan(txn, "refs", b""):
        if len(raw) == _EXTENT.size:
            yield bytes(cid), _row(raw).ext


def data_files_in_use(txn: Txn) -> set[int]:
    """Numbers of the data files some chunk is in."""
    return {ext.file for _, ext in extents(txn)}


def locations(txn: Txn):
    """(chunk id, location) of every packed chunk."""
    for cid, raw in countrows.scan(txn, "refs", b""):
        loc = _row(raw).loc
        if loc is not None:
            yield bytes(cid), loc


def alone(txn: Txn):
    """Ids of counted chunks that fit a pack but are kept as values of
    their own (an older store's, or larger than a writer packs: gc packs them)."""
    for cid, raw in countrows.scan(txn, "refs", b""):
        row = _row(raw)
        if row.loc is None and row.ext is None and row.stored_len <= packs.GC_ENTRY_MAX:
            yield bytes(cid)


def uncounted(txn: Txn):
    """(chunk id, stored form) of chunks held alone with no count row (leaked;
    a packed chunk with no row is dead space of its pack)."""
    for cid, payload in txn.scan("chunks", b""):
        if txn.get("refs", cid) is None:
            yield bytes(cid), bytes(payload)


def disk_bytes(txn: Txn, cid: bytes) -> int:
    """What a chunk takes in the store's file, its count row included."""
    psize = txn.store.env.stat()["psize"]
    raw = countrows.get(txn, "refs", cid)
    if raw is None:
        return 0
    row = _row(raw)
    if row.ext is not None:
        return row.stored_len + row_disk_bytes(psize, len(cid), len(raw))
    if row.loc is not None:
        return packs.HEAD.size + row.stored_len + row_disk_bytes(psize, len(cid), len(raw))
    return row_disk_bytes(psize, len(cid), row.stored_len) + row_disk_bytes(psize, len(cid), len(raw))


def totals(txn: Txn) -> dict:
    chunks, raw_bytes, stored = txn.chunk_totals()
    return {"chunks": chunks, "unique_bytes": raw_bytes, "stored_bytes": stored}
