"""Remotes against a real S3 server (Ceph radosgw, started by the `ceph`
fixture): remote records, push and pull between two stores standing for two
hosts, what travels the second time, and the errors a user sees."""

import os

import pytest

from conftest import Mounts, needs_fuse
from remote_helpers import Host, aws_env, keys, new_bucket, two_hosts, volume_digests

MiB = 1 << 20


@pytest.fixture
def hosts(ceph, tmp_path):
    return two_hosts(ceph, tmp_path)


def test_remote_records_keep_no_credentials(ceph, tmp_path):
    host = Host(ceph, str(tmp_path / "s"))
    host.add_remote(new_bucket())
    host.run("remote", "add", "aws", "s3://some-bucket/a/b", "--region", "eu-west-1")
    listed = {r["name"]: r for r in host.json("remote", "ls")}
    assert listed["r"]["endpoint"] == ceph.endpoint
    assert listed["aws"] == {"name": "aws", "url": "s3://some-bucket/a/b", "bucket": "some-bucket",
                             "prefix": "a/b", "endpoint": None, "region": "eu-west-1"}
    again = host.run("remote", "add", "aws", "s3://other-bucket", check=False)
    assert again.returncode == 3 and b"already exists" in again.stderr
    for bad in ("http://bucket/x", "s3://B/x", "s3://bucket//x", "s3://bucket/../x"):
        proc = host.run("remote", "add", "x", bad, check=False)
        assert proc.returncode == 4 and proc.stderr.count(b"\n") == 1, (bad, proc.stderr)
    host.run("remote", "rm", "aws")
    assert [r["name"] for r in host.json("remote", "ls")] == ["r"]
    assert host.run("remote", "rm", "aws", check=False).returncode == 2
    for root, _, files in os.walk(host.store):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                content = f.read()
            assert ceph.secret_key.encode() not in content and ceph.access_key.encode() not in content


def test_push_then_pull_on_another_host(hosts):
    a, b, bucket = hosts
    files = {"big": os.urandom(5 * MiB + 1234), "dir/small": b"hello\n", "dir/empty": b"",
             "dup": b"x" * (300 << 10)}
    a.import_files("vol", files)
    a.run("snapshot", "create", "vol@one")
    pushed = a.json("push", "vol@one", "r")
    assert pushed["chunks"] >= 40 and not pushed["already"]
    names = keys(a.cluster, bucket, "fv/")
    assert "fv/snapshots/vol/one" in names and "fv/config" in names
    assert any(k.startswith("fv/index/") for k in names)
    assert a.json("push", "vol@one", "r")["already"]

    listed = b.json("remote", "snapshots", "r")
    assert [(s["volume"], s["name"]) for s in listed] == [("vol", "one")]
    pulled = b.json("pull", "r", "vol@one")
    assert pulled["snapshot"] == "vol@one"
    assert volume_digests(b.store, "vol@one") == volume_digests(a.store, "vol@one")
    assert volume_digests(b.store, "vol") == volume_digests(a.store, "vol")
    assert b"ok" in b.run("verify").stdout
    # The big file's chunks went to a data file, as a worker's would.
    assert b.json("df")["data_files_bytes"] >= 5 * MiB
    # A pull into another name downloads nothing: this store has it all.
    again = b.json("pull", "r", "vol@one", "copy")
    assert again["downloaded_bytes"] == 0 and again["chunks"] == 0
    assert volume_digests(b.store, "copy") == volume_digests(a.store, "vol@one")


