"""Docker end to end with a remote and two hosts: two dockerds, each with its
own fusevol daemon and store, and a real S3 server between them.

Host A is the session's dockerd; host B is a second dockerd started here. A
volume made on B from a snapshot A pushed holds every byte of it, and a
volume that follows its service (-o remote=NAME) is written on A, pushed when
A's container stops, and pulled before its first mount on B; while A holds
it, B's container does not start and says why.
"""

import json
import time
import uuid

import pytest

from conftest import run_cli
from docker_env import IMAGE, docker, dockerd, plugin, volume_name  # noqa: F401 (fixtures)
from plugin_daemon import PluginDaemon
from remote_helpers import aws_env, keys, new_bucket, s3_client

RUN = ("run", "--rm", "--network", "none")
HASH_ALL = "cd /data && find . -type f | sort | xargs sha256sum"


@pytest.fixture(scope="module")
def second_docker(docker, tmp_path_factory):
    """Host B's dockerd (after host A's: the fixture skips where Docker cannot run)."""
    with dockerd(tmp_path_factory.mktemp("dockerd-b")) as dk:
        yield dk


class Daemon:
    """A fusevol daemon with its own store (one host's), remote `r` on `bucket`."""

    def __init__(self, base, ceph, bucket: str, create_bucket: bool = False):
        self.driver = f"fv-{uuid.uuid4().hex[:8]}"
        self.daemon = PluginDaemon(str(base / f"store-{self.driver}"),
                                   f"/run/docker/plugins/{self.driver}.sock",
                                   str(base / f"serve-{self.driver}.log"))
        self.store = self.daemon.store
        self.env = aws_env(ceph)
        run_cli(self.store, "remote", "add", "r", f"s3://{bucket}/fv", "--endpoint", ceph.endpoint,
                *(["--create-bucket"] if create_bucket else []), env=self.env)

    def __enter__(self) -> "Daemon":
        self.daemon.start()  # with the AWS settings the test put in the environment
        return self

    def __exit__(self, *exc) -> None:
        self.daemon.cleanup()


