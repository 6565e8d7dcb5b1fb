"""send / receive between two stores, on real mounts: what arrives equals what was sent,
an incremental stream costs what changed, and a broken stream changes nothing."""

import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import time

import blake3
import pytest

from conftest import Mounts, needs_fuse, run_cli

MiB = 1 << 20


def tree_state(root: str) -> dict:
    """Everything a user can see of a tree: kinds, modes, owners, sizes, times,
    content hashes, link targets, xattrs, and which names share an inode."""
    state, by_ino = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            entry = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
                     "mtime_ns": st.st_mtime_ns, "nlink": st.st_nlink,
                     "xattrs": {n: os.getxattr(path, n, follow_symlinks=False)
                                for n in sorted(os.listxattr(path, follow_symlinks=False))}}
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(MiB), b""):
                        h.update(block)
                entry["sha256"] = h.hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            by_ino.setdefault(st.st_ino, []).append(rel)
            state[rel] = entry
    for names in by_ino.values():
        for rel in names:
            state[rel]["same_inode_as"] = sorted(names)
    return state


def fill(mp: str, big: int) -> None:
    os.makedirs(os.path.join(mp, "data", "deep", "er"))
    with open(os.path.join(mp, "data", "big"), "wb") as f:
        for _ in range(big // MiB):
            f.write(os.urandom(MiB))
    for i in range(20):
        with open(os.path.join(mp, "data", "deep", f"small{i}"), "wb") as f:
            f.write(os.urandom(1000 * i + 1))
    with open(os.path.join(mp, "data", "deep", "er", "sparse"), "wb") as f:
        f.truncate(5 * MiB)
        f.seek(3 * MiB)
        f.write(b"island")
    with open(os.path.join(mp, "notes"), "w") as f:
        f.write("hello\n")
    os.link(os.path.join(mp, "notes"), os.path.join(mp, "data", "notes-link"))
    os.symlink("data/big", os.path.join(mp, "to-big"))
    os.setxattr(os.path.join(mp, "notes"), "user.color", b"blue")
    os.setxattr(os.path.join(mp, "data"), "user.dir", b"yes")
    os.chmod(os.path.join(mp, "data", "deep", "small3"), 0o600)
    os.chown(os.path.join(mp, "data", "deep", "small4"), 1234, 5678)
    os.utime(os.path.join(mp, "data", "deep", "small5"), ns=(1_000_000_000, 2_000_000_000))
    os.mkfifo(os.path.join(mp, "fifo"))


def change(mp: str) -> None:
    """About 1 MiB of change: an in-place edit, an append, new/renamed/removed names."""
    with open(os.path.join(mp, "data", "big"), "r+b") as f:
        f.seek(10 * MiB + 4096)
        f.write(os.urandom(MiB - 8192))
        f.seek(0, os.SEEK_END)
        f.write(os.urandom(4096))
    with open(os.path.join(mp, "notes"), "a") as f:
        f.write("more\n")
    os.rename(os.path.join(mp, "data", "deep", "small7"), os.path.join(mp, "moved"))
    os.unlink(os.path.join(mp, "data", "deep", "small8"))
    os.mkdir(os.path.join(mp, "newdir"))
    with open(os.path.join(mp, "newdir", "new"), "wb") as f:
        f.write(b"new file\n")
    os.chmod(os.path.join(mp, "data", "deep"), 0o700)
    os.setxattr(os.path.join(mp, "data", "notes-link"), "user.color", b"red")


def assert_same(a: dict, b: dict) -> None:
    differing = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert not differing, json.dumps({k: [v and {f: x for f, x in v.items() if f != "xattrs"} for v in pair] for k, pair in differing.items()})


def pipe(src_store: str, send_args: list, dst_store: str, recv_args: list):
    """`fusevol send ... | fusevol receive ...` through a real pipe."""
    env = dict(os.environ)
    sender = subprocess.Popen([sys.executable, "-m", "fusevol", "--store", src_store, "send", *send_args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    receiver = subprocess.run([sys.executable, "-m", "fusevol", "--store", dst_store, "receive", *recv_args],
                              stdin=sender.stdout, capture_output=True, env=env, timeout=300)
    sender.stdout.close()
    assert sender.wait(60) == 0, sender.stderr.read().decode()
    return receiver


@pytest.fixture
def other(tmp_path):
    """A second store (another host), with mounts of its own."""
    m = Mounts(str(tmp_path / "store-b"), str(tmp_path / "mnt-b"))
    yield m
    m.cleanup()


@needs_fuse
def test_full_and_incremental_give_identical_volumes(mounts, store_path, other, tmp_path):
    src = mounts.mount("src")
    fill(src, 64 * MiB)
    run_cli(store_path, "snapshot", "create", "src@one")
    full = tmp_path / "full.stream"
    run_cli(store_path, "send", "src@one", "-o", str(full))
    run_cli(other.store_path, "receive", "dst", str(full))

    snaps = json.loads(run_cli(other.store_path, "snapshot", "ls", "dst", "--json").stdout)
    assert [s["name"] for s in snaps] == ["one"]
    # The big file's chunks went to a data file, though the receive's one
    # transaction held more than a writer's buffer: the store file stays small.
    df = json.loads(run_cli(other.store_path, "df", "--json").stdout)
    assert df["data_files_bytes"] >= 64 * MiB and df["store_file_bytes"] < 16 * MiB, df
    dst = other.mount("dst", create=False)
    assert_same(tree_state(dst), tree_state(src))
    # A change made on the receiving side since its snapshot is not silently discarded.
    with open(os.path.join(dst, "local-change"), "w") as f:
        f.write("mine\n")

    change(src)
    run_cli(store_path, "snapshot", "create", "src@two")
    incremental = tmp_path / "incremental.stream"
    run_cli(store_path, "send", "-i", "src@one", "src@two", "-o", str(incremental))
    assert os.path.getsize(incremental) < os.path.getsize(full) / 10, \
        (os.path.getsize(incremental), os.path.getsize(full))

    busy = run_cli(other.store_path, "receive", "dst", str(incremental), check=False)
    assert busy.returncode != 0 and b"mounted" in busy.stderr
    other.umount(dst)
    changed = pipe(store_path, ["-i", "src@one", "src@two"], other.store_path, ["dst"])
    assert changed.returncode != 0 and b"changed since" in changed.stderr, changed.stderr
    received = pipe(store_path, ["-i", "src@one", "src@two"], other.store_path, ["dst", "--force"])
    assert received.returncode == 0, received.stderr
    assert received.stdout.decode().strip() == "dst@two"

    dst = other.mount("dst", create=False)
    assert not os.path.exists(os.path.join(dst, "local-change"))
    assert_same(tree_state(dst), tree_state(src))
    snaps = json.loads(run_cli(other.store_path, "snapshot", "ls", "dst", "--json").stdout)
    assert [s["name"] for s in snaps] == ["one", "two"]
    assert run_cli(other.store_path, "verify").returncode == 0
    # The received snapshots are real ones: diff sees what changed between them.
    changes = json.loads(run_cli(other.store_path, "diff", "dst@one", "dst@two", "--json").stdout)
    assert {"status": "R", "path": "data/deep/small7", "new_path": "moved"} in changes


def test_a_receive_killed_midway_leaves_the_store_whole_and_gc_takes_its_bytes(store_path, tmp_path):
    """A receive larger than a data file writer's buffer writes chunks to the
    disk before its commit: killed then, the store is as before, and gc takes
    back the bytes it wrote."""
    tree = tmp_path / "tree"
    tree.mkdir()
    with open(tree / "big", "wb") as f:
        for _ in range(160):
            f.write(os.urandom(MiB))
    archive = tmp_path / "big.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(tree), "big"], check=True)
    run_cli(store_path, "import", "src", str(archive))
    assert json.loads(run_cli(store_path, "df", "--json").stdout)["data_files_bytes"] >= 160 * MiB
    run_cli(store_path, "snapshot", "create", "src@one")
    stream = tmp_path / "one.stream"
    run_cli(store_path, "send", "src@one", "-o", str(stream))
    os.unlink(archive)

    dst_store = str(tmp_path / "dst")
    run_cli(dst_store, "volume", "create", "before")
    before = store_view(dst_store)
    data = os.path.join(dst_store, "data")
    proc = subprocess.Popen([sys.executable, "-m", "fusevol", "--store", dst_store, "receive", "dst",
                             str(stream)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Killed once its first buffer of chunks is on the disk.
    while proc.poll() is None and not (os.path.isdir(data) and _bytes_in(data) > 0):
        time.sleep(0.002)
    proc.kill()
    assert proc.wait() == -9, proc.stderr.read()
    assert _bytes_in(data) > 0

    # As before but for the bytes it wrote, in a file no commit named.
    after = store_view(dst_store)
    for view in (before, after):
        for key in ("data_files_bytes", "disk_bytes", "overhead"):
            view["df"].pop(key)
    assert after == before
    assert run_cli(dst_store, "verify").returncode == 0
    run_cli(dst_store, "gc")
    assert _bytes_in(data) == 0
    # Received again, whole.
    run_cli(dst_store, "receive", "dst", str(stream))
    assert run_cli(dst_store, "verify").returncode == 0
    assert store_view(dst_store)["df"]["volumes"]["dst"] == 160 * MiB


def _bytes_in(folder: str) -> int:
    """Bytes on the disk of the files in folder."""
    return sum(os.stat(os.path.join(folder, n)).st_blocks * 512 for n in os.listdir(folder))


def test_send_refuses_a_terminal(store_path, tmp_path):
    run_cli(store_path, "volume", "create", "v1")
    run_cli(store_path, "snapshot", "create", "v1@s")
    script = ("import pty, sys, os; os.environ['PYTHONPATH']=%r; "
              "sys.exit(pty.spawn([sys.executable, '-m', 'fusevol', '--store', %r, 'send', 'v1@s']) >> 8)"
              % (os.environ.get("PYTHONPATH", ""), store_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode != 0
    assert b"terminal" in proc.stdout


# -- broken streams ----------------------------------------------------------------

HEADER_SIZE = 16 + 2 + 1 + 32
FRAME = struct.Struct(">cI")


def records(stream: bytes):
    """(offset, type, length) of each record after the header (the format's own layout)."""
    pos = HEADER_SIZE
    while pos < len(stream):
        kind, length = FRAME.unpack_from(stream, pos)
        yield pos, kind, length
        pos += FRAME.size + length


def without_chunks(stream: bytes) -> bytes:
    """A stream that is well formed (trailer recomputed) but lacks the chunks its objects use."""
    out, count = bytearray(stream[:HEADER_SIZE]), 0
    for pos, kind, length in records(stream):
        if kind == b"T":
            break
        if kind == b"C":
            continue
        out += stream[pos:pos + FRAME.size + length]
        count += 1
    body = struct.pack(">Q32s", count, blake3.blake3(bytes(out)).digest())
    return bytes(out) + FRAME.pack(b"T", len(body)) + body


def store_view(store: str) -> dict:
    return {
        "df": json.loads(run_cli(store, "df", "--json").stdout),
        "volumes": json.loads(run_cli(store, "volume", "ls", "--json").stdout),
        "snapshots": json.loads(run_cli(store, "snapshot", "ls", "--json").stdout),
    }


@needs_fuse
def test_broken_streams_are_refused_and_change_nothing(mounts, store_path, other, tmp_path):
    src = mounts.mount("src")
    fill(src, 4 * MiB)
    run_cli(store_path, "snapshot", "create", "src@one")
    change(src)
    run_cli(store_path, "snapshot", "create", "src@two")
    with open(os.path.join(src, "third"), "wb") as f:
        f.write(os.urandom(300_000))
    run_cli(store_path, "snapshot", "create", "src@three")
    full = run_cli(store_path, "send", "src@one").stdout
    incremental = run_cli(store_path, "send", "-i", "src@one", "src@two").stdout
    after_two = run_cli(store_path, "send", "-i", "src@two", "src@three").stdout
    full_three = run_cli(store_path, "send", "src@three").stdout  # holds data dst lacks

    run_cli(other.store_path, "receive", "dst", input=full)
    before = store_view(other.store_path)

    chunk_at = next(pos for pos, kind, _ in records(full) if kind == b"C")
    flipped_chunk = bytearray(full)
    flipped_chunk[chunk_at + FRAME.size + 32 + 1000] ^= 0x40
    flipped_trailer = bytearray(full)
    flipped_trailer[-5] ^= 0x01
    cases = [
        ("truncated", ["new1"], full[: len(full) // 2], b"truncated"),
        ("flipped chunk byte", ["new2"], bytes(flipped_chunk), b"does not match its content"),
        ("flipped trailer byte", ["new3"], bytes(flipped_trailer), b"checksum"),
        ("missing chunk", ["new4"], without_chunks(full_three), b"neither it nor this store holds"),
        ("wrong base", ["dst"], after_two, b"no snapshot equal to the stream's base"),
        ("base into no volume", ["nothing"], incremental, b"must exist"),
        ("not a stream", ["new5"], b"hello world" * 10, b"not a fusevol send stream"),
        ("full into an existing volume", ["dst"], full, b"already exists"),
    ]
    for label, args, data, message in cases:
        proc = run_cli(other.store_path, "receive", *args, input=data, check=False)
        assert proc.returncode != 0, label
        err = proc.stderr.decode()
        assert message.decode() in err, (label, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (label, err)
        assert store_view(other.store_path) == before, label
    assert run_cli(other.store_path, "verify").returncode == 0
    # The good incremental still goes in after all that.
    run_cli(other.store_path, "receive", "dst", input=incremental)
    dst = other.mount("dst", create=False)
    run_cli(store_path, "clone", "src@two", "two")
    assert tree_state(dst) == tree_state(mounts.mount("two", create=False))
