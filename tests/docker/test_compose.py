"""examples/compose.yaml through docker-compose (Debian's 1.29): up, write through a
volume, read through its view, `down -v`, with the view declared after or before its
source. The example runs as written but for what this machine lacks: its images are
the tests' busybox image, its driver the test plugin, its fixed volume name unique."""

import os
import shutil
import subprocess
import uuid

import pytest
import yaml

from docker_env import IMAGE, docker, plugin  # noqa: F401  (fixtures)

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT_DIR, "examples", "compose.yaml")

pytestmark = [pytest.mark.docker, pytest.mark.skipif(shutil.which("docker-compose") is None,
                                reason="docker-compose is not installed (scripts/setup.sh --test)")]


def _adapted(driver: str, uploads: str, view_first: bool) -> dict:
    with open(EXAMPLE) as f:
        spec = yaml.safe_load(f)
    for service in spec["services"].values():
        service["image"] = IMAGE
        service["command"] = ["sleep", "3600"]
        service["network_mode"] = "none"  # the test dockerd has no bridge
        service.pop("environment", None)
    # The view's folder must exist before the view's first mount.
    spec["services"]["prepare"] = {"image": IMAGE, "command": ["mkdir", "-p", "/u/public"],
                                   "volumes": ["uploads:/u"], "network_mode": "none"}
    for volume in spec["volumes"].values():
        volume["driver"] = driver
        opts = volume.get("driver_opts") or {}
        if opts.get("source") == "uploads":
            opts["source"] = uploads
    assert spec["volumes"]["uploads"]["name"] == "uploads"
    spec["volumes"]["uploads"]["name"] = uploads
    if view_first:
        spec["volumes"] = dict(sorted(spec["volumes"].items(), key=lambda kv: kv[0] != "site"))
    return spec


@pytest.mark.parametrize("order", ["source-first", "view-first"])
def test_compose_example_up_write_read_down(docker, plugin, tmp_path, order):  # noqa: F811
    uploads = f"cmp-uploads-{uuid.uuid4().hex[:6]}"
    project = f"cmp{uuid.uuid4().hex[:6]}"
    spec = _adapted(plugin.driver_name, uploads, view_first=order == "view-first")
    names = list(spec["volumes"])
    assert (names.index("site") < names.index("uploads")) == (order == "view-first")
    compose_file = tmp_path / "compose.yaml"
    compose_file.write_text(yaml.safe_dump(spec, sort_keys=False))

    def compose(*args, check=True):
        proc = subprocess.run(["docker-compose", "-f", str(compose_file), "-p", project, *args],
                              capture_output=True, env=docker.env, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stderr.decode(errors='replace')}")
        return proc

    try:
        compose("run", "--rm", "prepare")
        compose("up", "-d", "db", "web")
        compose("exec", "-T", "web", "sh", "-c",
                "echo uploaded > /srv/uploads/public/hello && sync")
        out = compose("exec", "-T", "web", "cat", "/usr/share/nginx/html/hello").stdout
        assert out == b"uploaded\n"
        proc = compose("exec", "-T", "web", "touch", "/usr/share/nginx/html/x", check=False)
        assert proc.returncode != 0  # the view is read-only
        compose("exec", "-T", "db", "sh", "-c", "echo row > /var/lib/postgresql/data/t")
    finally:
        down = compose("down", "-v", check=False)
    assert down.returncode == 0, down.stderr.decode(errors="replace")
    left = docker.out("volume", "ls", "-q").split()
    assert not [v for v in left if v.startswith(project) or v == uploads]
    # The driver let go of everything too: no volume, no worker, no mount.
    status, reply = plugin.call("/VolumeDriver.List")
    assert status == 200 and not [v for v in reply["Volumes"]
                                  if v["Name"].startswith(project) or v["Name"] == uploads]
    plugin.wait_idle_workers_stopped()
