"""Content-addressed chunks on a temporary store: reference counts, dedup,
the compression bar, and damage found by the hash (no FUSE)."""

import os

import pytest

from fusevol.errors import StoreDamaged
from fusevol.store import chunks
from fusevol.store.schema import ROOT_INO
from store_damage import rewrite_stored

from .conftest import BS, FILE


def _ref(txn, data, compression="zstd"):
    return chunks.add_ref(txn, data, compression)


def test_add_ref_stores_once_and_counts(store):
    data = os.urandom(5000)
    with store.write() as txn:
        cid = _ref(txn, data)
        assert cid == chunks.chunk_id(data)
        assert _ref(txn, data) == cid
        assert chunks.ref_info(txn, cid) == (2, 5000, 5001)  # codec byte + raw bytes
        chunks.incref(txn, cid)
        assert chunks.ref_info(txn, cid)[0] == 3
    with store.read() as txn:
        assert chunks.totals(txn) == {"chunks": 1, "unique_bytes": 5000, "stored_bytes": 5001}
        assert chunks.read(txn, cid) == data


def test_a_count_moves_with_one_read_of_its_row(store, monkeypatch):
    """Taking a reference to a chunk stored already, or dropping one of
    several, reads the count row once (each LMDB call of the store thread
    lets go of the GIL)."""
    data = os.urandom(5000)
    with store.write() as txn:
        cid = _ref(txn, data)
        reads = []
        real_get = type(txn).get
        monkeypatch.setattr(type(txn), "get",
                            lambda t, table, key: reads.append(table) or real_get(t, table, key))
        assert _ref(txn, data) == cid
        assert reads == ["refs"]
        chunks.decref(txn, cid)
        assert reads == ["refs", "refs"]
        monkeypatch.undo()
        assert chunks.ref_info(txn, cid)[0] == 1
    with store.read() as txn:
        assert chunks.read(txn, cid) == data


def test_decref_deletes_with_the_last_reference(store):
    data = os.urandom(100)
    with store.write() as txn:
        cid = _ref(txn, data)
        _ref(txn, data)
    with store.write() as txn:
        chunks.decref(txn, cid)
        assert chunks.read(txn, cid) == data
        chunks.decref(txn, cid)
        assert not chunks.has(txn, cid) and chunks.stored(txn, cid) is None
        with pytest.raises(StoreDamaged):
            chunks.decref(txn, cid)
        with pytest.raises(StoreDamaged):
            chunks.incref(txn, cid)
    with store.read() as txn:
        assert chunks.totals(txn) == {"chunks": 0, "unique_bytes": 0, "stored_bytes": 0}


def _with_zeros(random_part: int, period: int = 1024, size: int = BS) -> bytes:
    """`size` bytes in which each `period` holds `random_part` random bytes
    then zeros: it compresses to about random_part/period."""
    return b"".join(os.urandom(random_part) + bytes(period - random_part)
                    for _ in range(size // period))


@pytest.mark.parametrize("data, codec", [
    (b"a" * BS, chunks.ZSTD),                   # compresses to almost nothing
    (_with_zeros(700), chunks.ZSTD),            # saves ~30%
    (_with_zeros(940), chunks.RAW),             # saves ~8%: under the 1/8 bar
    (os.urandom(BS), chunks.RAW),
    (b"b" * 1000, chunks.ZSTD),                 # small: tried whole, no probe
    (os.urandom(1000), chunks.RAW),
])
def test_compression_is_kept_only_when_it_saves_an_eighth(store, data, codec):
    payload = chunks.encode(data, "zstd")
    assert payload[0] == codec
    if codec == chunks.ZSTD:
        assert len(payload) - 1 <= len(data) * 7 / 8
    assert chunks.decode(payload) == data
    with store.write() as txn:
        cid = _ref(txn, data)
        assert chunks.stored(txn, cid)[0] == codec
        assert chunks.read(txn, cid) == data


def test_no_compression_when_the_volume_says_none(store):
    assert chunks.encode(b"a" * BS, "none")[0] == chunks.RAW


def test_prepared_blocks_match_what_add_ref_would_store(store):
    data = b"c" * BS
    prepared = chunks.prepare_blocks([(0, data), (1, bytes(BS)), (2, memoryview(data))], "zstd")
    assert prepared[1] is None  # a hole
    assert prepared[0] == prepared[2] == (chunks.chunk_id(data), chunks.encode(data, "zstd"))


def test_a_prepared_raw_block_is_framed_only_when_stored(store):
    # A flush waiting for the store thread holds its blocks once, not twice.
    data = os.urandom(BS)
    prepared = chunks.prepare_blocks([(0, data), (1, memoryview(data))], "zstd")
    assert prepared[0] == prepared[1] == (chunks.chunk_id(data), chunks.KEEP_RAW)
    with store.write() as txn:
        cid = chunks.add_ref(txn, data, "zstd", *prepared[1])
        assert chunks.stored(txn, cid) == chunks.encode(data, "zstd")
        assert chunks.read(txn, cid) == data


def _stored(store, data) -> bytes:
    with store.write() as txn:
        return _ref(txn, data)


def _damage(store, cid: bytes, fn) -> None:
    with store.write() as txn:
        rewrite_stored(txn, chunks, cid, fn)


@pytest.mark.parametrize("data", [os.urandom(4096), b"z" * 4096], ids=["raw", "zstd"])
def test_a_flipped_byte_is_found_by_the_hash(store, data):
    cid = _stored(store, data)

    def flip(payload):
        payload[len(payload) // 2] ^= 0x01

    _damage(store, cid, flip)
    with store.read() as txn, pytest.raises(StoreDamaged, match=cid.hex()):
        chunks.read(txn, cid)


def test_an_unknown_codec_and_a_missing_chunk_are_damage(store):
    cid = _stored(store, os.urandom(100))

    def codec(payload):
        payload[0] = 9

    _damage(store, cid, codec)
    with store.read() as txn:
        with pytest.raises(StoreDamaged):
            chunks.read(txn, cid)
        with pytest.raises(StoreDamaged, match="missing chunk"):
            chunks.read(txn, bytes(32))


def test_damage_reaches_a_file_read_as_an_error(store, inodes):
    data = os.urandom(BS)
    with store.write() as txn:
        f, _ = inodes.create(txn, ROOT_INO, b"f", FILE, 0, 0)
        inodes.write_blocks(txn, f, [(0, data)], BS)

    def truncate(payload):
        del payload[-1]

    _damage(store, chunks.chunk_id(data), truncate)
    with store.read() as txn, pytest.raises(StoreDamaged):
        inodes.read_block(txn, f, 0)


def test_a_chunk_id_is_the_blake3_of_its_bytes_whatever_way_it_is_hashed():
    import blake3
    for size in (0, 1, 2047, 2048, 4094, 4096, 6141, 8192, 8193, 128 * 1024):
        data = os.urandom(size)
        assert chunks.chunk_id(data) == blake3.blake3(data).digest(), size
        assert chunks.chunk_id(memoryview(bytearray(data))) == blake3.blake3(data).digest(), size
