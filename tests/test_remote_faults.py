"""Remotes when things go wrong: the server stopped in the middle of a push
or a pull, objects of the bucket damaged or gone. Each time: one clear line,
a local store as it was, a remote that stays usable."""

import os
import subprocess
import sys
import time

import pytest

from remote_helpers import Host, keys, s3_client, two_hosts, volume_digests
from small_disks import ext4_loop, needs_loop

MiB = 1 << 20
SMALL_PACKS = {"FUSEVOL_PACK_SIZE": str(256 << 10)}  # many packs (and requests) from little data


@pytest.fixture
def hosts(ceph, tmp_path):
    yield two_hosts(ceph, tmp_path)
    if "rgw" not in ceph.procs:
        ceph.start_rgw()  # a failed test must not leave the next without a server


def _spawn(host: Host, *args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fusevol", "--store", host.store, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **host.env, **(env or {})})


def _wait_for(what: str, check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _one_line_error(proc: subprocess.Popen, code: int) -> str:
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _chunks(host: Host) -> int:
    return host.json("df")["chunks"]


def test_push_interrupted_by_the_server_resumes_without_resending(hosts):
    a, b, bucket = hosts
    a.import_files("vol", {f"f{i:02d}": os.urandom(MiB) for i in range(48)})
    a.run("snapshot", "create", "vol@one")
    proc = _spawn(a, "push", "vol@one", "r", env=SMALL_PACKS)
    _wait_for("packs on the remote",
              lambda: sum(k.startswith("fv/data/") for k in keys(a.cluster, bucket, "fv/")) >= 6)
    a.cluster.stop_rgw()
    err = _one_line_error(proc, 10)
    assert f"cannot reach {a.cluster.endpoint}" in err
    a.cluster.start_rgw()
    landed = {k: n for k, n in keys(a.cluster, bucket, "fv/").items() if k.startswith("fv/data/")}
    assert "fv/snapshots/vol/one" not in keys(a.cluster, bucket, "fv/")  # no manifest: no snapshot
    assert b.json("remote", "snapshots", "r") == []

    again = a.json("push", "vol@one", "r", env=SMALL_PACKS)
    assert again["reused_packs"] == len(landed) >= 6
    assert again["uploaded_bytes"] < 48 * MiB - sum(landed.values()) + MiB, again
    b.run("pull", "r", "vol@one")
    assert volume_digests(b.store, "vol") == volume_digests(a.store, "vol@one")


def test_pull_interrupted_by_the_server_leaves_the_store_as_it_was(hosts):
    a, b, _ = hosts
    a.import_files("vol", {f"f{i:02d}": os.urandom(MiB) for i in range(48)})
    a.run("snapshot", "create", "vol@one")
    a.run("push", "vol@one", "r", env=SMALL_PACKS)
    b.import_files("mine", {"f": b"kept"})
    before, chunks_before = volume_digests(b.store, "mine"), _chunks(b)

    # Small packs (pushed above) make small ranges: the pull is still
    # downloading when the server goes, with chunks stored already.
    proc = _spawn(b, "pull", "r", "vol@one", env={"FUSEVOL_PULL_BATCH": str(MiB)})
    _wait_for("a pull under way", lambda: _chunks(b) > chunks_before + 32)
    b.cluster.stop_rgw()
    err = _one_line_error(proc, 10)
    assert f"cannot reach {b.cluster.endpoint}" in err
    assert [v["name"] for v in b.json("volume", "ls")] == ["mine"]
    assert volume_digests(b.store, "mine") == before
    assert _chunks(b) == chunks_before  # what it had stored is gone again
    assert b"ok" in b.run("verify").stdout
    b.cluster.start_rgw()
    b.run("pull", "r", "vol@one")
    assert volume_digests(b.store, "vol") == volume_digests(a.store, "vol@one")


def _pack_keys(cluster, bucket: str) -> list[str]:
    return sorted(k for k in keys(cluster, bucket, "fv/data/"))


def test_damaged_or_missing_objects_are_found_by_hash_and_named(hosts):
    a, b, bucket = hosts
    a.import_files("vol", {"f": os.urandom(2 * MiB), "g": b"small"})
    a.run("snapshot", "create", "vol@one")
    a.run("push", "vol@one", "r")
    s3 = s3_client(a.cluster)
    packs = _pack_keys(a.cluster, bucket)
    data_pack = max(packs, key=lambda k: keys(a.cluster, bucket, k)[k])  # the chunks' pack
    original = s3.get_object(Bucket=bucket, Key=data_pack)["Body"].read()

    assert b": ok" in a.run("remote", "verify", "r", "--read-data").stdout
    damaged = bytearray(original)
    damaged[MiB] ^= 0x40
    s3.put_object(Bucket=bucket, Key=data_pack, Body=bytes(damaged))
    assert b": ok" in a.run("remote", "verify", "r").stdout  # indexes and trees: whole
    proc = a.run("remote", "verify", "r", "--read-data", check=False)
    assert proc.returncode == 8, proc.stdout
    assert f"pack {data_pack[len('fv/'):]} is damaged: chunk ".encode() in proc.stdout
    proc = b.run("pull", "r", "vol@one", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 8 and err.count("\n") == 1, err
    assert f"pack {data_pack[len('fv/'):]} is damaged: chunk " in err and "does not match" in err

    s3.delete_object(Bucket=bucket, Key=data_pack)
    proc = b.run("pull", "r", "vol@one", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 8 and f"pack {data_pack[len('fv/'):]} is missing" in err, err
    proc = a.run("remote", "verify", "r", check=False)
    assert proc.returncode == 8
    assert f"pack {data_pack[len('fv/'):]} is missing (index ".encode() in proc.stdout

    index = next(iter(keys(a.cluster, bucket, "fv/index/")))
    s3.put_object(Bucket=bucket, Key=index, Body=b"FVINDEX1 not an index")
    proc = b.run("pull", "r", "vol@one", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 8 and f"index {index[len('fv/'):]} is damaged" in err, err
    assert b.json("volume", "ls") == []  # nothing of it reached the store

    s3.put_object(Bucket=bucket, Key="fv/snapshots/vol/one", Body=b"{")
    proc = b.run("pull", "r", "vol@one", check=False)
    assert proc.returncode == 8 and b"manifest snapshots/vol/one is damaged" in proc.stderr


@needs_loop
def test_pull_onto_a_full_disk_says_so_and_leaves_the_store_as_it_was(hosts, tmp_path):
    """Chunks are stored by a thread of their own: its failure (the disk is
    full) ends the pull with one line, the store as it was."""
    a, _, bucket = hosts
    a.import_files("vol", {f"f{i:02d}": os.urandom(MiB) for i in range(96)})
    a.run("snapshot", "create", "vol@one")
    a.run("push", "vol@one", "r")
    with ext4_loop(str(tmp_path), size_mib=128) as point:
        small = Host(a.cluster, os.path.join(point, "store"))
        small.add_remote(bucket, create=False)
        small.import_files("mine", {"f": b"kept"})
        before, chunks_before = volume_digests(small.store, "mine"), _chunks(small)
        proc = _spawn(small, "pull", "r", "vol@one", env={"FUSEVOL_PULL_BATCH": str(MiB)})
        err = _one_line_error(proc, 6)
        assert "no space" in err
        assert [v["name"] for v in small.json("volume", "ls")] == ["mine"]
        assert volume_digests(small.store, "mine") == before
        assert _chunks(small) == chunks_before
        assert b"ok" in small.run("verify").stdout
