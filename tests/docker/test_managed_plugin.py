"""fusevol as a Docker managed plugin: scripts/build-plugin.py builds it offline,
`docker plugin create` and `enable` install it in the test dockerd, and containers
use its volumes; the store is a folder of the host, so it outlives the plugin."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from conftest import run_cli
from docker_env import IMAGE, docker  # noqa: F401  (fixtures)

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.docker

RUN = ("run", "--rm", "--network", "none")


@pytest.fixture(scope="module")
def managed(docker, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("managed") / "plugin"
    subprocess.run([sys.executable, os.path.join(ROOT_DIR, "scripts", "build-plugin.py"), str(out)],
                   check=True, capture_output=True, timeout=600)
    with open(out / "config.json") as f:
        config = json.load(f)
    assert config["interface"]["types"] == ["docker.volumedriver/1.0"]
    name = f"fvm-{uuid.uuid4().hex[:8]}:latest"
    store = tmp_path_factory.mktemp("managed-store")
    docker("plugin", "create", name, str(out), timeout=600)
    docker("plugin", "set", name, f"store.source={store}")
    docker("plugin", "enable", name, timeout=120)
    yield name, str(store)
    docker("plugin", "disable", "-f", name, check=False, timeout=120)
    docker("plugin", "rm", "-f", name, check=False, timeout=120)


def test_containers_use_volumes_of_the_managed_plugin(docker, managed):  # noqa: F811
    plugin, store = managed
    assert docker.out("plugin", "inspect", "-f", "{{.Enabled}}", plugin) == "true"
    docker("volume", "create", "-d", plugin, "-o", "size=64M", "mdata")
    docker(*RUN, "-v", "mdata:/data", IMAGE, "sh", "-c",
           "mkdir /data/public && echo managed > /data/public/f && "
           "dd if=/dev/zero of=/data/zeros bs=1M count=4 2>/dev/null")
    docker("volume", "create", "-d", plugin, "-o", "source=mdata", "-o", "subpath=public",
           "-o", "readonly=true", "mview")
    out = docker(*RUN, "-v", "mdata:/data", "-v", "mview:/view", IMAGE, "sh", "-c",
                 "cat /data/public/f /view/f; touch /view/x 2>&1; true").stdout
    assert out.startswith(b"managed\nmanaged\n") and b"Read-only file system" in out
    # The volumes live in the host's store, as the CLI there sees them.
    listed = json.loads(run_cli(store, "volume", "ls", "--json").stdout)
    assert {v["name"] for v in listed} == {"mdata", "mview"}
    names = docker.out("volume", "ls", "-q", "-f", f"driver={plugin}").split()
    assert sorted(names) == ["mdata", "mview"]
    docker("volume", "rm", "mdata", "mview")
    assert json.loads(run_cli(store, "volume", "ls", "--json").stdout) == []


def test_volumes_outlive_the_plugin_being_disabled(docker, managed):  # noqa: F811
    plugin, store = managed
    docker("volume", "create", "-d", plugin, "kept")
    docker(*RUN, "-v", "kept:/data", IMAGE, "sh", "-c", "echo kept > /data/f")
    docker("plugin", "disable", "-f", plugin, timeout=120)  # -f: volumes of it exist
    docker("plugin", "enable", plugin, timeout=120)
    assert docker(*RUN, "-v", "kept:/data", IMAGE, "cat", "/data/f").stdout == b"kept\n"
    docker("volume", "rm", "kept")
