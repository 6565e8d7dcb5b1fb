"""Encodings of a remote's objects: packs, indexes, manifests, and their names.

A blob is a chunk (kind C) or a tree object (kind O) in the form the store
keeps it (codec byte + raw or zstd data), named by the same id as in the
store, so the receiver can check every blob by hashing what it decodes to.

Pack (data/XY/PACKID, PACKID = BLAKE3 of the header's entries, hex: they
name every blob by its content hash, so this names the content without a
second pass over the data)::

    blob, blob, ...              back to back
    header                       zstd of n x (u8 kind, 32-byte id, u32 length)
    u32 header length, PACK_MAGIC

The header at the end lists the pack's blobs, so a pack whose index was never
written (an interrupted push) can be taken into account by reading its tail.
Chunks and tree objects go into different packs: a pull of a tree reads only
tree packs until it knows which chunks it needs.

Index (index/INDEXID, INDEXID = BLAKE3 of the whole index, hex)::

    INDEX_MAGIC, zstd of: u32 pack count, then per pack:
        32-byte pack id, u32 blob count, blob count x (u8 kind, 32-byte id, u64 offset, u32 length)

Manifest (snapshots/VOLUME/NAME): JSON, the snapshot record as a send stream
carries it, plus `format`, `pushed_at` and `pushed_from`; written last.
"""

import json
import struct

import blake3
import zstandard

from ..errors import RemoteDamaged

CHUNK, OBJECT = b"C", b"O"
ID_LEN = 32
PACK_MAGIC = b"FVPACK1\n"
INDEX_MAGIC = b"FVINDEX1"
CONFIG = "config"
CONFIG_BODY = {"format": "fusevol-remote", "version": 1}
_PACK_ENTRY = struct.Struct(">c32sI")
_INDEX_ENTRY = struct.Struct(">c32sQI")
_U32 = struct.Struct(">I")
_TAIL = struct.Struct(">I8s")
MAX_HEADER = 64 << 20  # no honest pack header is larger


def pack_name(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"data/{h[:2]}/{h}"


def pack_id_of(name: str) -> bytes | None:
    """The pack id a data/XY/PACKID name carries, or None for a stranger."""
    parts = name.split("/")
    try:
        pid = bytes.fromhex(parts[-1])
    except ValueError:
        return None
    if len(parts) != 3 or parts[0] != "data" or len(pid) != ID_LEN or parts[1] != parts[2][:2]:
        return None
    return pid


def index_name(index_id: bytes) -> str:
    return f"index/{index_id.hex()}"


def manifest_name(volume: str, snapshot: str) -> str:
    return f"snapshots/{volume}/{snapshot}"


# -- packs -------------------------------------------------------------------------

def seal_pack(blobs: list[tuple[bytes, bytes, bytes]]) -> tuple[bytes, bytes, list]:
    """Pack (kind, id, stored) blobs: (pack id, pack bytes, [(kind, id, offset, length)])."""
    parts, entries, offset = [], [], 0
    for kind, bid, stored in blobs:
        parts.append(stored)
        entries.append((kind, bid, offset, len(stored)))
        offset += len(stored)
    listing = b"".join(_PACK_ENTRY.pack(k, b, n) for k, b, _, n in entries)
    header = zstandard.ZstdCompressor(level=3).compress(listing)
    parts += [header, _TAIL.pack(len(header), PACK_MAGIC)]
    return blake3.blake3(listing).digest(), b"".join(parts), entries


def pack_tail_size() -> int:
    return _TAIL.size


def read_pack_header(name: str, tail: bytes, pack_size: int) -> tuple[int, list] | None:
    """From the last bytes of a pack: (header length, None) when more bytes are
    needed, or (0, [(kind, id, offset, length)])."""
    if len(tail) < _TAIL.size:
        raise RemoteDamaged(f"pack {name} is damaged (shorter than its trailer)")
    header_len, magic = _TAIL.unpack(tail[-_TAIL.size:])
    if magic != PACK_MAGIC or header_len > min(MAX_HEADER, pack_size - _TAIL.size):
        raise RemoteDamaged(f"pack {name} is damaged (bad trailer)")
    if len(tail) < header_len + _TAIL.size:
        return header_len, None
    raw = tail[-_TAIL.size - header_len:-_TAIL.size]
    try:
        body = zstandard.ZstdDecompressor().decompress(raw, max_output_size=MAX_HEADER)
    except zstandard.ZstdError:
        raise RemoteDamaged(f"pack {name} is damaged (unreadable header)") from None
    if len(body) % _PACK_ENTRY.size:
        raise RemoteDamaged(f"pack {name} is damaged (header of a wrong length)")
    entries, offset = [], 0
    for kind, bid, length in _PACK_ENTRY.iter_unpack(body):
        if kind not in (CHUNK, OBJECT):
            raise RemoteDamaged(f"pack {name} is damaged (blob of unknown kind)")
        entries.append((kind, bid, offset, length))
        offset += length
    if offset + header_len + _TAIL.size != pack_size:
        raise RemoteDamaged(f"pack {name} is damaged (its header does not add up to its size)")
    return 0, entries


# -- indexes -----------------------------------------------------------------------

def encode_index(packs: dict[bytes, list]) -> tuple[bytes, bytes]:
    """(index id, index bytes) of {pack id: [(kind, id, offset, length)]}."""
    out = [_U32.pack(len(packs))]
    for pid, entries in packs.items():
        out.append(pid + _U32.pack(len(entries)))
        out.extend(_INDEX_ENTRY.pack(*e) for e in entries)
    data = INDEX_MAGIC + zstandard.ZstdCompressor(level=3).compress(b"".join(out))
    return blake3.blake3(data).digest(), data


def decode_index(name: str, data: bytes) -> dict[bytes, list]:
    """Check an index against its name (its hash) and decode it."""
    expected = name.rsplit("/", 1)[-1]
    if blake3.blake3(data).hexdigest() != expected or not data.startswith(INDEX_MAGIC):
        raise RemoteDamaged(f"index {name} is damaged (its content does not match its name)")
    body = zstandard.ZstdDecompressor().decompress(data[len(INDEX_MAGIC):], max_output_size=1 << 31)
    (count,) = _U32.unpack_from(body, 0)
    pos, packs = _U32.size, {}
    for _ in range(count):
        pid = body[pos:pos + ID_LEN]
        (n,) = _U32.unpack_from(body, pos + ID_LEN)
        pos += ID_LEN + _U32.size
        packs[pid] = [_INDEX_ENTRY.unpack_from(body, pos + i * _INDEX_ENTRY.size) for i in range(n)]
        pos += n * _INDEX_ENTRY.size
    return packs


# -- manifests ---------------------------------------------------------------------

def encode_manifest(record: dict) -> bytes:
    return json.dumps({**record, "format": 1}, sort_keys=True).encode()


def decode_manifest(name: str, data: bytes) -> dict:
    try:
        record = json.loads(data)
        bytes.fromhex(record["root"])
        if len(bytes.fromhex(record["root"])) != ID_LEN or record.get("format") != 1:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise RemoteDamaged(f"manifest {name} is damaged (unreadable)") from None
    return record
