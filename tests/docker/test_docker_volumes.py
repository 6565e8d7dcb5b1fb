"""fusevol as the volume driver of a real dockerd, driven through the docker CLI."""

import datetime
import errno
import json
import os
import signal
import time

import pytest

from docker_env import IMAGE, docker, plugin, volume_name  # noqa: F401 (fixtures)

pytestmark = pytest.mark.docker

RUN = ("run", "--rm", "--network", "none")


@pytest.fixture
def vol(docker, plugin, volume_name):
    """Create fusevol volumes for a test (`vol(*opts)` -> name); remove them after it."""
    made = []

    def create(*opts: str, prefix: str = "v") -> str:
        name = volume_name(prefix)
        args = ["volume", "create", "-d", plugin.driver_name, name]
        for opt in opts:
            args += ["-o", opt]
        assert docker.out(*args) == name
        made.append(name)
        return name

    yield create
    for name in reversed(made):  # views before their sources
        docker("volume", "rm", "-f", name, check=False)


def sh(docker, volume_args, script: str, *run_args: str, check: bool = True):
    return docker(*RUN, *run_args, *volume_args, IMAGE, "sh", "-c", script, check=check)


def text(proc) -> str:
    return (proc.stdout + proc.stderr).decode(errors="replace")


def test_create_ls_inspect_rm(docker, plugin, vol):
    name = vol("size=64M", "compression=none")
    listed = docker.out("volume", "ls", "--format", "{{.Driver}} {{.Name}}").splitlines()
    assert f"{plugin.driver_name} {name}" in listed

    sh(docker, ["-v", f"{name}:/data"], "head -c 300000 /dev/urandom > /data/f")
    [info] = json.loads(docker.out("volume", "inspect", name))
    assert info["Driver"] == plugin.driver_name and info["Scope"] == "local"
    assert info["Options"] == {"size": "64M", "compression": "none"}
    created = datetime.datetime.fromisoformat(info["CreatedAt"])
    assert abs(datetime.datetime.now(datetime.timezone.utc) - created) < datetime.timedelta(hours=1)
    status = info["Status"]
    assert status["quota_bytes"] == 64 << 20 and status["compression"] == "none"
    assert status["logical_bytes"] == 300000 and status["mounts"] == 0
    assert status["readonly"] is False and status["store_dedup_ratio"] >= 1.0

    docker("volume", "rm", name)
    assert name not in docker.out("volume", "ls", "-q").split()
    assert plugin.call("/VolumeDriver.Get", {"Name": name})[0] == 500  # gone from the store


def test_prune_and_rm_in_use(docker, vol):
    # dockerd prunes volumes of its local driver only (moby volume/service Prune filters
    # ByDriver("local")): a plugin's volumes are left to `docker volume rm`.
    unused, used = vol(), vol()
    local = docker.out("volume", "create", "--label", "fv-test=1")
    container = docker.out("create", "-v", f"{used}:/data", IMAGE, "true")
    try:
        pruned = docker.out("volume", "prune", "-f")
        assert local in pruned and unused not in pruned
        names = docker.out("volume", "ls", "-q").split()
        assert unused in names and used in names and local not in names
        proc = docker("volume", "rm", used, check=False)
        assert proc.returncode != 0 and "in use" in text(proc)
    finally:
        docker("rm", container)
    docker("volume", "rm", used, unused)
    assert used not in docker.out("volume", "ls", "-q").split()


@pytest.mark.parametrize("args, message", [
    (["-o", "colour=red"], "unknown option colour: allowed are readonly"),
    (["-o", "size=big"], "invalid size 'big'"),
    (["-o", "readonly=perhaps"], "readonly='perhaps': use true or false"),
    (["-o", "subpath=x"], "subpath needs source"),
])
def test_bad_options_are_refused(docker, plugin, volume_name, args, message):
    name = volume_name()
    proc = docker("volume", "create", "-d", plugin.driver_name, *args, name, check=False)
    assert proc.returncode != 0 and message in text(proc)
    assert name not in docker.out("volume", "ls", "-q").split()


@pytest.mark.parametrize("name", ["a/b", "..", "../escape"])
def test_bad_names_are_refused(docker, plugin, name):
    proc = docker("volume", "create", "-d", plugin.driver_name, name, check=False)
    assert proc.returncode != 0
    assert f"invalid volume name '{name}'" in text(proc)
    assert docker("volume", "ls").returncode == 0  # both daemons still serve


