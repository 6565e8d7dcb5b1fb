"""gc and verify on real stores: damage is found and named by path, leaks and wrong
counts are repaired, and nothing that a volume or snapshot reaches is ever deleted."""

import hashlib
import json
import os
import signal
import struct
import time

import blake3
import lmdb

from conftest import needs_fuse, run_cli
from fusevol.fs.mount import worker_of
from fusevol.store import datafiles

BLOCK = 128 * 1024


def df(store: str) -> dict:
    out = json.loads(run_cli(store, "df", "--json").stdout)
    for what in ("store_file_bytes", "store_file_hole_bytes", "overhead", "data_files_bytes", "disk_bytes"):
        out.pop(what)  # the file's pages: what gc keeps equal is what they hold
    return out


def gc(store: str) -> dict:
    return json.loads(run_cli(store, "gc", "--json").stdout)


def verify(store: str) -> tuple[int, dict]:
    proc = run_cli(store, "verify", "--json", check=False)
    return proc.returncode, json.loads(proc.stdout)


def nothing_done(report: dict) -> bool:
    return (report["chunks_freed"], report["objects_freed"], report["orphans_purged"],
            report["counts_fixed"], report["totals_fixed"], report["missing"],
            report["usage_fixed"]) == (0, 0, 0, [], None, [], [])


class RawStore:
    """The store's LMDB environment opened directly, as a manual edit (or a bug) would."""

    def __init__(self, store: str):
        self.env = lmdb.open(os.path.join(store, "db"), max_dbs=32, map_size=1 << 40)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.env.close()

    def db(self, name: str):
        return self.env.open_db(name.encode())

    def get(self, table: str, key: bytes) -> bytes | None:
        with self.env.begin(db=self.db(table)) as txn:
            return txn.get(key)

    def put(self, table: str, key: bytes, value: bytes) -> None:
        with self.env.begin(write=True, db=self.db(table)) as txn:
            txn.put(key, value)


