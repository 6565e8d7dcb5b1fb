"""`remote forget` and `remote prune`: what no manifest reaches goes, what a
snapshot needs stays, and a prune never runs beside a push."""

import os

import pytest

from fusevol.remote.locks import PruneLock, PushLock
from fusevol.remote.s3 import Bucket
from remote_helpers import Host, keys, two_hosts, volume_digests

MiB = 1 << 20


@pytest.fixture
def hosts(ceph, tmp_path):
    return two_hosts(ceph, tmp_path)


def _bucket(host: Host, monkeypatch) -> Bucket:
    for k, v in host.env.items():
        monkeypatch.setenv(k, v)
    return Bucket({"name": "r", "bucket": host.remote_bucket, "prefix": "fv",
                   "endpoint": host.cluster.endpoint, "region": None})


def test_prune_frees_what_only_forgotten_snapshots_held(hosts):
    a, b, bucket = hosts
    shared = os.urandom(MiB)
    a.import_files("one", {"shared": shared, "own": os.urandom(3 * MiB)})
    a.import_files("two", {"shared": shared, "own": os.urandom(MiB)})
    a.run("snapshot", "create", "one@s")
    a.run("snapshot", "create", "two@s")
    env = {"FUSEVOL_PACK_SIZE": str(MiB)}
    a.run("push", "one@s", "r", env=env)
    a.run("push", "two@s", "r", env=env)
    before = sum(n for k, n in keys(a.cluster, bucket, "fv/data/").items())

    nothing = a.json("remote", "prune", "r")
    assert nothing["packs_deleted"] == 0 and nothing["snapshots"] == 2
    a.run("remote", "forget", "r", "one@s")
    assert [s["volume"] for s in a.json("remote", "snapshots", "r")] == ["two"]
    dry = a.json("remote", "prune", "r", "--dry-run")
    assert dry["packs_deleted"] >= 3
    assert sum(keys(a.cluster, bucket, "fv/data/").values()) == before
    done = a.json("remote", "prune", "r")
    assert done["packs_deleted"] == dry["packs_deleted"]
    after = sum(keys(a.cluster, bucket, "fv/data/").values())
    assert before - after >= 3 * MiB and after >= 2 * MiB
    assert len(keys(a.cluster, bucket, "fv/index/")) == 1
    assert keys(a.cluster, bucket, "fv/locks/") == {}

    b.run("pull", "r", "two@s")
    assert volume_digests(b.store, "two") == volume_digests(a.store, "two@s")
    # What was pruned is sent again by the next push, and pulls back whole.
    again = a.json("push", "one@s", "r", env=env)
    assert 0 < again["chunks"] <= 24
    b.run("pull", "r", "one@s")
    assert volume_digests(b.store, "one") == volume_digests(a.store, "one@s")


def test_prune_and_push_never_run_together(hosts, monkeypatch):
    a, _, bucket = hosts
    a.remote_bucket = bucket
    a.import_files("vol", {"f": b"data"})
    a.run("snapshot", "create", "vol@s")
    remote = _bucket(a, monkeypatch)
    with PushLock(remote):  # what a running push holds
        proc = a.run("remote", "prune", "r", check=False)
        assert proc.returncode == 5 and b"has a push running" in proc.stderr, proc.stderr
    with PruneLock(remote):  # what a running prune holds
        proc = a.run("push", "vol@s", "r", check=False)
        assert proc.returncode == 5 and b"is being pruned" in proc.stderr, proc.stderr
        proc = a.run("remote", "prune", "r", check=False)
        assert proc.returncode == 5 and b"being pruned already" in proc.stderr, proc.stderr
    a.run("push", "vol@s", "r")
    # A push that died leaves its lock: prune waits for it to go stale, or is told.
    PushLock(remote).__enter__()
    assert a.run("remote", "prune", "r", check=False).returncode == 5
    a.run("remote", "prune", "r", "--break-locks")
    assert keys(a.cluster, bucket, "fv/locks/") == {}


