"""Snapshots, clones, rollback and diff through the CLI on real mounts."""

import json
import os
import subprocess

from conftest import needs_fuse, run_cli
from fusevol.store import Store


def cli_json(store: str, *args):
    return json.loads(run_cli(store, *args, "--json").stdout)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def table_entries(store_path: str, table: str) -> int:
    with Store.open(store_path).read() as txn:
        return txn.txn.stat(txn.store.dbs[table])["entries"]


def stored_objects(store_path: str) -> int:
    """Tree objects the store holds (packed or not, each has its count row)."""
    return table_entries(store_path, "orefs")


@needs_fuse
def test_snapshot_of_mounted_volume_holds_unsynced_writes(mounts, store_path):
    mp = mounts.mount("live")
    f = open(os.path.join(mp, "open-file"), "wb")
    f.write(b"written, not closed, not fsynced")
    f.flush()  # in the kernel's cache only
    try:
        run_cli(store_path, "snapshot", "create", "live@s1")
        run_cli(store_path, "clone", "live@s1", "copy")
        copy = mounts.mount("copy", create=False)
        assert read(os.path.join(copy, "open-file")) == b"written, not closed, not fsynced"
    finally:
        f.close()


@needs_fuse
def test_a_mounted_volume_is_snapshot_by_its_worker_with_the_same_answers(mounts, store_path):
    mp = mounts.mount("live")
    write(os.path.join(mp, "f"), b"one")
    made = cli_json(store_path, "snapshot", "create", "live@s1")
    assert (made["volume"], made["name"], made["inodes"], made["logical_bytes"]) == ("live", "s1", 2, 3)
    write(os.path.join(mp, "f"), b"two")
    named = run_cli(store_path, "snapshot", "create", "live").stdout.decode().strip()
    assert named.startswith("live@") and named != "live@s1"
    assert run_cli(store_path, "diff", "live@s1", named).stdout.decode().split() == ["M", "f"]
    dup = run_cli(store_path, "snapshot", "create", "live@s1", check=False)
    assert dup.returncode == 3 and dup.stderr == b"fusevol: snapshot live@s1 already exists\n"
    listed = [s["name"] for s in cli_json(store_path, "snapshot", "ls", "live")]
    assert listed == ["s1", named.partition("@")[2]]