def damage_chunk(store: str, cid: bytes) -> None:
    """Flip bytes in the middle of a stored chunk (same length, other bytes),
    where it is kept: a value of its own, or a data file (a worker's large chunks)."""
    with RawStore(store) as raw:
        row = raw.get("refs", cid)
        if len(row) == struct.calcsize(">QIIQQ"):
            _, _, stored_len, number, offset = struct.unpack(">QIIQQ", row)
            with open(os.path.join(store, "data", f"{number:08d}"), "r+b") as f:
                f.seek(offset + stored_len // 2 + 100)
                part = f.read(10)
                f.seek(-len(part), os.SEEK_CUR)
                f.write(bytes(b ^ 0xFF for b in part))
            return
        value = bytearray(raw.get("chunks", cid))
        for i in range(100, 110):
            value[len(value) // 2 + i] ^= 0xFF
        raw.put("chunks", cid, bytes(value))


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@needs_fuse
def test_verify_names_the_files_a_damaged_chunk_reaches(mounts, store_path):
    mp = mounts.mount("vol")
    os.makedirs(os.path.join(mp, "a", "b"))
    victim = os.urandom(3 * BLOCK)
    write(os.path.join(mp, "a", "b", "victim"), victim)
    write(os.path.join(mp, "fine"), os.urandom(2 * BLOCK))
    run_cli(store_path, "snapshot", "create", "vol@s1")
    run_cli(store_path, "clone", "vol@s1", "copy")
    mounts.umount(mp)

    code, report = verify(store_path)
    assert code == 0 and report["ok"], report
    assert report["chunks"] == 5 and report["snapshots"] == 1 and report["volumes"] == 2

    cid = blake3.blake3(victim[BLOCK:2 * BLOCK]).digest()
    damage_chunk(store_path, cid)

    code, report = verify(store_path)
    assert code == 8 and not report["ok"]
    named = {(p["where"], p["path"]) for p in report["problems"] if p.get("chunk") == cid.hex()}
    assert named == {("volume vol", "a/b/victim"), ("volume copy", "a/b/victim"),
                     ("snapshot vol@s1", "a/b/victim")}, report["problems"]
    assert not any(p["path"] == "fine" for p in report["problems"])
    text = run_cli(store_path, "verify", check=False)
    assert text.returncode == 8
    assert f"volume vol: a/b/victim: chunk {cid.hex()[:16]}... damaged" in text.stdout.decode()


@needs_fuse
def test_gc_on_a_healthy_store_changes_nothing_and_frees_a_deleted_snapshot(mounts, store_path):
    mp = mounts.mount("vol")
    write(os.path.join(mp, "keep"), os.urandom(8 * BLOCK))
    write(os.path.join(mp, "only-in-snapshot"), os.urandom(16 * BLOCK))
    run_cli(store_path, "snapshot", "create", "vol@s1")
    os.unlink(os.path.join(mp, "only-in-snapshot"))
    run_cli(store_path, "snapshot", "create", "vol@s2")  # flushes the mount
    mounts.umount(mp)
    before = df(store_path)
    assert before["unique_bytes"] >= 24 * BLOCK

    assert nothing_done(gc(store_path))
    assert df(store_path) == before
    assert verify(store_path)[0] == 0

    run_cli(store_path, "snapshot", "rm", "vol@s1")
    gc(store_path)
    after = df(store_path)
    assert after["unique_bytes"] <= before["unique_bytes"] - 16 * BLOCK
    assert after["stored_bytes"] <= before["stored_bytes"] - 16 * BLOCK
    assert verify(store_path)[0] == 0
    mp = mounts.mount("vol", create=False)
    assert os.listdir(mp) == ["keep"] and os.path.getsize(os.path.join(mp, "keep")) == 8 * BLOCK


@needs_fuse
def test_gc_repairs_a_leaked_chunk_and_wrong_counts(mounts, store_path):
    mp = mounts.mount("vol")
    content = os.urandom(2 * BLOCK)
    write(os.path.join(mp, "file"), content)
    snap = json.loads(run_cli(store_path, "snapshot", "create", "vol@s1", "--json").stdout)
    mounts.umount(mp)
    before = df(store_path)

    leaked = os.urandom(5000)
    leaked_id = blake3.blake3(leaked).digest()
    first = blake3.blake3(content[:BLOCK]).digest()
    root = bytes.fromhex(snap["root"])
    with RawStore(store_path) as raw:
        raw.put("chunks", leaked_id, b"\0" + leaked)
        raw.put("refs", leaked_id, struct.pack(">QII", 1, len(leaked), len(leaked) + 1))
        row = raw.get("refs", first)  # count, raw and stored length[, where it is]
        count, raw_len, stored_len = struct.unpack(">QII", row[:16])
        assert count == 2  # the volume's block row and the snapshot's file object
        raw.put("refs", first, struct.pack(">QII", 1, raw_len, stored_len) + row[16:])  # too low: would free early
        place = raw.get("orefs", root)[:12]  # where the object is packed: its count is kept there
        root_count = struct.unpack(">Q", raw.get("ocounts", place))[0]
        raw.put("ocounts", place, struct.pack(">Q", root_count + 3))  # too high: would leak

    code, report = verify(store_path)
    assert code == 8
    messages = " | ".join(p["message"] for p in report["problems"])
    assert "counts 1 reference(s), 2 found" in messages and "counts 1 reference(s), 0 found" in messages
    assert all(p["repair"] == "gc" for p in report["problems"])
    said = run_cli(store_path, "verify", check=False).stdout.decode()
    assert said.count("(fusevol gc repairs this)") == len(report["problems"]), said

    report = gc(store_path)
    assert report["chunks_freed"] == 1 and report["objects_freed"] == 0
    assert report["stored_bytes_freed"] == len(leaked) + 1
    assert {"chunk": first.hex(), "was": 1, "now": 2} in report["counts_fixed"]
    assert {"object": root.hex(), "was": root_count + 3, "now": root_count} in report["counts_fixed"]
    with RawStore(store_path) as raw:
        assert raw.get("chunks", leaked_id) is None and raw.get("refs", leaked_id) is None
    assert verify(store_path)[0] == 0
    assert df(store_path) == before
    assert nothing_done(gc(store_path))

    # With the counts right, dropping one holder keeps the data for the other.
    run_cli(store_path, "snapshot", "rm", "vol@s1")
    mp = mounts.mount("vol", create=False)
    with open(os.path.join(mp, "file"), "rb") as f:
        assert f.read() == content


@needs_fuse
def test_gc_purges_orphans_only_of_volumes_no_worker_serves(mounts, store_path):
    dead = mounts.mount("dead")
    live = mounts.mount("live")
    held = []
    for mp in (dead, live):
        f = open(os.path.join(mp, "open-then-deleted"), "wb")
        f.write(os.urandom(8 * BLOCK))
        f.flush()
        os.fsync(f.fileno())
        os.unlink(os.path.join(mp, "open-then-deleted"))
        held.append(f)
    worker = worker_of(store_path, volume="dead")
    os.kill(worker.pid, signal.SIGKILL)  # its open, unlinked file stays behind as an orphan
    deadline = time.time() + 10
    while os.path.exists(f"/proc/{worker.pid}") and time.time() < deadline:
        time.sleep(0.05)
    try:
        held[0].close()
    except OSError:
        pass
    mounts.umount(dead)
    before = df(store_path)

    report = gc(store_path)
    assert report["orphans_purged"] == 1
    assert report["unique_bytes_freed"] == 8 * BLOCK
    after = df(store_path)
    assert after["unique_bytes"] == before["unique_bytes"] - 8 * BLOCK
    assert after["volumes"]["live"] == 8 * BLOCK  # the served volume's open file is kept
    held[1].seek(0)
    with open(f"/proc/self/fd/{held[1].fileno()}", "rb") as f:
        assert len(f.read()) == 8 * BLOCK
    held[1].close()
    assert verify(store_path)[0] == 0


@needs_fuse
def test_removing_a_volume_keeps_what_snapshots_and_clones_reach(mounts, store_path):
    mp = mounts.mount("vol")
    os.mkdir(os.path.join(mp, "dir"))
    files = {"dir/one": os.urandom(3 * BLOCK + 5), "two": os.urandom(BLOCK), "dup": b"z" * BLOCK}
    for name, data in files.items():
        write(os.path.join(mp, name), data)
    run_cli(store_path, "snapshot", "create", "vol@s1")
    mounts.umount(mp)
    before = df(store_path)

    refused = run_cli(store_path, "volume", "rm", "vol", check=False)
    assert refused.returncode == 5 and b"snapshot" in refused.stderr
    assert df(store_path) == before

    run_cli(store_path, "clone", "vol@s1", "copy")
    run_cli(store_path, "snapshot", "rm", "vol@s1")
    run_cli(store_path, "volume", "rm", "vol")
    assert verify(store_path)[0] == 0
    assert nothing_done(gc(store_path))
    mp = mounts.mount("copy", create=False)
    for name, data in files.items():
        assert sha(os.path.join(mp, name)) == hashlib.sha256(data).hexdigest(), name
    mounts.umount(mp)
    after = df(store_path)
    assert after["unique_bytes"] == before["unique_bytes"]
    assert after["volumes"] == {"copy": before["volumes"]["vol"]}


def usage(store: str, volume: str) -> tuple[int, int]:
    out = json.loads(run_cli(store, "volume", "inspect", volume).stdout)
    return out["logical_bytes"], out["inodes"]


@needs_fuse
def test_gc_recounts_the_usage_of_volumes_and_clones(mounts, store_path):
    mp = mounts.mount("vol")
    os.makedirs(os.path.join(mp, "d", "e"))
    write(os.path.join(mp, "d", "e", "f"), os.urandom(3 * BLOCK + 5))
    write(os.path.join(mp, "small"), b"x" * 100)
    os.link(os.path.join(mp, "small"), os.path.join(mp, "d", "second-name"))
    with open(os.path.join(mp, "sparse"), "wb") as f:
        f.seek(10 * BLOCK)
        f.write(b"end")
    run_cli(store_path, "snapshot", "create", "vol@s1")
    run_cli(store_path, "clone", "vol@s1", "copy")  # rows made lazily: counted from its objects
    mounts.umount(mp)
    right = {name: usage(store_path, name) for name in ("vol", "copy")}
    assert right["vol"] == right["copy"] and right["vol"][1] == 6
    assert nothing_done(gc(store_path))  # counted as the operations kept them

    with RawStore(store_path) as raw:
        for name in ("vol", "copy"):
            vid = json.loads(raw.get("volumes", name.encode()))["vid"]
            raw.put("vstats", struct.pack(">Q", vid), struct.pack(">qq", 123, 456))
    report = gc(store_path)
    fixes = {fix["volume"]: fix for fix in report["usage_fixed"]}
    for name in ("vol", "copy"):
        assert fixes[name]["was"] == {"logical_bytes": 123, "inodes": 456}
        assert fixes[name]["now"] == {"logical_bytes": right[name][0], "inodes": right[name][1]}
        assert usage(store_path, name) == right[name]
    assert nothing_done(gc(store_path))


def page_bytes(store: str, tables: tuple) -> int:
    with RawStore(store) as raw:
        dbs = [raw.db(t) for t in tables]
        with raw.env.begin() as txn:
            return sum((st["leaf_pages"] + st["overflow_pages"] + st["branch_pages"]) * st["psize"]
                       for st in (txn.stat(db) for db in dbs))


@needs_fuse
def test_snapshot_ls_shows_what_a_snapshot_alone_holds_on_disk(mounts, store_path):
    mp = mounts.mount("vol")
    for i in range(40):
        write(os.path.join(mp, f"f{i}"), os.urandom(5000))  # incompressible, past a page each
    run_cli(store_path, "snapshot", "create", "vol@s1")
    for i in range(40):
        os.unlink(os.path.join(mp, f"f{i}"))
    mounts.umount(mp)
    (snap,) = json.loads(run_cli(store_path, "snapshot", "ls", "vol", "--json").stdout)
    assert 40 * 5000 <= snap["unique_bytes"] < 40 * 5100  # stored bytes
    tables = ("chunks", "refs", "objects", "orefs", "ocounts", "packs", "packdead")
    before = page_bytes(store_path, tables)
    run_cli(store_path, "snapshot", "rm", "vol@s1")
    freed = before - page_bytes(store_path, tables)
    # The 5 KB chunks are packed: the file pays about 5 KB for each, not the
    # two pages of 4 KiB a value of its own would take.
    assert 40 * 5000 <= freed <= 40 * 6500, freed
    assert freed * 0.9 <= snap["unique_disk_bytes"] <= freed * 1.2, (snap, freed)


def disk_bytes(store: str) -> int:
    """The store file and the data files, on the disk."""
    return os.stat(os.path.join(store, "db", "data.mdb")).st_blocks * 512 + datafiles.disk_bytes(store)


@needs_fuse
def test_gc_on_a_mounted_store_gives_what_it_frees_back_to_the_disk(mounts, store_path):
    """The worker holds the store, so its file cannot be written again: the
    pages gc frees are punched out of it, and every byte stays readable. (Its
    large chunks kept in LMDB, as receive and import keep them.)"""
    mp = mounts.mount("vol", env={"FUSEVOL_DATA_FILES": "0"})
    keep = {f"keep{i}": (b"def f%d(x):\n    return x + %d\n" % (i, i)) * (300 + 40 * i)
            for i in range(30)}
    for name, data in keep.items():
        write(os.path.join(mp, name), data)
    write(os.path.join(mp, "big"), os.urandom(64 * BLOCK))
    run_cli(store_path, "snapshot", "create", "vol@s1")
    os.unlink(os.path.join(mp, "big"))
    run_cli(store_path, "snapshot", "rm", "vol@s1")
    run_cli(store_path, "snapshot", "create", "vol@s2")  # flushes the mount
    before = disk_bytes(store_path)
    report = gc(store_path)
    assert not report["file"]["rewritten"]  # the worker has the store open
    assert disk_bytes(store_path) <= before - 60 * BLOCK
    holes = report["file"]["holes"]
    assert holes["punched"] and holes["free_pages"] >= 64 * BLOCK // 4096
    assert verify(store_path)[0] == 0
    figures = json.loads(run_cli(store_path, "df", "--json").stdout)
    assert figures["disk_bytes"] == disk_bytes(store_path)
    assert figures["store_file_hole_bytes"] >= 60 * BLOCK
    # Every byte reads back; new writes take the punched pages and read back too.
    for name, data in keep.items():
        with open(os.path.join(mp, name), "rb") as f:
            assert f.read() == data
    fresh = os.urandom(32 * BLOCK)
    write(os.path.join(mp, "fresh"), fresh)
    run_cli(store_path, "snapshot", "create", "vol@s3")
    mounts.umount(mp)
    assert verify(store_path)[0] == 0
    mp = mounts.mount("vol", create=False)
    assert sha(os.path.join(mp, "fresh")) == hashlib.sha256(fresh).hexdigest()
    for name, data in keep.items():
        assert sha(os.path.join(mp, name)) == hashlib.sha256(data).hexdigest()


@needs_fuse
def test_gc_punches_what_a_worker_let_go_of_out_of_its_data_file(mounts, store_path):
    """A worker's large chunks are in its data file: once nothing holds them,
    their ranges go back to the disk (the next commits, or gc), and what
    stays reads back."""
    mp = mounts.mount("vol")
    keep = os.urandom(8 * BLOCK)
    write(os.path.join(mp, "keep"), keep)
    write(os.path.join(mp, "big"), os.urandom(64 * BLOCK))
    run_cli(store_path, "snapshot", "create", "vol@s1")  # flushes the mount
    assert datafiles.disk_bytes(store_path) >= 72 * BLOCK
    before = disk_bytes(store_path)
    os.unlink(os.path.join(mp, "big"))
    run_cli(store_path, "snapshot", "rm", "vol@s1")
    run_cli(store_path, "snapshot", "create", "vol@s2")
    report = gc(store_path)
    assert report["data_files"]["files_trimmed"] == report["data_files"]["files_deleted"] == 0
    assert disk_bytes(store_path) <= before - 60 * BLOCK
    assert datafiles.disk_bytes(store_path) < 12 * BLOCK
    figures = json.loads(run_cli(store_path, "df", "--json").stdout)
    assert figures["overhead"]["data_dead_bytes"] == 0
    assert sha(os.path.join(mp, "keep")) == hashlib.sha256(keep).hexdigest()
    mounts.umount(mp)
    assert verify(store_path)[0] == 0
    mp = mounts.mount("vol", create=False)
    assert sha(os.path.join(mp, "keep")) == hashlib.sha256(keep).hexdigest()


@needs_fuse
def test_volume_rm_gives_its_large_chunks_back_to_the_disk_at_once(mounts, store_path):
    mp = mounts.mount("gone")
    write(os.path.join(mp, "big"), os.urandom(64 * BLOCK))
    mounts.umount(mp)
    assert datafiles.disk_bytes(store_path) >= 64 * BLOCK
    run_cli(store_path, "volume", "rm", "gone")
    assert datafiles.disk_bytes(store_path) < 4 * BLOCK
    assert verify(store_path)[0] == 0