def test_changed_options_on_create(docker, plugin, vol):
    name = vol("size=1M")
    # dockerd asks Get first and skips Create for a volume that exists; ask the plugin itself.
    status, reply = plugin.call("/VolumeDriver.Create", {"Name": name, "Opts": {"size": "2M"}})
    assert status == 500 and "options cannot be changed after create" in reply["Err"]
    assert plugin.call("/VolumeDriver.Create", {"Name": name, "Opts": {"size": "1M"}}) == (200, {})


def test_data_passes_between_containers(docker, vol):
    name = vol()
    sh(docker, ["-v", f"{name}:/data"],
       "mkdir -p /data/dir && echo hello > /data/dir/greeting && "
       "head -c 5000000 /dev/urandom > /data/blob && md5sum /data/blob > /data/blob.md5")
    out = sh(docker, ["-v", f"{name}:/data"], "cat /data/dir/greeting && md5sum -c /data/blob.md5")
    assert b"hello" in out.stdout and b"/data/blob: OK" in out.stdout


def test_read_only_mounts(docker, vol):
    name = vol()
    sh(docker, ["-v", f"{name}:/data"], "echo original > /data/f")
    for volume_args in (["-v", f"{name}:/data:ro"],
                        ["--mount", f"type=volume,src={name},dst=/data,readonly"]):
        proc = sh(docker, volume_args, "cat /data/f; echo new > /data/f", check=False)
        assert proc.returncode != 0
        assert "original" in text(proc) and "Read-only file system" in text(proc)
    assert sh(docker, ["-v", f"{name}:/data"], "cat /data/f").stdout == b"original\n"

    # A readonly=true volume refuses writes whatever the container asks for. (dockerd's
    # copy-up would chmod an empty volume's root where the image has that folder, so
    # mount it elsewhere or with volume-nocopy.)
    frozen = vol("readonly=true")
    for target, volume_args in (
            ("/frozen", ["-v", f"{frozen}:/frozen"]),
            ("/frozen", ["-v", f"{frozen}:/frozen:rw"]),
            ("/seed", ["--mount", f"type=volume,src={frozen},dst=/seed,volume-nocopy"])):
        proc = sh(docker, volume_args, f"mkdir {target}/x", check=False)
        assert proc.returncode != 0 and "Read-only file system" in text(proc)
    proc = sh(docker, ["-v", f"{frozen}:/data"], "true", check=False)
    assert proc.returncode != 0 and "read-only file system" in text(proc)


def test_view_volume_shows_only_its_folder(docker, vol):
    src = vol(prefix="src")
    sh(docker, ["-v", f"{src}:/data"],
       "mkdir -p /data/shared /data/private && echo visible > /data/shared/f && "
       "echo 'not for views' > /data/private/secret")
    view = vol(f"source={src}", "subpath=shared", prefix="view")
    frozen = vol(f"source={src}", "subpath=shared", "readonly=true", prefix="roview")

    assert sh(docker, ["-v", f"{view}:/data"], "ls -A /data").stdout == b"f\n"
    proc = sh(docker, ["-v", f"{view}:/data"],
              "echo written > /data/from-view; cat /data/../private/secret; "
              "grep -rs 'not for views' / --exclude-dir=proc --exclude-dir=sys; true")
    assert "not for views" not in text(proc)
    assert sh(docker, ["-v", f"{src}:/data"], "cat /data/shared/from-view").stdout == b"written\n"

    proc = sh(docker, ["-v", f"{frozen}:/data"], "cat /data/f; touch /data/g", check=False)
    assert proc.returncode != 0 and "visible" in text(proc) and "Read-only file system" in text(proc)

    bad = vol(f"source={src}", "subpath=nowhere", prefix="badview")
    proc = sh(docker, ["-v", f"{bad}:/data"], "true", check=False)
    assert proc.returncode != 0 and "folder nowhere does not exist" in text(proc)

    # A source removed before its views: gone by name, its data kept for them.
    docker("volume", "rm", src)
    assert src not in docker.out("volume", "ls", "-q").split()
    assert sh(docker, ["-v", f"{view}:/data"], "cat /data/f").stdout == b"visible\n"