def test_prune_deletes_nothing_while_a_snapshot_lacks_readable_data(hosts):
    from remote_helpers import s3_client

    a, _, bucket = hosts
    a.import_files("vol", {"f": os.urandom(2 * MiB)})
    a.run("snapshot", "create", "vol@s")
    a.run("push", "vol@s", "r", env={"FUSEVOL_PACK_SIZE": str(512 << 10)})
    s3 = s3_client(a.cluster)
    for key in keys(a.cluster, bucket, "fv/index/"):
        s3.delete_object(Bucket=bucket, Key=key)  # every pack must be read by its header now
    packs = keys(a.cluster, bucket, "fv/data/")
    victim = max(packs, key=packs.get)
    data = s3.get_object(Bucket=bucket, Key=victim)["Body"].read()
    s3.put_object(Bucket=bucket, Key=victim, Body=data[:-12] + bytes(12))  # its trailer gone
    proc = a.run("remote", "prune", "r", check=False)
    assert proc.returncode == 8 and b"prune changes nothing" in proc.stderr, proc.stderr
    assert keys(a.cluster, bucket, "fv/data/") == packs


def _a_pack_mostly_forgotten(a: Host) -> None:
    kept, gone = os.urandom(MiB), os.urandom(3 * MiB)
    a.import_files("one", {"kept": kept, "gone": gone})
    a.import_files("two", {"kept": kept})
    a.run("snapshot", "create", "one@s")
    a.run("snapshot", "create", "two@s")
    a.run("push", "one@s", "r")  # one pack of chunks: kept and gone together
    a.run("push", "two@s", "r")  # sends no chunk: the remote has kept's
    a.run("remote", "forget", "r", "one@s")


def test_prune_rewrites_packs_mostly_unreachable(hosts):
    a, b, bucket = hosts
    _a_pack_mostly_forgotten(a)
    before = keys(a.cluster, bucket, "fv/data/")

    dry = a.json("remote", "prune", "r", "--dry-run")
    assert dry["packs_repacked"] >= 1 and MiB <= dry["bytes_rewritten"] < 1.1 * MiB, dry
    assert keys(a.cluster, bucket, "fv/data/") == before
    done = a.json("remote", "prune", "r")
    assert done["packs_repacked"] == dry["packs_repacked"] and done["packs_made"] >= 1, done
    after = keys(a.cluster, bucket, "fv/data/")
    assert not set(after) & {k for k, n in before.items() if n > 2 * MiB}  # the big pack went
    assert sum(after.values()) < 1.2 * MiB <= sum(before.values()) / 3
    assert len(keys(a.cluster, bucket, "fv/index/")) == 1
    assert b": ok" in a.run("remote", "verify", "r", "--read-data").stdout
    b.run("pull", "r", "two@s")
    assert volume_digests(b.store, "two") == volume_digests(a.store, "two@s")
    again = a.json("remote", "prune", "r")  # nothing left to free or rewrite
    assert again["packs_deleted"] == again["packs_repacked"] == 0, again


def test_a_pull_that_read_the_indexes_before_a_repack_reads_them_again(hosts, monkeypatch):
    import concurrent.futures

    from fusevol.remote import catalog
    from fusevol.remote import pull as pulling
    from fusevol.store import Store, remotes

    a, b, _ = hosts
    _a_pack_mostly_forgotten(a)
    for k, v in b.env.items():
        monkeypatch.setenv(k, v)
    store = Store.open(b.store)
    try:
        with store.read() as txn:
            remote = remotes.get(txn, "r")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            stale = catalog.load(Bucket(remote), pool)
        assert a.json("remote", "prune", "r")["packs_repacked"] >= 1
        loads = []
        real_load = catalog.load

        def load(*args, **kwargs):  # the first pull reads the indexes before the prune ran
            loads.append(1)
            return stale if len(loads) == 1 else real_load(*args, **kwargs)

        monkeypatch.setattr(pulling.catalog, "load", load)
        pulling.pull(store, remote, "two", "s")
        assert len(loads) == 2
    finally:
        Store._instances.pop(store.path).close()
    assert volume_digests(b.store, "two") == volume_digests(a.store, "two@s")
