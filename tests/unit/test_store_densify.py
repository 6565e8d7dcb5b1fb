"""gc lays packs out again (densify.py): chunks filling each pack to its last
page's end, tree objects grouped by inode in packs compressed whole (store
format 4); every byte kept, every count with its object, the store read,
snapshotted, diffed, sent and verified after, older stores converted."""

import os
import random

from fusevol.store import Inodes, check, chunks, densify, diff, packs, recompress, schema, snapshots, trees
from store_damage import rewrite_stored

from .conftest import BS as BS_, DIR, FILE
from .test_store_packs import _check_packs, _check_sent, _files, _pages, _root, _text, old_store  # noqa: F401


def _gc(store) -> dict:
    """gc's parts that touch packs, in its order (service/volumes.py)."""
    with store.write() as txn:
        check.gc(txn, set())
    recompress.recompress(store)
    return densify.densify(store)


def _evolve(store, inodes, rng, versions=3, files=150) -> dict[str, dict[bytes, bytes]]:
    """Files in two folders written a few to a transaction (each commit ends
    its last pack where it ends), a snapshot per version, a tenth of the files
    changed in between; what each snapshot holds."""
    held = {}
    with store.write() as txn:
        folders = [inodes.create(txn, schema.ROOT_INO, name, DIR, 0, 0)[0] for name in (b"a", b"b")]
    names = {}
    for version in range(versions):
        picks = range(files) if version == 0 else rng.sample(range(files), files // 10)
        picks = list(picks)
        for k in range(0, len(picks), 7):
            with store.write() as txn:
                for i in picks[k:k + 7]:
                    data = _text(rng, rng.choice([rng.randint(50, 3000), rng.randint(3000, 60_000)]))
                    if i not in names:
                        names[i] = inodes.create(txn, folders[i % 2], b"f%03d" % i, FILE, 0, 0)[0]
                    inodes.write_blocks(txn, names[i], [(0, data)], len(data))
        with store.write() as txn:
            snapshots.create(txn, "vol", f"v{version}")
        with store.read() as txn:
            held[f"v{version}"] = _files(txn, _root(txn, "vol", f"v{version}"))
    return held


def _compressed_packs(store) -> int:
    with store.read() as txn:
        return sum(packs.is_compressed(v) for _, v in txn.scan("packs", b""))


def test_plan_fills_every_pack_but_the_last_to_its_last_page():
    rng = random.Random(3)
    sizes = [packs.HEAD.size + rng.choice([rng.randint(50, 400), rng.randint(400, 9000),
                                           rng.randint(9000, packs.ENTRY_MAX)]) for _ in range(3000)]
    layout = densify.plan(sizes)
    assert sorted(i for group in layout for i in group) == list(range(len(sizes)))
    used = [sum(sizes[i] for i in group) for group in layout]
    assert max(used) <= packs.PACK_MAX
    # The blobs small enough to fill an end run out last: the last few
    # packs of a run end where they can (the last one is laid out again
    # with the next run).
    waste = [packs.room(u) for u in used[:-5]]
    assert max(waste) < 400 and sum(waste) / len(waste) < 40, waste
    # In their order, but for the blobs taken to fill a pack's end.
    firsts = [group[0] for group in layout]
    assert firsts == sorted(firsts)


def test_gc_lays_packs_out_again_denser_and_keeps_every_byte(store, inodes, tmp_path):
    held = _evolve(store, inodes, random.Random(7))
    with store.write() as txn:
        check.gc(txn, set())
    recompress.recompress(store)
    with store.read() as txn:
        totals = chunks.totals(txn)
        objects = trees.counted(txn)
    before = _pages(store, "packs")
    report = densify.densify(store)
    after = _pages(store, "packs")
    assert report["packs_compressed"] >= 1 and report["pages_freed"] == before - after
    assert after <= before - 3, (before, after)
    with store.read() as txn:
        assert chunks.totals(txn) == totals and trees.counted(txn) == objects
        for name, files in held.items():
            assert _files(txn, _root(txn, "vol", name)) == files
        assert check.verify(txn)["ok"]
        squeezed = {schema.read_u64(k) for k, v in txn.scan("packs", b"") if packs.is_compressed(v)}
        inside = [oid for oid, loc in trees.locations(txn) if loc.pack in squeezed]
        assert len(inside) > objects / 2
        for oid in inside:  # kept raw inside a compressed pack
            assert trees.stored(txn, oid)[0] == chunks.RAW
    with store.read(buffers=True) as txn:  # read through views too
        for name, files in held.items():
            assert _files(txn, _root(txn, "vol", name)) == files
        use = packs.file_use(txn)
        assert use["object_bytes"] < trees.stored_total(txn) / 2  # what the disk holds of them
    _check_packs(store)
    # Again: nothing left to do.
    assert densify.densify(store)["packs_rewritten"] <= 2
    # Used after: a change snapshotted (writers start packs of their own),
    # diffed, sent (full and incremental) to another store, older snapshots
    # deleted (the counts moved with their objects).
    with store.write() as txn:
        a = inodes.lookup(txn, schema.ROOT_INO, b"a")
        f = inodes.lookup(txn, a, b"f000")
        inodes.write_blocks(txn, f, [(0, b"after gc\n" * 30)], 270)
        snapshots.create(txn, "vol", "after")
    with store.read() as txn:
        changes = [c.line() for c in diff.diff(txn, _root(txn, "vol", "v2"), _root(txn, "vol", "after"))]
        assert changes == ["M\ta/f000"]
    _check_sent(store, str(tmp_path / "other"), "vol", "v0", "after")
    for name in ("v0", "v1", "v2"):
        with store.write() as txn:
            snapshots.remove(txn, "vol", name)
        with store.read() as txn:
            assert check.verify(txn)["ok"]
    _gc(store)
    with store.read() as txn:
        assert check.verify(txn)["ok"]
        assert _files(txn, _root(txn, "vol", "after"))[b"a/f000"] == b"after gc\n" * 30
    _check_packs(store)


def test_a_pack_with_an_entry_that_cannot_be_told_is_left_as_it_is(store, inodes):
    _evolve(store, inodes, random.Random(9), versions=1, files=40)
    with store.read() as txn:
        victim, loc = next(iter(chunks.locations(txn)))
    with store.write() as txn:
        rewrite_stored(txn, chunks, victim, lambda payload: payload.__setitem__(0, 0x7F))  # no codec
    with store.write() as txn:
        check.gc(txn, set())
    recompress.recompress(store)
    densify.densify(store)
    with store.read() as txn:
        assert chunks.location(txn, victim) == loc  # where verify names it
        problems = check.verify(txn)["problems"]
        assert {p["chunk"] for p in problems if "damaged" in p["message"]} == {victim.hex()}


def test_gc_lays_out_an_older_stores_packs_and_keeps_every_byte(old_store):
    store = old_store
    with store.read() as txn:
        before = {name: _files(txn, _root(txn, "old", name)) for name in ("one", "two")}
        totals = chunks.totals(txn)
    _gc(store)
    # gc leaves the table's last pack to writers (they may append to it):
    # one more pack written, and the next gc takes it in.
    with store.write() as txn:  # (held by nothing: gc lets go of them)
        for _ in range(3):
            chunks.add_ref(txn, os.urandom(50_000))
    _gc(store)
    assert _compressed_packs(store) >= 1
    with store.read() as txn:
        after = chunks.totals(txn)  # (stored at gc's level: fewer stored bytes)
        assert (after["chunks"], after["unique_bytes"]) == (totals["chunks"], totals["unique_bytes"])
        for name in ("one", "two"):
            assert _files(txn, _root(txn, "old", name)) == before[name]
        assert check.verify(txn)["ok"]
    _check_packs(store)
    with store.write() as txn:
        record = snapshots.volumes.get(txn, "old")
        inodes = Inodes(record.vid, store.block_size, record.compression)
        docs = inodes.lookup(txn, schema.ROOT_INO, b"docs")
        inodes.unlink(txn, docs, b"f005")
        snapshots.create(txn, "old", "three")
    with store.read() as txn:
        changes = [c.line() for c in diff.diff(txn, _root(txn, "old", "two"), _root(txn, "old", "three"))]
        assert changes == ["D\tdocs/f005"]
        assert check.verify(txn)["ok"]


def test_gc_packs_chunks_larger_than_a_writer_packs_compressed_again(store, inodes):
    """A compressed chunk of 64-128 KiB is written alone (packs.ENTRY_MAX);
    gc moves it into a pack, where it is compressed again (recompress.py) and
    laid out with the rest: no page of its own, every byte kept."""
    rng = random.Random(3)
    big = [_text(rng, 40_000) + rng.randbytes(BS_ - 40_000) for _ in range(4)]  # ~100 KB as zstd
    small = [rng.randbytes(rng.randint(500, 5000)) for _ in range(60)]  # kept raw
    with store.write() as txn:
        for i, data in enumerate(big + small):
            ino = inodes.create(txn, schema.ROOT_INO, b"f%02d" % i, FILE, 0, 0)[0]
            inodes.write_blocks(txn, ino, [(0, data)], len(data))
        snapshots.create(txn, "vol", "s")
    ids = [chunks.chunk_id(d) for d in big]
    with store.read() as txn:
        alone = {cid: chunks.ref_info(txn, cid)[2] for cid in ids}
        assert all(chunks.location(txn, cid) is None and size > packs.ENTRY_MAX for cid, size in alone.items())
        held = _files(txn, _root(txn, "vol", "s"))
    _gc(store)
    with store.read() as txn:
        assert txn.txn.stat(store.dbs["chunks"])["entries"] == 0
        for cid, size in alone.items():
            assert chunks.location(txn, cid) is not None
            assert packs.ENTRY_MAX < chunks.ref_info(txn, cid)[2] < size  # level 9
        assert _files(txn, _root(txn, "vol", "s")) == held
        assert check.verify(txn)["ok"]



def _gc_pages(path, monkeypatch, tail: bool, seed: int) -> tuple[int, dict]:
    """The evolving folders of _evolve with files of up to 120 KB too, then
    gc's layout in runs of 4 packs (with or without the pass over the packs
    it went through that still end short): the store's pack pages after,
    and what it holds."""
    from fusevol.store import Store, volumes
    if not tail:
        monkeypatch.setattr(densify, "_is_sparse", lambda value: False)
    store = Store.open(str(path))
    try:
        with store.write() as txn:
            record = volumes.create(txn, "vol")
        inodes = Inodes(record.vid, store.block_size, record.compression)
        rng = random.Random(seed)
        held = _evolve(store, inodes, rng, versions=2, files=120)
        with store.write() as txn:  # and large chunks, each kept raw
            for i in range(12):
                data = rng.randbytes(rng.randint(20_000, 64_000))
                ino = inodes.create(txn, schema.ROOT_INO, b"big%02d" % i, FILE, 0, 0)[0]
                inodes.write_blocks(txn, ino, [(0, data)], len(data))
            snapshots.create(txn, "vol", "big")
        with store.write() as txn:
            check.gc(txn, set())
        recompress.recompress(store)
        densify.densify(store, batch=4)
        with store.read() as txn:
            assert check.verify(txn)["ok"]
            assert all(_files(txn, _root(txn, "vol", name)) == files for name, files in held.items())
            held["big"] = _files(txn, _root(txn, "vol", "big"))
        _check_packs(store)
        return _pages(store, "packs"), held
    finally:
        Store._instances.pop(store.path, None)
        store.close()


def test_packs_left_short_of_their_last_page_are_laid_out_together_once_more(tmp_path, monkeypatch):
    """A run of packs is filled only from its own entries: the packs a gc went
    through that still end short are laid out once more, together."""
    with_tail, held = _gc_pages(tmp_path / "a", monkeypatch, True, 3)
    without, held_too = _gc_pages(tmp_path / "b", monkeypatch, False, 3)  # (seed 3: 176 and 178 pages)
    assert held == held_too
    assert with_tail < without, (with_tail, without)
