"""Docker end to end with a remote: a volume made on a second host (another
store behind another plugin of the same dockerd) from a snapshot that the first
pushed to a real S3 server, read by a container byte for byte."""

import uuid

from conftest import run_cli
from docker_env import IMAGE, docker, plugin, volume_name  # noqa: F401 (fixtures)
from plugin_daemon import PluginDaemon
from remote_helpers import aws_env, new_bucket

RUN = ("run", "--rm", "--network", "none")
HASH_ALL = "cd /data && find . -type f | sort | xargs sha256sum"


def test_volume_from_remote_on_a_second_host(docker, plugin, ceph, tmp_path, monkeypatch,
                                             volume_name):
    env = aws_env(ceph)
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the second plugin daemon inherits them
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

    driver = f"fv-{uuid.uuid4().hex[:8]}"
    second = PluginDaemon(str(tmp_path / "store-b"), f"/run/docker/plugins/{driver}.sock",
                          str(tmp_path / "serve-b.log"))
    run_cli(second.store, "remote", "add", "r", f"s3://{bucket}/fv", "--endpoint", ceph.endpoint)
    second.start()
    try:
        copy = volume_name("copy")
        docker("volume", "create", "-d", driver, "-o", f"from-remote=r:{src}@s1", copy)
        second_host = docker.out(*RUN, "-v", f"{copy}:/data", IMAGE, "sh", "-c", HASH_ALL)
        assert second_host == first_host and "./big" in second_host and "./seed/a.txt" in second_host
        bad = docker("volume", "create", "-d", driver, "-o", f"from-remote=r:{src}@nope",
                     volume_name("bad"), check=False)
        assert bad.returncode != 0 and f"has no snapshot {src}@nope".encode() in bad.stderr
        # A pulled volume holds the snapshot it came from, as a received one does.
        run_cli(second.store, "snapshot", "rm", f"{copy}@s1")
        docker("volume", "rm", copy)
    finally:
        second.cleanup()
    run_cli(plugin.store, "snapshot", "rm", f"{src}@s1")
    docker("volume", "rm", src)