def test_two_containers_write_at_once(docker, vol):
    name = vol()
    script = ("i=0; while [ $i -lt 40 ]; do "
              "head -c $((100000 + i * 997)) /dev/urandom > /data/$W-$i; i=$((i+1)); done; "
              "cd /data && md5sum $W-* > /data/$W.md5")
    writers = [docker.popen(*RUN, "-e", f"W={w}", "-v", f"{name}:/data", IMAGE, "sh", "-c", script)
               for w in ("left", "right")]
    for w in writers:
        _, err = w.communicate(timeout=180)
        assert w.returncode == 0, err
    out = sh(docker, ["-v", f"{name}:/data"], "cd /data && ls | wc -l && md5sum -c left.md5 right.md5")
    lines = out.stdout.decode().splitlines()
    assert lines[0].strip() == "82"
    assert len([l for l in lines[1:] if l.endswith(": OK")]) == 80


def test_unprivileged_user(docker, vol):
    name = vol()
    sh(docker, ["-v", f"{name}:/data"], "mkdir /data/mine && chown 1000:1000 /data/mine")
    proc = sh(docker, ["-v", f"{name}:/data"],
              "echo mine > /data/mine/f && stat -c %u:%g /data/mine/f && touch /data/not-mine",
              "--user", "1000:1000", check=False)
    assert proc.returncode != 0
    assert proc.stdout.decode().splitlines() == ["1000:1000"]
    assert "Permission denied" in text(proc)
    assert sh(docker, ["-v", f"{name}:/data"], "ls /data").stdout.split() == [b"mine"]


def test_copy_up_fills_an_empty_volume(docker, vol):
    name = vol()
    sh(docker, ["-v", f"{name}:/seed"], "true")
    out = sh(docker, ["-v", f"{name}:/data"],
             "cd /data && stat -c '%n %u %a' a.txt && readlink link && cat link && md5sum sub/b.bin")
    lines = out.stdout.decode().splitlines()
    assert lines[:3] == ["a.txt 1000 640", "a.txt", "seeded by the image"]
    image_md5 = sh(docker, [], "md5sum /seed/sub/b.bin").stdout.split()[0]
    assert lines[3].split()[0].encode() == image_md5

    nocopy = vol()
    out = sh(docker, ["--mount", f"type=volume,src={nocopy},dst=/seed,volume-nocopy"], "ls -A /seed")
    assert out.stdout == b""
    assert sh(docker, ["-v", f"{nocopy}:/data"], "ls -A /data").stdout == b""


def test_an_xattr_off_volume_takes_copy_up_and_writes(docker, plugin, vol):
    name = vol("xattr=off")
    # Docker copies the image's /seed into the new volume, then the container writes.
    sh(docker, ["-v", f"{name}:/seed"], "echo written > /seed/new.txt && "
       "dd if=/dev/zero of=/seed/zeros bs=4096 count=256 2>/dev/null")
    out = sh(docker, ["-v", f"{name}:/data"],
             "cd /data && stat -c '%n %u %a' a.txt && cat a.txt new.txt && wc -c < zeros && "
             "md5sum sub/b.bin")
    lines = out.stdout.decode().splitlines()
    assert lines[:4] == ["a.txt 1000 640", "seeded by the image", "written", "1048576"]
    assert lines[4].split()[0].encode() == sh(docker, [], "md5sum /seed/sub/b.bin").stdout.split()[0]
    [info] = json.loads(docker.out("volume", "inspect", name))
    assert info["Options"] == {"xattr": "off"} and info["Status"]["xattr"] is False
    container = docker.out("run", "-d", "--network", "none", "-v", f"{name}:/data", IMAGE,
                           "sleep", "60")
    try:
        with pytest.raises(OSError) as refused:
            os.setxattr(os.path.join(plugin.mountpoint_of(name), "new.txt"), "user.a", b"1")
        assert refused.value.errno == errno.EOPNOTSUPP
    finally:
        docker("rm", "-f", container)


def test_plugin_killed_while_a_container_writes(docker, plugin, vol):
    name = vol()
    count = 200
    container = docker.out(
        "run", "-d", "--network", "none", "-v", f"{name}:/data", IMAGE, "sh", "-c",
        f"i=0; while [ $i -lt {count} ]; do echo line-$i > /data/f$i || exit 7; "
        "i=$((i+1)); usleep 20000; done")
    try:
        deadline = time.monotonic() + 60
        while not any(f.startswith("f") for f in os.listdir(plugin.mountpoint_of(name))):
            assert time.monotonic() < deadline, "the container wrote nothing"
            time.sleep(0.05)
        plugin.kill(signal.SIGKILL)
        time.sleep(0.5)  # the container keeps writing with no daemon at all
        plugin.start()
        assert name in docker.out("volume", "ls", "-q").split()
        assert docker.out("wait", container, timeout=120) == "0"
    finally:
        docker("rm", "-f", container, check=False)
    out = sh(docker, ["-v", f"{name}:/data"], "cat /data/f*")
    assert sorted(out.stdout.decode().split()) == sorted(f"line-{i}" for i in range(count))
    [info] = json.loads(docker.out("volume", "inspect", name))
    assert info["Status"]["mounts"] == 0
    plugin.wait_idle_workers_stopped()