@needs_fuse
def test_a_mounted_volumes_snapshot_loads_no_store_code_in_the_cli(mounts, store_path):
    """The worker takes it: the command needs the registry and the names, not
    the store, nor the records and their dataclasses (most of its start)."""
    import sys

    mp = mounts.mount("live")
    write(os.path.join(mp, "f"), b"one")
    heavy = ("lmdb", "dataclasses", "fusevol.records", "fusevol.store.env", "fusevol.store.snapshots")
    script = ("import sys\n"
              "from fusevol.cli.entry import main\n"
              "try:\n"
              "    main(['--store', sys.argv[1], 'snapshot', 'create', 'live@s'])\n"
              "except SystemExit as e:\n"
              "    assert not e.code, e.code\n"
              f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
              "assert not loaded, loaded\n")
    proc = subprocess.run([sys.executable, "-c", script, store_path], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"live@s\n"
    assert run_cli(store_path, "diff", "live@s", "live").stdout == b""


@needs_fuse
def test_a_snapshot_after_the_worker_was_killed_holds_what_was_fsynced(mounts, store_path):
    import signal
    import time

    from fusevol.fs import registry

    mp = mounts.mount("live")
    with open(os.path.join(mp, "f"), "wb") as f:
        f.write(b"fsynced before the kill")
        f.flush()
        os.fsync(f.fileno())
    os.kill(registry.worker_of(store_path, volume="live").pid, signal.SIGKILL)
    # At once: the worker may still look alive (its mount answers ENOTCONN); a
    # clear error then, never a traceback. Once it is gone, the snapshot is taken.
    for _ in range(100):
        proc = run_cli(store_path, "snapshot", "create", "live@after", check=False)
        if proc.returncode == 0:
            break
        assert proc.returncode == 1 and b"Traceback" not in proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        time.sleep(0.1)
    assert proc.returncode == 0, proc.stderr
    mounts.active.remove(mp)
    subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
    run_cli(store_path, "clone", "live@after", "copy")
    assert read(os.path.join(mounts.mount("copy", create=False), "f")) == b"fsynced before the kill"


@needs_fuse
def test_clone_and_source_change_independently(mounts, store_path):
    mp = mounts.mount("src")
    write(os.path.join(mp, "a", "file"), b"original")
    os.symlink("a/file", os.path.join(mp, "link"))
    run_cli(store_path, "snapshot", "create", "src@base")
    write(os.path.join(mp, "a", "file"), b"changed in source")

    run_cli(store_path, "clone", "src@base", "dst")
    dst = mounts.mount("dst", create=False)
    assert read(os.path.join(dst, "a", "file")) == b"original"
    assert os.readlink(os.path.join(dst, "link")) == "a/file"
    write(os.path.join(dst, "a", "file"), b"changed in clone")
    write(os.path.join(dst, "new"), b"only in clone")

    assert read(os.path.join(mp, "a", "file")) == b"changed in source"
    assert not os.path.exists(os.path.join(mp, "new"))
    # The snapshot itself is untouched by both.
    run_cli(store_path, "clone", "src@base", "third")
    third = mounts.mount("third", create=False)
    assert read(os.path.join(third, "a", "file")) == b"original"
    assert sorted(os.listdir(third)) == ["a", "link"]


@needs_fuse
def test_rollback_refuses_while_mounted_and_restores_after(mounts, store_path):
    mp = mounts.mount("rb")
    write(os.path.join(mp, "keep"), b"v1")
    run_cli(store_path, "snapshot", "create", "rb@one")
    write(os.path.join(mp, "keep"), b"v2")
    write(os.path.join(mp, "extra"), b"x" * 300_000)
    ino_before = os.stat(os.path.join(mp, "keep")).st_ino

    refused = run_cli(store_path, "rollback", "rb@one", check=False)
    assert refused.returncode != 0 and b"mounted" in refused.stderr

    mounts.umount(mp)
    run_cli(store_path, "rollback", "rb@one")
    mp = mounts.mount("rb", create=False)
    assert read(os.path.join(mp, "keep")) == b"v1"
    assert not os.path.exists(os.path.join(mp, "extra"))
    assert os.stat(os.path.join(mp, "keep")).st_ino == ino_before  # inode numbers are kept
    info = json.loads(run_cli(store_path, "volume", "inspect", "rb").stdout)
    assert info["logical_bytes"] == 2


@needs_fuse
def test_diff_names_added_removed_modified_and_renamed(mounts, store_path):
    mp = mounts.mount("dv")
    write(os.path.join(mp, "same"), b"unchanged")
    write(os.path.join(mp, "mod"), b"before")
    write(os.path.join(mp, "gone"), b"to be deleted")
    write(os.path.join(mp, "old-name"), b"content that moves")
    run_cli(store_path, "snapshot", "create", "dv@a")
    write(os.path.join(mp, "mod"), b"after")
    os.unlink(os.path.join(mp, "gone"))
    os.mkdir(os.path.join(mp, "dir-new"))
    os.rename(os.path.join(mp, "old-name"), os.path.join(mp, "dir-new", "new-name"))
    write(os.path.join(mp, "added"), b"fresh")
    run_cli(store_path, "snapshot", "create", "dv@b")

    expected = ["A\tadded", "A\tdir-new/", "D\tgone", "M\tmod", "R\told-name\tdir-new/new-name"]
    lines = run_cli(store_path, "diff", "dv@a", "dv@b").stdout.decode().splitlines()
    assert sorted(lines) == sorted(expected)
    # Against the live volume (no second snapshot needed), and as JSON.
    write(os.path.join(mp, "later"), b"after b")
    rows = cli_json(store_path, "diff", "dv@b", "dv")
    assert rows == [{"status": "A", "path": "later"}]
    assert run_cli(store_path, "diff", "dv@b", "dv@b").stdout == b""


@needs_fuse
def test_hardlinks_in_a_clone_change_under_every_name(mounts, store_path):
    mp = mounts.mount("hl")
    write(os.path.join(mp, "one", "file"), b"shared")
    os.makedirs(os.path.join(mp, "two"))
    os.link(os.path.join(mp, "one", "file"), os.path.join(mp, "two", "link"))
    run_cli(store_path, "snapshot", "create", "hl@s")
    run_cli(store_path, "clone", "hl@s", "hlc")
    clone = mounts.mount("hlc", create=False)
    a, b = os.path.join(clone, "one", "file"), os.path.join(clone, "two", "link")
    assert os.stat(a).st_ino == os.stat(b).st_ino and os.stat(a).st_nlink == 2
    with open(b, "ab") as f:  # through the second name only
        f.write(b" and changed")
    assert read(a) == b"shared and changed"
    run_cli(store_path, "snapshot", "create", "hlc@after")
    lines = run_cli(store_path, "diff", "hl@s", "hlc@after").stdout.decode().splitlines()
    assert sorted(lines) == ["M\tone/file", "M\ttwo/link"]


@needs_fuse
def test_a_second_snapshot_writes_only_what_changed(mounts, store_path):
    mp = mounts.mount("big")
    for d in range(20):
        os.makedirs(os.path.join(mp, f"d{d}"))
        for i in range(50):
            write(os.path.join(mp, f"d{d}", f"f{i}"), b"%d/%d" % (d, i))
    run_cli(store_path, "snapshot", "create", "big@first")
    objects_after_first = stored_objects(store_path)
    assert objects_after_first >= 1000 + 20 + 1

    write(os.path.join(mp, "d7", "f42"), b"changed")
    run_cli(store_path, "snapshot", "create", "big@second")
    # The file, its directory and the root: nothing of the 999 unchanged files.
    assert stored_objects(store_path) - objects_after_first == 3


@needs_fuse
def test_clone_copies_nothing_up_front(mounts, store_path):
    mp = mounts.mount("wide")
    for i in range(500):
        write(os.path.join(mp, "dir", f"f{i}"), os.urandom(64))
    run_cli(store_path, "snapshot", "create", "wide@s")
    mounts.umount(mp)
    inode_rows = table_entries(store_path, "inodes")
    block_rows = table_entries(store_path, "blocks")
    run_cli(store_path, "clone", "wide@s", "wide2")
    assert table_entries(store_path, "inodes") == inode_rows + 1  # its root only
    assert table_entries(store_path, "blocks") == block_rows
    clone = mounts.mount("wide2", create=False)
    assert len(os.listdir(os.path.join(clone, "dir"))) == 500


@needs_fuse
def test_deleting_the_last_holder_frees_the_data(mounts, store_path):
    mp = mounts.mount("space")
    write(os.path.join(mp, "blob"), os.urandom(4 << 20))
    run_cli(store_path, "snapshot", "create", "space@s")
    os.unlink(os.path.join(mp, "blob"))
    mounts.umount(mp)
    held = cli_json(store_path, "df")["unique_bytes"]
    assert held >= 4 << 20  # the snapshot still holds it
    snaps = cli_json(store_path, "snapshot", "ls", "space")
    assert snaps[0]["unique_bytes"] >= 4 << 20

    refused = run_cli(store_path, "volume", "rm", "space", check=False)
    assert refused.returncode != 0 and b"snapshot" in refused.stderr

    run_cli(store_path, "snapshot", "rm", "space@s")
    assert cli_json(store_path, "df")["unique_bytes"] < 64 * 1024
    assert stored_objects(store_path) <= 1  # only the live root's, if any
    run_cli(store_path, "volume", "rm", "space")
    with Store.open(store_path).read() as txn:
        for table in ("chunks", "refs", "objects", "orefs", "ocounts", "packs"):
            assert txn.txn.stat(txn.store.dbs[table])["entries"] == 0, table


def test_snapshot_errors_are_clear(store_path):
    run_cli(store_path, "volume", "create", "e1")
    cases = [
        (["snapshot", "create", "nosuch@x"], b"no such volume"),
        (["snapshot", "rm", "e1@missing"], b"no such snapshot"),
        (["snapshot", "rm", "e1"], b"names no snapshot"),
        (["clone", "e1@missing", "e2"], b"no such snapshot"),
        (["snapshot", "create", "e1@bad/name"], b"invalid snapshot name"),
    ]
    for args, message in cases:
        proc = run_cli(store_path, *args, check=False)
        assert proc.returncode != 0, args
        assert message in proc.stderr, (args, proc.stderr)
        assert b"Traceback" not in proc.stderr
    run_cli(store_path, "snapshot", "create", "e1@dup")
    dup = run_cli(store_path, "snapshot", "create", "e1@dup", check=False)
    assert dup.returncode != 0 and b"already exists" in dup.stderr


@needs_fuse
def test_volume_create_from_snapshot_option(mounts, store_path):
    mp = mounts.mount("origin")
    write(os.path.join(mp, "f"), b"from the snapshot")
    run_cli(store_path, "snapshot", "create", "origin@s")
    run_cli(store_path, "volume", "create", "made", "-o", "from-snapshot=origin@s")
    made = mounts.mount("made", create=False)
    assert read(os.path.join(made, "f")) == b"from the snapshot"
    info = json.loads(run_cli(store_path, "volume", "inspect", "made").stdout)
    assert info["options"]["from-snapshot"] == "origin@s"
    bad = run_cli(store_path, "volume", "create", "bad", "-o", "from-snapshot=origin", check=False)
    assert bad.returncode != 0 and b"VOLUME@SNAPSHOT" in bad.stderr
    missing = run_cli(store_path, "volume", "create", "bad", "-o", "from-snapshot=origin@nope", check=False)
    assert missing.returncode != 0 and b"no such snapshot" in missing.stderr
    assert run_cli(store_path, "volume", "inspect", "bad", check=False).returncode != 0


@needs_fuse
def test_forced_rollback_of_a_mounted_volume(mounts, store_path):
    mp = mounts.mount("frb")
    write(os.path.join(mp, "f"), b"snapshotted")
    run_cli(store_path, "snapshot", "create", "frb@s")
    with open(os.path.join(mp, "f"), "wb") as f:
        f.write(b"written after, never synced")
        # A file open on the mount: the unmount --force needs is refused, nothing changes.
        busy = run_cli(store_path, "rollback", "--force", "frb@s", check=False)
        assert busy.returncode != 0 and b"cannot unmount" in busy.stderr
    assert read(os.path.join(mp, "f")) == b"written after, never synced"

    run_cli(store_path, "rollback", "--force", "frb@s")
    assert read(os.path.join(mp, "f")) == b"snapshotted"  # same mountpoint, served again
    write(os.path.join(mp, "g"), b"writable after")
    assert sorted(os.listdir(mp)) == ["f", "g"]
