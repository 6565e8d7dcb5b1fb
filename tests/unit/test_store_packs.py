"""Small chunks and tree objects packed several to an LMDB value (packs.py):
read back byte-exact and checked, damage found, dead space reclaimed, nested
transactions rolled back, and a store of the older format (every blob a value
of its own) opened, used, converted and verified."""

import io
import os
import random
import sys
import tarfile

import pytest
import zstandard

from fusevol.errors import StoreDamaged
from fusevol.store import Inodes, Store, check, chunks, diff, packs, schema, snapshots, stream, trees
from store_damage import rewrite_stored

from .conftest import BS, FILE

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def _text(rng: random.Random, size: int) -> bytes:
    """Compressible bytes, different every time."""
    words = [b"alpha ", b"beta ", b"gamma ", rng.randbytes(4).hex().encode() + b" "]
    out = b"".join(rng.choice(words) for _ in range(size // 5 + 1))
    return out[:size]


def _pages(store, table: str) -> int:
    with store.read() as txn:
        st = txn.txn.stat(txn.store.dbs[table])
    return st["leaf_pages"] + st["branch_pages"] + st["overflow_pages"]


def _check_packs(store) -> None:
    """Every pack holds a live entry, and its dead count is what its rows leave."""
    with store.read() as txn:
        assert packs.miscounted(txn) == []
        live: dict[int, int] = {}
        for owner in (chunks, trees):
            for _, loc in owner.locations(txn):
                live[loc.pack] = live.get(loc.pack, 0) + packs.HEAD.size + loc.length
        dead = packs.dead_bytes(txn)
        for key, value in txn.scan("packs", b""):
            number = schema.read_u64(key)
            assert number in live, f"pack {number} holds nothing live"
            assert packs.content_size(value) - live[number] == dead.get(number, 0), number
        assert set(dead) <= set(live)


def test_small_chunks_share_packs_and_read_back_checked(store):
    rng = random.Random(1)
    blobs = [_text(rng, rng.randint(10, 60_000)) for _ in range(60)] + [os.urandom(5000)]
    with store.write() as txn:
        ids = [chunks.add_ref(txn, b) for b in blobs]
        for cid, b in zip(ids, blobs):  # read in the transaction that wrote them
            assert chunks.read(txn, cid) == b
    with store.read() as txn:
        locs = [chunks.location(txn, cid) for cid in ids]
        assert all(loc is not None for loc in locs)
        assert len({loc.pack for loc in locs}) < len(ids) / 5  # several to a pack
        stored = chunks.totals(txn)["stored_bytes"]
    for buffers in (False, True):
        with store.read(buffers=buffers) as txn:
            for cid, b in zip(ids, blobs):
                assert chunks.read(txn, cid) == b
                assert chunks.stored(txn, cid) == chunks.encode(b, "zstd")
    # The file pays the stored bytes, not a page or two per chunk.
    assert _pages(store, "packs") * 4096 <= stored * 1.05 + 4096 * len({loc.pack for loc in locs})
    _check_packs(store)


@pytest.mark.parametrize("nested", [False, True])
def test_packs_fill_their_last_page_with_blobs_that_fit(store, nested):
    """LMDB gives each pack whole pages: a pack that could not take the next
    blob takes later ones that fit before its last page's end."""
    rng = random.Random(5)
    blobs = [os.urandom(rng.randint(100, 6000)) for _ in range(1500)]  # kept raw
    with store.write() as txn:
        if nested:  # a worker's batch: each flush a nested transaction
            ids = []
            for k in range(0, len(blobs), 50):
                with store.nested(txn) as child:
                    ids += [chunks.add_ref(child, b) for b in blobs[k:k + 50]]
            with pytest.raises(RuntimeError), store.nested(txn) as child:
                chunks.add_ref(child, os.urandom(3000))
                raise RuntimeError  # a failed flush: its blob goes with it
        else:
            ids = [chunks.add_ref(txn, b) for b in blobs]
    with store.read() as txn:
        for cid, b in zip(ids, blobs):
            assert chunks.read(txn, cid) == b
        sizes = [len(v) for _, v in txn.scan("packs", b"")]
    assert len(sizes) > 30
    waste = [-(-(16 + n) // 4096) * 4096 - 16 - n for n in sizes[:-3]]  # the last ones may still fill
    assert sum(waste) / len(waste) < 300, waste
    _check_packs(store)


def test_blobs_packed_together_go_where_one_by_one_they_would(tmp_path):
    """add_many (a snapshot's objects) places each blob where add would,
    the packs filling their last pages alike, and every pack written alike."""
    rng = random.Random(7)
    blobs = [rng.randbytes(rng.choice([rng.randint(20, 300), rng.randint(300, 9000)])) for _ in range(2000)]
    found = []
    for many in (False, True):
        store = Store.open(str(tmp_path / str(many)))
        try:
            with store.write() as txn:
                packs.add(txn, packs.OBJECT, b"O" * 40_000)  # a pack already partly full
                if many:
                    locs = packs.add_many(txn, packs.OBJECT, blobs[:1000]) + packs.add_many(txn, packs.OBJECT, blobs[1000:])
                else:
                    locs = [packs.add(txn, packs.OBJECT, b) for b in blobs]
            with store.read() as txn:
                assert [bytes(packs.view(txn, loc)) for loc in locs] == blobs
                found.append((locs, [(bytes(k), bytes(v)) for k, v in txn.scan("packs", b"")]))
        finally:
            Store._instances.pop(store.path, None)
            store.close()
    assert found[0] == found[1]
    assert len({loc.pack for loc in found[0][0]}) > 20


def test_a_chunk_too_large_for_a_pack_is_a_value_of_its_own(store):
    data = os.urandom(BS)
    with store.write() as txn:
        cid = chunks.add_ref(txn, data)
        assert chunks.location(txn, cid) is None
    with store.read(buffers=True) as txn:
        assert chunks.read(txn, cid) == data


def test_a_damaged_packed_chunk_is_found_by_read_and_verify(store):
    neighbour, victim = b"n" * 3000, os.urandom(3000)
    with store.write() as txn:
        keep = chunks.add_ref(txn, neighbour)
        cid = chunks.add_ref(txn, victim)
        assert chunks.location(txn, cid).pack == chunks.location(txn, keep).pack

    def flip(payload):
        payload[100] ^= 0x01

    with store.write() as txn:
        rewrite_stored(txn, chunks, cid, flip)
    with store.read() as txn, pytest.raises(StoreDamaged, match=cid.hex()):
        chunks.read(txn, cid)
    with store.read() as txn:
        assert chunks.read(txn, keep) == neighbour
        report = check.verify(txn)
    assert not report["ok"]  # (the two chunks count a reference no block holds: not the point)
    damaged = [p for p in report["problems"] if "damaged" in p["message"]]
    assert [p["chunk"] for p in damaged] == [cid.hex()]


def test_a_pack_all_dead_goes_and_one_mostly_dead_is_rewritten(store):
    rng = random.Random(2)
    with store.write() as txn:  # stored raw: 6 to a pack
        first = [chunks.add_ref(txn, rng.randbytes(20_000)) for _ in range(12)]
    with store.read() as txn:
        numbers = sorted({chunks.location(txn, c).pack for c in first})
    assert len(numbers) >= 2
    with store.write() as txn:  # every chunk of the first pack, and most of the second
        in_first = [c for c in first if chunks.location(txn, c).pack == numbers[0]]
        in_second = [c for c in first if chunks.location(txn, c).pack == numbers[1]]
        for cid in in_first + in_second[:-1]:
            chunks.decref(txn, cid)
    with store.read() as txn:
        assert numbers[0] not in packs.numbers(txn)  # deleted
        assert numbers[1] not in packs.numbers(txn)  # rewritten: its last chunk moved
        assert chunks.location(txn, in_second[-1]).pack not in numbers[:2]
        assert chunks.read(txn, in_second[-1])
    _check_packs(store)


def test_gc_reclaims_a_packs_dead_space(store, inodes):
    rng = random.Random(3)
    with store.write() as txn:
        files = []
        for i in range(10):
            ino, _ = inodes.create(txn, 1, b"f%d" % i, FILE, 0, 0)
            inodes.write_blocks(txn, ino, [(0, rng.randbytes(8000))], 8000)
            files.append(ino)
    with store.write() as txn:  # less than half of the pack dies: it stays as it is
        for ino in files[:3]:
            inodes.setattr(txn, ino, size=0)
    with store.read() as txn:
        assert sum(packs.dead_bytes(txn).values()) == 3 * (packs.HEAD.size + 8001)
        size_before = packs.stats(txn)["pack_bytes"]
    with store.write() as txn:
        report = check.gc(txn, set())
    assert report["chunks_freed"] == 0
    assert report["packs"]["packs_rewritten"] == 1
    assert report["packs"]["dead_bytes_freed"] == 3 * (packs.HEAD.size + 8001)
    with store.read() as txn:
        assert packs.dead_bytes(txn) == {}
        assert packs.stats(txn)["pack_bytes"] == size_before - report["packs"]["dead_bytes_freed"]
        for ino in files[3:]:
            assert len(inodes.read_block(txn, ino, 0)) == 8000
        assert check.verify(txn)["ok"]
    _check_packs(store)


def test_verify_names_a_pack_whose_dead_count_is_wrong_and_gc_repairs_it(store, inodes):
    with store.write() as txn:
        ino, _ = inodes.create(txn, 1, b"f", FILE, 0, 0)
        inodes.write_blocks(txn, ino, [(0, b"x" * 3000)], 3000)
        number = chunks.location(txn, chunks.chunk_id(b"x" * 3000)).pack
        txn.put("packdead", schema.u64(number), schema.u64(7))
    with store.read() as txn:
        report = check.verify(txn)
    assert [(p["message"], p["repair"]) for p in report["problems"]] == [
        (f"pack {number} counts 7 dead byte(s), 0 found", "gc")]
    with store.write() as txn:
        check.gc(txn, set())
    with store.read() as txn:
        assert check.verify(txn)["ok"]


def test_verify_names_object_counts_lost_or_left_by_place_and_gc_repairs_them(store, inodes):
    with store.write() as txn:
        ino, _ = inodes.create(txn, 1, b"f", FILE, 0, 0)
        inodes.write_blocks(txn, ino, [(0, b"y" * 3000)], 3000)
        snapshots.create(txn, "vol", "s")
    with store.write() as txn:
        root = _root(txn, "vol", "s")
        place = bytes(txn.get("orefs", root))[:12]  # a packed object's row begins with its place
        assert txn.get("ocounts", place) is not None
        txn.delete("ocounts", place)  # its count lost
        txn.put("ocounts", schema.u64(999) + bytes(4), schema.u64(1))  # a count of nothing
    with store.read() as txn:
        messages = [p["message"] for p in check.verify(txn)["problems"]]
    assert any("counts 0 reference(s), 2 found" in m for m in messages), messages  # the snapshot, the live row
    assert any("belongs to no object" in m for m in messages), messages
    with store.write() as txn:
        check.gc(txn, set())
    with store.read() as txn:
        assert check.verify(txn)["ok"]
        assert trees._count(txn, root) == 2


def test_a_nested_transaction_that_fails_takes_its_blobs_with_it(store):
    with store.write() as txn:
        kept = chunks.add_ref(txn, b"kept" * 100)
        with pytest.raises(RuntimeError), store.nested(txn) as child:
            dropped = chunks.add_ref(child, b"dropped" * 100)
            raise RuntimeError
        after = chunks.add_ref(txn, b"after" * 100)
        assert not chunks.has(txn, dropped)
    with store.read() as txn:
        assert chunks.read(txn, kept) == b"kept" * 100 and chunks.read(txn, after) == b"after" * 100
        loc = chunks.location(txn, after)
        assert loc.offset == chunks.location(txn, kept).offset + len(chunks.stored(txn, kept)) + packs.HEAD.size
    _check_packs(store)


@pytest.mark.parametrize("seed", [int(os.environ.get("FUSEVOL_PACKS_SEED", 4)), 5, 6])
def test_random_adds_and_drops_keep_every_chunk(store, seed):
    """Against a model: chunks added, referenced and let go of in random
    transactions (some nested ones failing), each checked after each commit."""
    rng = random.Random(seed)
    model: dict[bytes, list] = {}  # id -> [data, count]
    for _ in range(80):
        drops_only = rng.random() < 0.25  # a transaction that adds nothing rewrites too
        with store.write() as txn:
            for _ in range(rng.randint(1, 12)):
                if rng.random() < 0.3:  # on the root transaction: full packs are written at once
                    changes = _random_change(txn, rng, model, drops_only)
                    _apply(txn, rng, model, changes)
                    continue
                fail = rng.random() < 0.2
                try:
                    with store.nested(txn) as child:
                        changes = _random_change(child, rng, model, drops_only)
                        if fail:
                            raise RuntimeError
                except RuntimeError:
                    continue
                _apply(txn, rng, model, changes)
        with store.read() as txn:
            for cid, (data, count) in model.items():
                assert chunks.ref_info(txn, cid)[0] == count
                assert chunks.read(txn, cid) == data
            assert chunks.totals(txn)["chunks"] == len(model)
        _check_packs(store)
    with store.read() as txn:
        report = check.verify(txn)
        assert report["problems"] == [p for p in report["problems"] if "reference(s)" in p["message"]]


def _apply(txn, rng: random.Random, model: dict, changes: list) -> None:
    """Note the changes in the model, and read a few chunks back in the
    transaction that is still adding to its packs."""
    for cid, data, delta in changes:
        model.setdefault(cid, [data, 0])[1] += delta
        if model[cid][1] == 0:
            del model[cid]
    for cid in rng.sample(sorted(model), min(3, len(model))):
        assert chunks.read(txn, cid) == model[cid][0]


def _random_change(txn, rng: random.Random, model: dict, drops_only: bool) -> list:
    choice = 1.0 if drops_only else rng.random()
    if choice < 0.5 or not model:
        size = rng.choice([rng.randint(1, 2000), rng.randint(2000, 40_000), rng.randint(60_000, BS)])
        data = _text(rng, size) if rng.random() < 0.8 else rng.randbytes(size)
        return [(chunks.add_ref(txn, data), data, 1)]
    cid = rng.choice(sorted(model))
    if choice < 0.65:
        chunks.incref(txn, cid)
        return [(cid, model[cid][0], 1)]
    chunks.decref(txn, cid)
    return [(cid, model[cid][0], -1)]


# -- a store of format 1 ------------------------------------------------------

sys.path.insert(0, DATA)
from make_format1_store import content  # noqa: E402  (what each of its files holds)


@pytest.fixture(params=[1, 2, 3])
def old_store(request, tmp_path):
    """The store tests/data/make_format1_store.py wrote with fusevol of format 1
    (every blob alone), of format 2 (packed objects' counts in their rows), or
    of format 3 (every pack plain)."""
    with open(os.path.join(DATA, f"format{request.param}-store.tar.zst"), "rb") as f:
        tar = zstandard.ZstdDecompressor().stream_reader(f).read()
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(tmp_path / "old")
    store = Store.open(str(tmp_path / "old"))
    store.written_by = request.param
    yield store
    Store._instances.pop(store.path, None)
    store.close()


def _expected(snapshot: str) -> dict[bytes, bytes]:
    rng = random.Random(1)
    out = {}
    for i in range(200):
        out[(b"docs/" if i % 2 else b"wide/") + b"f%03d" % i] = content(rng, i)
    if snapshot != "one":
        out[b"docs/f001"] = b"changed after one\n" * 10
        del out[b"docs/f003"]
    return out


def _files(txn, root: bytes) -> dict[bytes, bytes]:
    out = {}
    for path, _, obj in trees.walk(txn, root):
        if obj.kind == trees.FILE:
            data = b"".join(chunks.read(txn, cid) for _, cid in sorted(obj.blocks))
            out[path] = data[:obj.inode.size]
    return out


def _check_sent(store: Store, other_path: str, volume: str, first: str, second: str) -> None:
    """Snapshot `first` sent whole and then `second` on top of it into a new
    store: the same files there, and that store verifies."""
    other = Store.open(other_path)
    try:
        for base, name in ((None, first), ((volume, first), second)):
            buf = io.BytesIO()
            stream.send(store, volume, name, buf, base=base)
            buf.seek(0)
            stream.receive(other, "copy", buf)
        with other.read() as txn, store.read() as ours:
            assert _files(txn, _root(txn, "copy", second)) == _files(ours, _root(ours, volume, second))
            assert check.verify(txn)["ok"]
    finally:
        Store._instances.pop(other.path, None)
        other.close()


def _root(txn, volume: str, name: str) -> bytes:
    return bytes.fromhex(snapshots.get(txn, volume, name).root)


def _object_rows(txn) -> dict[int, int]:
    """The length of objects' count rows -> how many have it (the form of each)."""
    out: dict[int, int] = {}
    for _, raw in txn.scan("orefs", b""):
        out[len(raw)] = out.get(len(raw), 0) + 1
    return out


def test_an_older_store_opens_snapshots_diffs_sends_and_verifies(old_store, tmp_path):
    store = old_store
    with store.read() as txn:
        assert schema.read_u64(txn.get("meta", b"format")) == schema.FORMAT_VERSION  # marked at open
        if store.written_by == 1:
            assert txn.txn.stat(store.dbs["chunks"])["entries"] > 100  # every chunk alone, as written
            assert packs.numbers(txn) == []
        elif store.written_by == 2:  # packed objects with their counts in their rows, as written
            assert _object_rows(txn) == {24: trees.counted(txn)}
        else:  # counts by place, every pack plain
            assert _object_rows(txn) == {16: trees.counted(txn)}
            assert not any(packs.is_compressed(v) for _, v in txn.scan("packs", b""))
        for name in ("one", "two"):
            assert _files(txn, _root(txn, "old", name)) == _expected(name)
        assert check.verify(txn)["ok"]
    # Changed and snapshotted by this fusevol: new blobs packed beside the old ones.
    with store.write() as txn:
        record = snapshots.volumes.get(txn, "old")
        inodes = Inodes(record.vid, store.block_size, record.compression)
        docs = inodes.lookup(txn, schema.ROOT_INO, b"docs")
        ino, _ = inodes.create(txn, docs, b"new", FILE, 0, 0)
        inodes.write_blocks(txn, ino, [(0, b"new in format 2\n" * 50)], 800)
        snapshots.create(txn, "old", "three")
    with store.read() as txn:
        changes = [c.line() for c in diff.diff(txn, _root(txn, "old", "one"), _root(txn, "old", "three"))]
        assert changes == ["M\tdocs/f001", "D\tdocs/f003", "A\tdocs/new"]
        assert packs.numbers(txn) != []
        assert 16 in _object_rows(txn)  # new objects: counts by their place
        assert check.verify(txn)["ok"]
    # Sent (full, then incremental) into a new store: equal trees there.
    _check_sent(store, str(tmp_path / "other"), "old", "one", "three")
    # Snapshots deleted, new first: the counts of both forms fall to nothing.
    for name in ("three", "two"):
        with store.write() as txn:
            snapshots.remove(txn, "old", name)
        with store.read() as txn:
            assert check.verify(txn)["ok"]
            assert _files(txn, _root(txn, "old", "one")) == _expected("one")


def test_gc_packs_what_an_older_store_kept_alone_and_keeps_every_byte(old_store):
    store = old_store
    with store.read() as txn:
        before = {name: _files(txn, _root(txn, "old", name)) for name in ("one", "two")}
        totals = chunks.totals(txn)
    with store.write() as txn:
        report = check.gc(txn, set())
    assert report["packs"]["blobs_packed"] > (300 if store.written_by == 1 else -1)
    with store.read() as txn:
        assert txn.txn.stat(store.dbs["chunks"])["entries"] == 1  # the random block, too large for a pack
        assert txn.txn.stat(store.dbs["objects"])["entries"] == 0
        assert chunks.totals(txn) == totals
        for name in ("one", "two"):
            assert _files(txn, _root(txn, "old", name)) == before[name] == _expected(name)
        assert check.verify(txn)["ok"]
    _check_packs(store)
    # Every pack moved (as gc moves one with dead entries): each object's
    # count goes with it, into its new place.
    with store.read() as txn:
        numbers = packs.numbers(txn)
    for number in numbers:  # each in a transaction of its own: none is the open pack
        with store.write() as txn:
            assert packs.rewrite(txn, number)
    with store.read() as txn:
        assert _object_rows(txn) == {16: trees.counted(txn)}
        for name in ("one", "two"):
            assert _files(txn, _root(txn, "old", name)) == _expected(name)
        assert check.verify(txn)["ok"]