def test_docker_cp_mounts_the_same_id_twice(docker, plugin, vol, tmp_path):
    name = vol()
    (tmp_path / "note").write_text("copied in\n")
    container = docker.out("run", "-d", "--network", "none", "-v", f"{name}:/data", IMAGE,
                           "sleep", "300")
    try:
        # dockerd mounts the volume again under the container's own ID, then unmounts it.
        docker("cp", str(tmp_path / "note"), f"{container}:/data/note")
        assert docker.out("exec", container, "cat", "/data/note") == "copied in"
        assert plugin.call("/VolumeDriver.Get", {"Name": name})[1]["Volume"]["Status"]["mounts"] == 1
    finally:
        docker("rm", "-f", container)
    assert plugin.call("/VolumeDriver.Get", {"Name": name})[1]["Volume"]["Status"]["mounts"] == 0
    plugin.wait_idle_workers_stopped()


def test_volume_from_snapshot(docker, plugin, vol):
    from conftest import run_cli

    origin = vol()
    sh(docker, ["-v", f"{origin}:/data"], "echo first > /data/f")
    run_cli(plugin.store, "snapshot", "create", f"{origin}@s1")
    sh(docker, ["-v", f"{origin}:/data"], "echo second > /data/f")

    clone = vol(f"from-snapshot={origin}@s1")
    assert sh(docker, ["-v", f"{clone}:/data"], "cat /data/f").stdout == b"first\n"
    frozen = vol("readonly=true", f"from-snapshot={origin}@s1")
    refused = sh(docker, ["-v", f"{frozen}:/data"], "cat /data/f; echo x > /data/f", check=False)
    assert refused.stdout == b"first\n" and b"Read-only file system" in refused.stderr
    assert sh(docker, ["-v", f"{origin}:/data"], "cat /data/f").stdout == b"second\n"

    bad = docker("volume", "create", "-d", plugin.driver_name, "-o", f"from-snapshot={origin}@nope",
                 volume_name_unused(), check=False)
    assert bad.returncode != 0 and b"no such snapshot" in bad.stderr


def volume_name_unused() -> str:
    return "fv-never-" + os.urandom(4).hex()


def test_rollback_refused_while_containers_use_the_volume(docker, plugin, vol):
    from conftest import run_cli

    name = vol()
    sh(docker, ["-v", f"{name}:/data"], "echo before > /data/f")
    run_cli(plugin.store, "snapshot", "create", f"{name}@s")
    cid = docker.out("run", "-d", "--network", "none", "-v", f"{name}:/data", IMAGE,
                     "sh", "-c", "echo after > /data/f; sleep 120")
    try:
        refused = run_cli(plugin.store, "rollback", "--force", f"{name}@s", check=False)
        assert refused.returncode != 0 and b"in use by containers" in refused.stderr
        assert sh(docker, ["-v", f"{name}:/data"], "cat /data/f").stdout == b"after\n"
    finally:
        docker("rm", "-f", cid)
    run_cli(plugin.store, "rollback", f"{name}@s")  # no container left: allowed
    assert sh(docker, ["-v", f"{name}:/data"], "cat /data/f").stdout == b"before\n"


def test_snapshot_of_a_volume_in_use_holds_what_the_container_wrote(docker, plugin, vol):
    from conftest import run_cli

    name = vol()
    cid = docker.out("run", "-d", "--network", "none", "-v", f"{name}:/data", IMAGE,
                     "sh", "-c", "echo written > /data/f; touch /data/done; sleep 120")
    try:
        for _ in range(100):
            if sh(docker, ["-v", f"{name}:/data"], "test -e /data/done", check=False).returncode == 0:
                break
        run_cli(plugin.store, "snapshot", "create", f"{name}@live")
    finally:
        docker("rm", "-f", cid)
    clone = vol(f"from-snapshot={name}@live")
    assert sh(docker, ["-v", f"{clone}:/data"], "cat /data/f").stdout == b"written\n"