@needs_fuse
def test_second_push_and_pull_move_only_the_change(hosts, tmp_path):
    """1 MiB rewritten in a mounted volume of 24 MiB: the second push and the
    pull into the other host's volume move about that MiB, not the volume."""
    a, b, _ = hosts
    mounts = Mounts(a.store, str(tmp_path / "mnt"))
    try:
        root = mounts.mount("vol")
        for i in range(24):
            with open(f"{root}/f{i:02d}", "wb") as f:
                f.write(os.urandom(MiB))
        a.run("snapshot", "create", "vol@one")
        first = a.json("push", "vol@one", "r")
        assert first["uploaded_bytes"] > 24 * MiB and first["chunks"] == 24 * 8
        b.run("pull", "r", "vol@one")
        with open(f"{root}/f07", "r+b") as f:
            f.seek(MiB // 2)
            f.write(os.urandom(MiB // 2))
        with open(f"{root}/f20", "r+b") as f:
            f.write(os.urandom(MiB // 2))
        a.run("snapshot", "create", "vol@two")
    finally:
        mounts.cleanup()
    second = a.json("push", "vol@two", "r")
    assert second["chunks"] == 8 and second["uploaded_bytes"] < 1.1 * MiB, second
    pulled = b.json("pull", "r", "vol@two")
    assert pulled["chunks"] == 8 and pulled["downloaded_bytes"] < 1.1 * MiB, pulled
    assert volume_digests(b.store, "vol") == volume_digests(a.store, "vol@two")


def test_pull_into_an_existing_volume_rolls_it_forward(hosts):
    a, b, _ = hosts
    a.import_files("vol", {"f": b"one" * 1000})
    a.run("snapshot", "create", "vol@one")
    a.run("push", "vol@one", "r")
    b.run("pull", "r", "vol@one")
    a.import_files("vol2", {"f": b"two" * 1000, "g": b"new"})
    a.run("snapshot", "create", "vol2@two")
    a.run("push", "vol2@two", "r")
    b.run("pull", "r", "vol2@two", "vol")  # into the existing v: its next snapshot
    assert volume_digests(b.store, "vol") == volume_digests(a.store, "vol2@two")
    assert {s["name"] for s in b.json("snapshot", "ls", "vol")} == {"one", "two"}
    missing = b.run("pull", "r", "vol@nope", check=False)
    assert missing.returncode == 2 and b"has no snapshot vol@nope" in missing.stderr


def test_wrong_endpoint_or_credentials_give_one_line(ceph, tmp_path):
    host = Host(ceph, str(tmp_path / "s"))
    bucket = new_bucket()
    host.add_remote(bucket)
    host.import_files("vol", {"f": b"data"})
    host.run("snapshot", "create", "vol@one")

    def fails(*args, env=None, code=10):
        proc = host.run(*args, check=False, env=env)
        assert proc.returncode == code, proc.stderr
        err = proc.stderr.decode()
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert ceph.secret_key not in err and "wrong-secret" not in err
        return err

    assert "refused the credentials" in fails("push", "vol@one", "r",
                                              env={"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    assert "refused the credentials" in fails("push", "vol@one", "r",
                                              env={"AWS_ACCESS_KEY_ID": "NOSUCHKEY"})
    assert "no AWS credentials" in fails("push", "vol@one", "r",
                                         env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    closed = "http://127.0.0.1:9"  # discard: nothing listens there
    host.run("remote", "add", "closed", f"s3://{bucket}/x", "--endpoint", closed)
    assert f"cannot reach {closed}" in fails("push", "vol@one", "closed")
    assert f"cannot reach {closed}" in fails("remote", "snapshots", "closed")
    host.run("remote", "add", "nobucket", "s3://no-such-bucket-here/x", "--endpoint", ceph.endpoint)
    assert "bucket no-such-bucket-here does not exist" in fails("push", "vol@one", "nobucket")


def test_credentials_from_the_shared_file(ceph, tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = {ceph.access_key}\n"
                     f"aws_secret_access_key = {ceph.secret_key}\n")
    # An empty variable is no credential to boto3: the chain goes on to the file.
    env = aws_env(ceph, AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="",
                  AWS_SHARED_CREDENTIALS_FILE=str(creds))
    host = Host(ceph, str(tmp_path / "s"), env=env)
    host.add_remote(new_bucket())
    host.import_files("vol", {"f": b"data"})
    host.run("snapshot", "create", "vol@one")
    host.run("push", "vol@one", "r")
    assert [s["name"] for s in host.json("remote", "snapshots", "r", "vol")] == ["one"]


def test_docker_create_from_remote(hosts, monkeypatch):
    """The plugin's Create handler (as dockerd calls it) with -o from-remote."""
    from fusevol.errors import InvalidArgument, NotFound
    from fusevol.plugin.protocol import Driver
    from fusevol.plugin.supervisor import Supervisor
    from fusevol.store import Store

    a, b, _ = hosts
    a.import_files("vol", {"f": os.urandom(MiB), "d/g": b"small"})
    a.run("snapshot", "create", "vol@one")
    a.run("push", "vol@one", "r")
    for key, value in b.env.items():
        monkeypatch.setenv(key, value)
    driver = Driver(Supervisor(b.store))
    try:
        opts = {"from-remote": "r:vol@one", "compression": "none"}
        assert driver.create({"Name": "web", "Opts": opts}) == {}
        assert driver.create({"Name": "web", "Opts": opts}) == {}  # idempotent, nothing pulled
        driver.incoming.wait("web")  # the pull runs after Create returned, as Mount waits for it
        status = driver.get({"Name": "web"})["Volume"]["Status"]
        assert status["compression"] == "none" and status["logical_bytes"] == MiB + 5
        with pytest.raises(NotFound, match="no remote named 'nope'"):
            driver.create({"Name": "x1", "Opts": {"from-remote": "nope:vol@one"}})
        with pytest.raises(NotFound, match="has no snapshot vol@two"):
            driver.create({"Name": "x2", "Opts": {"from-remote": "r:vol@two"}})
        with pytest.raises(InvalidArgument, match="REMOTE:VOLUME@SNAPSHOT"):
            driver.create({"Name": "x3", "Opts": {"from-remote": "vol@one"}})
        assert [v["Name"] for v in driver.list({})["Volumes"]] == ["web"]
    finally:
        Store._instances.pop(b.store).close()
    assert volume_digests(b.store, "web") == volume_digests(a.store, "vol@one")