def _wait_for(what: str, check, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_volume_from_remote_on_a_second_host(docker, second_docker, plugin, ceph, tmp_path,
                                             monkeypatch, volume_name):
    env = aws_env(ceph)
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # host B's daemon inherits them
    bucket = new_bucket()
    src = volume_name("src")
    docker("volume", "create", "-d", plugin.driver_name, src)
    docker(*RUN, "-v", f"{src}:/data", IMAGE, "sh", "-c",
           "head -c 3000000 /dev/urandom > /data/big && mkdir /data/d && echo hi > /data/d/small"
           " && cp -a /seed /data/")
    first_host = docker.out(*RUN, "-v", f"{src}:/data", IMAGE, "sh", "-c", HASH_ALL)
    run_cli(plugin.store, "remote", "add", "r", f"s3://{bucket}/fv", "--endpoint", ceph.endpoint,
            "--create-bucket", env=env)
    run_cli(plugin.store, "snapshot", "create", f"{src}@s1")
    run_cli(plugin.store, "push", f"{src}@s1", "r", env=env)

    with Daemon(tmp_path, ceph, bucket) as b:
        copy = volume_name("copy")
        second_docker("volume", "create", "-d", b.driver, "-o", f"from-remote=r:{src}@s1", copy)
        second_host = second_docker.out(*RUN, "-v", f"{copy}:/data", IMAGE, "sh", "-c", HASH_ALL)
        assert second_host == first_host and "./big" in second_host and "./seed/a.txt" in second_host
        bad = second_docker("volume", "create", "-d", b.driver, "-o",
                            f"from-remote=r:{src}@nope", volume_name("bad"), check=False)
        assert bad.returncode != 0 and f"has no snapshot {src}@nope".encode() in bad.stderr
        # A pulled volume holds the snapshot it came from, as a received one does.
        run_cli(b.store, "snapshot", "rm", f"{copy}@s1")
        second_docker("volume", "rm", copy)
    run_cli(plugin.store, "snapshot", "rm", f"{src}@s1")
    docker("volume", "rm", src)


def test_a_volume_follows_its_service_to_a_second_host(docker, second_docker, ceph, tmp_path,
                                                       monkeypatch, volume_name):
    for key, value in aws_env(ceph).items():
        monkeypatch.setenv(key, value)  # both daemons inherit them
    bucket = new_bucket()
    app = volume_name("app")
    with Daemon(tmp_path, ceph, bucket, create_bucket=True) as a, Daemon(tmp_path, ceph, bucket) as b:
        docker("volume", "create", "-d", a.driver, "-o", "remote=r", app)
        docker(*RUN, "-v", f"{app}:/data", IMAGE, "sh", "-c",
               "head -c 5000000 /dev/urandom > /data/big && cp -a /seed /data/")
        on_a = docker.out(*RUN, "-v", f"{app}:/data", IMAGE, "sh", "-c", HASH_ALL)
        # A container on host A holds the volume (its lease) while host B tries.
        holder = docker.out("run", "-d", "--network", "none", "-v", f"{app}:/data", IMAGE,
                            "sleep", "600")
        second_docker("volume", "create", "-d", b.driver, "-o", "remote=r", app)
        refused = second_docker(*RUN, "-v", f"{app}:/data", IMAGE, "true", check=False)
        err = refused.stderr.decode()
        assert refused.returncode != 0
        assert f"volume {app} is in use on " in err and "its lease on remote r is held" in err, err
        assert "Traceback" not in err

        docker("rm", "-f", holder)  # its last unmount: snapshot, push, lease released
        s3 = s3_client(ceph)

        def released() -> bool:
            lease = json.loads(s3.get_object(Bucket=bucket, Key=f"fv/leases/{app}")["Body"].read())
            return lease["state"] == "released"

        _wait_for("host A's push and its lease released", released)
        assert any(k.startswith(f"fv/snapshots/{app}/") for k in keys(ceph, bucket, "fv/"))

        # Host B's first mount pulls what A pushed before the container starts.
        on_b = second_docker.out(*RUN, "-v", f"{app}:/data", IMAGE, "sh", "-c", HASH_ALL)
        assert on_b == on_a and "./big" in on_b and "./seed/sub/b.bin" in on_b
        _wait_for("host B's push and its lease released", released)
        for host, dk in ((a, docker), (b, second_docker)):
            for snap in json.loads(run_cli(host.store, "snapshot", "ls", app, "--json").stdout):
                run_cli(host.store, "snapshot", "rm", f"{app}@{snap['name']}")
            dk("volume", "rm", app)


def test_a_big_volume_from_remote_is_pulled_after_create_returns(docker, second_docker, plugin,
                                                                  ceph, tmp_path, monkeypatch,
                                                                  volume_name):
    """dockerd gives Create two minutes: the pull goes on in the daemon after
    Create returns. Inspect shows how far it is, a container started meanwhile
    waits for it (up to a bound, then fails saying so), rm stops it, and a
    daemon started again resumes it. Host B's daemon downloads at 512 KiB/s here,
    so the 12 MiB take seconds."""
    env = aws_env(ceph)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FUSEVOL_PULL_LIMIT", "512K")
    monkeypatch.setenv("FUSEVOL_PULL_BATCH", str(1 << 20))  # progress every MiB
    monkeypatch.setenv("FUSEVOL_PULL_MOUNT_WAIT", "2")
    bucket = new_bucket()
    src = volume_name("bigsrc")
    docker("volume", "create", "-d", plugin.driver_name, src)
    docker(*RUN, "-v", f"{src}:/data", IMAGE, "sh", "-c",
           "head -c 12000000 /dev/urandom > /data/big && cp -a /seed /data/")
    first_host = docker.out(*RUN, "-v", f"{src}:/data", IMAGE, "sh", "-c", HASH_ALL)
    pusher = f"r-{bucket[-8:]}"  # host A's store may have an `r` of an earlier test
    run_cli(plugin.store, "remote", "add", pusher, f"s3://{bucket}/fv", "--endpoint",
            ceph.endpoint, "--create-bucket", env=env)
    run_cli(plugin.store, "snapshot", "create", f"{src}@s1")
    # Packs of 1 MiB: the pull's ranges are small enough to be paced.
    run_cli(plugin.store, "push", f"{src}@s1", pusher,
            env={**env, "FUSEVOL_PACK_SIZE": str(1 << 20)})

    def inspect(dk, name) -> dict:
        return json.loads(dk.out("volume", "inspect", name))[0]

    with Daemon(tmp_path, ceph, bucket) as b:
        copy = volume_name("bigcopy")
        started = time.monotonic()
        second_docker("volume", "create", "-d", b.driver, "-o", f"from-remote=r:{src}@s1", copy)
        assert time.monotonic() - started < 6  # the 12 MiB take 24 s at 512 KiB/s
        # A container started now waits 2 s (here), then says why it cannot start.
        early = second_docker(*RUN, "-v", f"{copy}:/data", IMAGE, "true", check=False)
        err = early.stderr.decode()
        assert early.returncode != 0 and f"volume {copy} is still being pulled from remote r:" \
            f"{src}@s1 (" in err and "MiB" in err and "docker volume inspect" in err, err
        assert "Traceback" not in err

        pull = inspect(second_docker, copy)["Status"]["pull"]
        assert pull["from"] == f"r:{src}@s1" and pull["state"] == "pulling", pull
        _wait_for("the pull's total", lambda: "bytes_total" in
                  inspect(second_docker, copy)["Status"].get("pull", {}), 10)
        pull = inspect(second_docker, copy)["Status"]["pull"]
        assert pull["bytes_total"] > 12_000_000 and pull["bytes_done"] < pull["bytes_total"], pull
        assert copy in second_docker.out("volume", "ls", "-q").split()

        _wait_for("the pull", lambda: "pull" not in inspect(second_docker, copy)["Status"], 60)
        second_host = second_docker.out(*RUN, "-v", f"{copy}:/data", IMAGE, "sh", "-c", HASH_ALL)
        assert second_host == first_host and "./big" in second_host
        assert f"{copy}: pulling r:{src}@s1: " in b.daemon.log()  # progress in the log

        # New data on host A (what host B holds already is not downloaded again).
        docker(*RUN, "-v", f"{src}:/data", IMAGE, "sh", "-c",
               "head -c 12000000 /dev/urandom > /data/big2")
        second = docker.out(*RUN, "-v", f"{src}:/data", IMAGE, "sh", "-c", HASH_ALL)
        run_cli(plugin.store, "snapshot", "create", f"{src}@s2")
        run_cli(plugin.store, "push", f"{src}@s2", pusher,
                env={**env, "FUSEVOL_PACK_SIZE": str(1 << 20)})

        # Removed while pulling: the pull stops, nothing of it is left.
        gone = volume_name("gone")
        second_docker("volume", "create", "-d", b.driver, "-o", f"from-remote=r:{src}@s2", gone)
        time.sleep(1.5)
        assert inspect(second_docker, gone)["Status"]["pull"]["state"] == "pulling"
        second_docker("volume", "rm", gone)
        assert gone not in second_docker.out("volume", "ls", "-q").split()
        assert not any(v["name"] == gone for v in json.loads(
            run_cli(b.store, "volume", "ls", "--json").stdout))
        assert f"{gone}: pulled" not in b.daemon.log()

        # The daemon killed in the middle of a pull: started again, it goes on.
        again = volume_name("again")
        second_docker("volume", "create", "-d", b.driver, "-o", f"from-remote=r:{src}@s2", again)
        time.sleep(1.5)
        b.daemon.kill()
        b.daemon.start()
        assert inspect(second_docker, again)["Status"]["pull"]["state"] == "pulling"
        _wait_for("the resumed pull", lambda: "pull" not in inspect(second_docker, again)["Status"],
                  60)
        assert f"{again}: resuming its pull from r" in b.daemon.log()
        assert second_docker.out(*RUN, "-v", f"{again}:/data", IMAGE, "sh", "-c",
                                 HASH_ALL) == second
        for name, snap in ((copy, "s1"), (again, "s2")):
            run_cli(b.store, "snapshot", "rm", f"{name}@{snap}")
            second_docker("volume", "rm", name)
    for snap in ("s1", "s2"):
        run_cli(plugin.store, "snapshot", "rm", f"{src}@{snap}")
    docker("volume", "rm", src)
    run_cli(plugin.store, "remote", "rm", pusher)


def test_a_newer_snapshot_is_pulled_after_mount_answers(docker, second_docker, ceph, tmp_path,
                                                        monkeypatch, volume_name):
    """A -o remote=NAME volume whose copy on host B is older than the remote's
    newest snapshot: B's first Mount pulls the newer one in the daemon rather
    than inside the Mount (dockerd gives a Mount two minutes). The Mount
    waits for it up to its bound (2 s here), then says how far the pull is;
    inspect shows it; a daemon killed meanwhile resumes it; once pulled, the
    container sees host A's data. Downloads go at 512 KiB/s here, so the
    12 MB take about 24 s."""
    for key, value in aws_env(ceph).items():
        monkeypatch.setenv(key, value)  # both daemons inherit them
    monkeypatch.setenv("FUSEVOL_PULL_LIMIT", "512K")
    monkeypatch.setenv("FUSEVOL_PULL_BATCH", str(1 << 20))  # progress every MiB
    monkeypatch.setenv("FUSEVOL_PULL_MOUNT_WAIT", "2")
    monkeypatch.setenv("FUSEVOL_PACK_SIZE", str(1 << 20))  # ranges small enough to be paced
    bucket = new_bucket()
    app = volume_name("app")
    s3 = s3_client(ceph)

    def released() -> bool:
        lease = json.loads(s3.get_object(Bucket=bucket, Key=f"fv/leases/{app}")["Body"].read())
        return lease["state"] == "released"

    def inspect(dk) -> dict:
        return json.loads(dk.out("volume", "inspect", app))[0]

    with Daemon(tmp_path, ceph, bucket, create_bucket=True) as a, Daemon(tmp_path, ceph, bucket) as b:
        docker("volume", "create", "-d", a.driver, "-o", "remote=r", app)
        docker(*RUN, "-v", f"{app}:/data", IMAGE, "sh", "-c", "echo one > /data/small")
        _wait_for("host A's first push", released)
        # Host B makes the volume (pulled after Create), uses it and lets go.
        second_docker("volume", "create", "-d", b.driver, "-o", "remote=r", app)
        assert second_docker.out(*RUN, "-v", f"{app}:/data", IMAGE, "cat", "/data/small") == "one"
        _wait_for("host B's lease released", released)

        # Host A writes 12 MB more: B's copy is now older than the remote's newest.
        docker(*RUN, "-v", f"{app}:/data", IMAGE, "sh", "-c",
               "head -c 12000000 /dev/urandom > /data/big && echo two > /data/small")
        on_a = docker.out(*RUN, "-v", f"{app}:/data", IMAGE, "sh", "-c", HASH_ALL)
        _wait_for("host A's second push", released)

        started = time.monotonic()
        early = second_docker(*RUN, "-v", f"{app}:/data", IMAGE, "true", check=False)
        answered = time.monotonic() - started
        err = early.stderr.decode()
        assert early.returncode != 0 and f"volume {app} is still being pulled from remote r:" \
            f"{app}@" in err and "MiB" in err and "docker volume inspect" in err, err
        assert answered < 15, answered  # the Mount's bound, not the pull's 24 s
        assert "Traceback" not in err
        pull = inspect(second_docker)["Status"]["pull"]
        assert pull["state"] == "pulling" and pull["bytes_done"] < pull.get("bytes_total", 1 << 40)
        assert released()  # the lease is not held while the pull runs

        # The daemon killed in the middle of that pull: started again, it goes on.
        b.daemon.kill()
        b.daemon.start()
        assert inspect(second_docker)["Status"]["pull"]["state"] == "pulling"
        _wait_for("the pull", lambda: "pull" not in inspect(second_docker)["Status"], 90)
        assert f"{app}: resuming its pull from r" in b.daemon.log()
        on_b = second_docker.out(*RUN, "-v", f"{app}:/data", IMAGE, "sh", "-c", HASH_ALL)
        assert on_b == on_a and "./big" in on_b
        _wait_for("host B's lease released", released)
        for host, dk in ((a, docker), (b, second_docker)):
            for snap in json.loads(run_cli(host.store, "snapshot", "ls", app, "--json").stdout):
                run_cli(host.store, "snapshot", "rm", f"{app}@{snap['name']}")
            dk("volume", "rm", app)
