"""The VolumeDriver handlers called directly (no socket), over a real store and real mounts."""

import datetime
import errno
import os
import signal
import time

import pytest

from conftest import needs_fuse
from fusevol.errors import AlreadyExists, Busy, FusevolError, InvalidArgument, NotFound
from fusevol.fs import mount
from fusevol.plugin.protocol import Driver, decode_request, error_reply
from fusevol.plugin.supervisor import Supervisor
from fusevol.store import volumes
from plugin_daemon import mounts_under, stop_driver_mounts, unmount_under


@pytest.fixture
def driver(store_path):
    d = Driver(Supervisor(store_path))
    yield d
    if os.path.isdir(d.sup.mnt_dir):
        stop_driver_mounts(store_path, d.sup.mnt_dir)


def workers_of(store_path: str, name: str) -> list:
    return [w for w in mount.workers(store_path) if w.volume == name]


# -- without mounts -------------------------------------------------------------------

def test_activate_and_capabilities(driver):
    assert driver.activate({}) == {"Implements": ["VolumeDriver"]}
    assert driver.capabilities({}) == {"Capabilities": {"Scope": "local"}}


def test_create_get_list(driver):
    assert driver.create({"Name": "alpha", "Opts": None}) == {}
    assert driver.create({"Name": "beta", "Opts": {"size": "10M", "compression": "none"}}) == {}
    vol = driver.get({"Name": "beta"})["Volume"]
    assert vol["Name"] == "beta"
    assert "Mountpoint" not in vol  # not mounted
    created = datetime.datetime.fromisoformat(vol["CreatedAt"])
    assert created.tzinfo is not None
    assert abs(datetime.datetime.now(datetime.timezone.utc) - created) < datetime.timedelta(hours=1)
    status = vol["Status"]
    assert status["quota_bytes"] == 10 << 20
    assert status["compression"] == "none"
    assert status["mounts"] == 0 and status["readonly"] is False
    assert status["logical_bytes"] == 0 and status["store_dedup_ratio"] == 1.0
    names = [v["Name"] for v in driver.list({})["Volumes"]]
    assert names == ["alpha", "beta"]
    assert all(v["CreatedAt"] for v in driver.list({})["Volumes"])


def test_repeated_create(driver):
    driver.create({"Name": "vol", "Opts": {"size": "1M"}})
    assert driver.create({"Name": "vol", "Opts": {"size": "1048576"}}) == {}  # same setting
    with pytest.raises(AlreadyExists, match="options cannot be changed after create"):
        driver.create({"Name": "vol", "Opts": {"size": "2M"}})
    with pytest.raises(AlreadyExists, match="size=1M"):
        driver.create({"Name": "vol", "Opts": {}})


@pytest.mark.parametrize("opts, message", [
    ({"colour": "blue"}, r"unknown option colour: allowed are readonly"),
    ({"size": "lots"}, r"invalid size 'lots'"),
    ({"readonly": "maybe"}, r"readonly='maybe': use true or false"),
    ({"compression": "lz4"}, r"compression='lz4': use zstd or none"),
    ({"subpath": "x"}, r"subpath needs source"),
    ({"size": 5}, r"option size needs a string value"),
    ("size=1", r"options must be a map"),
])
def test_create_bad_options(driver, opts, message):
    with pytest.raises(FusevolError, match=message):
        driver.create({"Name": "vol", "Opts": opts})
    assert driver.list({}) == {"Volumes": []}


@pytest.mark.parametrize("name", ["a/b", "..", "../etc", "x/../y", "/abs", ".hidden", "", None, 7])
def test_bad_names(driver, name):
    for call in (driver.create, driver.get, driver.remove, driver.path):
        with pytest.raises(InvalidArgument):
            call({"Name": name})
    with pytest.raises(InvalidArgument):
        driver.mount({"Name": name, "ID": "x"})


def test_missing_volume(driver):
    with pytest.raises(NotFound, match="no such volume: ghost"):
        driver.get({"Name": "ghost"})
    with pytest.raises(NotFound):
        driver.remove({"Name": "ghost"})
    assert driver.unmount({"Name": "ghost", "ID": "x"}) == {}  # harmless


def test_remove(driver):
    driver.create({"Name": "src"})
    driver.create({"Name": "view", "Opts": {"source": "src", "subpath": "d"}})
    assert driver.remove({"Name": "view"}) == {}
    assert driver.remove({"Name": "src"}) == {}
    assert driver.list({}) == {"Volumes": []}


def test_a_source_removed_before_its_views_goes_with_its_last_view(driver, store_path):
    """docker-compose down -v removes volumes in the order its file names them."""
    driver.create({"Name": "src"})
    for view in ("v1", "v2"):
        driver.create({"Name": view, "Opts": {"source": "src", "subpath": "d"}})
    assert driver.remove({"Name": "src"}) == {}
    # Gone for whoever names it...
    assert [v["Name"] for v in driver.list({})["Volumes"]] == ["v1", "v2"]
    with pytest.raises(NotFound, match="no such volume: src .*views \\(v1, v2\\)"):
        driver.get({"Name": "src"})
    with pytest.raises(AlreadyExists, match="its data stays until its views"):
        driver.create({"Name": "src"})
    with pytest.raises(NotFound):
        driver.create({"Name": "v3", "Opts": {"source": "src", "subpath": "d"}})
    # ...but its data stays for its views, until the last one goes.
    store = driver.store
    with store.read() as txn:
        vid = volumes.get(txn, "src", removed_ok=True).vid
    assert driver.remove({"Name": "v1"}) == {}
    with store.read() as txn:
        assert volumes.get(txn, "src", removed_ok=True).removed is True
    assert driver.remove({"Name": "v2"}) == {}
    with store.read() as txn:
        assert volumes.get(txn, "src", missing_ok=True, removed_ok=True) is None
        assert txn.vstats(vid).inodes == 0
    driver.create({"Name": "src"})  # the name is free again


def test_a_view_may_be_created_before_its_source(driver):
    """docker-compose creates volumes in the order its file names them."""
    driver.create({"Name": "view", "Opts": {"source": "later", "subpath": "d"}})
    assert driver.get({"Name": "view"})["Volume"]["Status"]["logical_bytes"] == 0
    with pytest.raises(NotFound, match="view of volume later, which does not exist"):
        driver.mount({"Name": "view", "ID": "c1"})
    driver.create({"Name": "other", "Opts": {"source": "view2", "subpath": "d"}})
    driver.create({"Name": "view2", "Opts": {"source": "later", "subpath": "d"}})
    with pytest.raises(InvalidArgument, match="itself a view"):
        driver.mount({"Name": "other", "ID": "c1"})
    driver.create({"Name": "later"})
    assert driver.get({"Name": "view"})["Volume"]["Status"]["source"] == "later"
    for name in ("other", "view2", "later", "view"):  # a source with views only marked...
        driver.remove({"Name": name})
    assert driver.list({}) == {"Volumes": []}  # ...and gone with its last view


@pytest.mark.parametrize("opts, message", [
    ({"atime": "sometimes"}, r"atime='sometimes': use noatime, relatime or strictatime"),
    ({"suid": "maybe"}, r"suid='maybe': use true or false"),
    ({"xattr": "maybe"}, r"xattr='maybe': use on or off"),
    ({"source": "src", "subpath": "d", "dev": "true"}, r"a view .* takes only subpath"),
])
def test_bad_mount_settings(driver, opts, message):
    driver.create({"Name": "src"})
    with pytest.raises(FusevolError, match=message):
        driver.create({"Name": "vol", "Opts": opts})


@needs_fuse
def test_atime_suid_and_dev_as_driver_options(driver):
    driver.create({"Name": "plain"})
    driver.create({"Name": "vol", "Opts": {"atime": "strictatime", "suid": "true", "dev": "true"}})
    assert driver.create({"Name": "vol", "Opts": {"atime": "strictatime", "suid": "yes",
                                                  "dev": "1"}}) == {}
    with pytest.raises(AlreadyExists, match="options cannot be changed"):
        driver.create({"Name": "vol", "Opts": {"atime": "relatime"}})
    flags = {}
    for name in ("plain", "vol"):
        path = driver.mount({"Name": name, "ID": "c1"})["Mountpoint"]
        with open("/proc/self/mountinfo") as f:
            flags[name] = next(set(line.split()[5].split(",")) for line in f
                               if line.split()[4] == path)
        with open(os.path.join(path, "f"), "w") as f:
            f.write("x")
        os.utime(os.path.join(path, "f"), (1000, 1000))
        with open(os.path.join(path, "f")) as f:
            f.read()
        flags[name].add(f"atime-renewed={os.stat(os.path.join(path, 'f')).st_atime > 1000}")
        driver.unmount({"Name": name, "ID": "c1"})
    assert flags["plain"] >= {"nosuid", "nodev", "noatime", "atime-renewed=False"}
    assert not flags["vol"] & {"nosuid", "nodev", "noatime"}
    assert "atime-renewed=True" in flags["vol"]


@needs_fuse
def test_xattr_off_as_a_driver_option(driver):
    driver.create({"Name": "bare", "Opts": {"xattr": "off"}})
    assert driver.create({"Name": "bare", "Opts": {"xattr": "false"}}) == {}  # the same setting
    with pytest.raises(AlreadyExists, match="options cannot be changed"):
        driver.create({"Name": "bare", "Opts": {}})
    assert driver.get({"Name": "bare"})["Volume"]["Status"]["xattr"] is False
    path = driver.mount({"Name": "bare", "ID": "c1"})["Mountpoint"]
    with open(os.path.join(path, "f"), "w") as f:
        f.write("x")
    with pytest.raises(OSError) as info:
        os.setxattr(os.path.join(path, "f"), "user.a", b"1")
    assert info.value.errno == errno.EOPNOTSUPP
    driver.unmount({"Name": "bare", "ID": "c1"})


@needs_fuse
def test_worker_logs_go_with_their_volume(driver, store_path):
    driver.create({"Name": "vol"})
    driver.mount({"Name": "vol", "ID": "c1"})
    driver.unmount({"Name": "vol", "ID": "c1"})
    log = os.path.join(store_path, "run", "log", "vol.log")
    assert "serves at" in open(log).read()
    driver.remove({"Name": "vol"})
    assert not os.path.exists(log)


@needs_fuse
def test_a_view_serves_after_its_source_was_removed(driver, store_path):
    driver.create({"Name": "src"})
    path = driver.mount({"Name": "src", "ID": "c1"})["Mountpoint"]
    os.mkdir(os.path.join(path, "d"))
    with open(os.path.join(path, "d", "f"), "w") as f:
        f.write("kept")
    driver.unmount({"Name": "src", "ID": "c1"})
    driver.create({"Name": "view", "Opts": {"source": "src", "subpath": "d"}})
    driver.remove({"Name": "src"})
    view = driver.mount({"Name": "view", "ID": "c2"})["Mountpoint"]
    with open(os.path.join(view, "f")) as f:
        assert f.read() == "kept"
    with pytest.raises(Busy, match="mounted"):
        driver.remove({"Name": "view"})
    driver.unmount({"Name": "view", "ID": "c2"})
    driver.remove({"Name": "view"})
    assert driver.list({}) == {"Volumes": []}
    assert mount.workers(store_path) == []
    assert not os.path.exists(os.path.join(store_path, "mnt", "src"))


def test_decode_request():
    assert decode_request(b"") == {}
    assert decode_request(b'{"Name": "x"}') == {"Name": "x"}
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        decode_request(b"{nope")
    with pytest.raises(InvalidArgument, match="must be a JSON object"):
        decode_request(b"[1, 2]")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        decode_request(b"\xff\xfe")
    assert error_reply(InvalidArgument("bad")) == {"Err": "bad"}
    assert error_reply(ValueError("boom"))["Err"].startswith("internal error")


# -- with real mounts -------------------------------------------------------------------

@needs_fuse
def test_mount_counts_per_id(driver, store_path):
    driver.create({"Name": "vol"})
    path = driver.mount({"Name": "vol", "ID": "c1"})["Mountpoint"]
    assert path == os.path.join(store_path, "mnt", "vol")
    assert driver.mount({"Name": "vol", "ID": "c1"})["Mountpoint"] == path  # docker cp
    assert driver.mount({"Name": "vol", "ID": "c2"})["Mountpoint"] == path
    assert len(workers_of(store_path, "vol")) == 1
    with open(os.path.join(path, "f"), "w") as f:
        f.write("kept")
    assert driver.get({"Name": "vol"})["Volume"]["Status"]["mounts"] == 3
    assert driver.path({"Name": "vol"}) == {"Mountpoint": path}
    with pytest.raises(Busy, match="is mounted"):
        driver.remove({"Name": "vol"})

    driver.unmount({"Name": "vol", "ID": "c1"})
    driver.unmount({"Name": "vol", "ID": "unknown"})
    driver.unmount({"Name": "vol", "ID": "c2"})
    assert mount.is_mountpoint(path)  # c1 still holds one
    driver.unmount({"Name": "vol", "ID": "c1"})
    assert not mount.is_mountpoint(path)
    assert workers_of(store_path, "vol") == []
    assert driver.path({"Name": "vol"}) == {}
    assert driver.get({"Name": "vol"})["Volume"]["Status"]["logical_bytes"] == 4

    path = driver.mount({"Name": "vol", "ID": "c3"})["Mountpoint"]
    with open(os.path.join(path, "f")) as f:
        assert f.read() == "kept"
    driver.unmount({"Name": "vol", "ID": "c3"})
    assert driver.remove({"Name": "vol"}) == {}
    assert not os.path.exists(path)


@needs_fuse
def test_counts_survive_a_new_daemon(driver, store_path):
    driver.create({"Name": "vol"})
    path = driver.mount({"Name": "vol", "ID": "c1"})["Mountpoint"]
    pid = workers_of(store_path, "vol")[0].pid
    fresh = Driver(Supervisor(store_path))  # what a restarted daemon sees
    assert fresh.get({"Name": "vol"})["Volume"]["Mountpoint"] == path
    fresh.sup.reconcile("vol")  # adopts: no second worker
    assert [w.pid for w in workers_of(store_path, "vol")] == [pid]
    fresh.unmount({"Name": "vol", "ID": "c1"})
    assert not mount.pid_alive(pid) and not mount.is_mountpoint(path)


@needs_fuse
def test_readonly_volume(driver):
    driver.create({"Name": "ro", "Opts": {"readonly": "true"}})
    path = driver.mount({"Name": "ro", "ID": "c1"})["Mountpoint"]
    with pytest.raises(OSError) as e:
        open(os.path.join(path, "f"), "w")
    assert e.value.errno == errno.EROFS
    driver.unmount({"Name": "ro", "ID": "c1"})


@needs_fuse
def test_view_is_a_bind_mount_of_the_source_worker(driver, store_path):
    driver.create({"Name": "src"})
    driver.create({"Name": "view", "Opts": {"source": "src", "subpath": "shared/", "readonly": "true"}})
    driver.create({"Name": "rw", "Opts": {"source": "src", "subpath": "shared"}})
    driver.create({"Name": "gone", "Opts": {"source": "src", "subpath": "missing"}})
    src = driver.mount({"Name": "src", "ID": "c1"})["Mountpoint"]
    os.makedirs(os.path.join(src, "shared"))
    with open(os.path.join(src, "shared", "f"), "w") as f:
        f.write("shared")
    with open(os.path.join(src, "secret"), "w") as f:
        f.write("not for views")
    os.symlink("/etc", os.path.join(src, "escape"))
    driver.create({"Name": "esc", "Opts": {"source": "src", "subpath": "escape"}})

    view = driver.mount({"Name": "view", "ID": "c2"})["Mountpoint"]
    assert view == os.path.join(store_path, "mnt", "view")
    assert os.listdir(view) == ["f"]
    with pytest.raises(OSError) as e:
        open(os.path.join(view, "new"), "w")
    assert e.value.errno == errno.EROFS
    rw = driver.mount({"Name": "rw", "ID": "c3"})["Mountpoint"]
    with open(os.path.join(rw, "new"), "w") as f:
        f.write("via view")
    with open(os.path.join(src, "shared", "new")) as f:  # same worker, same cache
        assert f.read() == "via view"
    assert len(workers_of(store_path, "src")) == 1

    with pytest.raises(NotFound, match="folder missing does not exist in volume src"):
        driver.mount({"Name": "gone", "ID": "c4"})
    with pytest.raises(NotFound, match="not a plain folder"):
        driver.mount({"Name": "esc", "ID": "c5"})
    with pytest.raises(Busy, match="is mounted"):
        driver.remove({"Name": "view"})

    # The source's worker runs while any of its views is mounted.
    driver.unmount({"Name": "src", "ID": "c1"})
    driver.unmount({"Name": "rw", "ID": "c3"})
    assert mount.is_mountpoint(src) and sorted(os.listdir(view)) == ["f", "new"]
    driver.unmount({"Name": "view", "ID": "c2"})
    assert mounts_under(driver.sup.mnt_dir) == []
    assert workers_of(store_path, "src") == []


@needs_fuse
def test_dead_worker_is_replaced(driver, store_path):
    driver.create({"Name": "src"})
    driver.create({"Name": "view", "Opts": {"source": "src", "subpath": "d"}})
    src = driver.mount({"Name": "src", "ID": "c1"})["Mountpoint"]
    os.mkdir(os.path.join(src, "d"))
    with open(os.path.join(src, "d", "f"), "w") as f:
        f.write("durable")
        f.flush()
        os.fsync(f.fileno())
    view = driver.mount({"Name": "view", "ID": "c2"})["Mountpoint"]
    pid = workers_of(store_path, "src")[0].pid
    os.kill(pid, signal.SIGKILL)
    while mount.pid_alive(pid):
        time.sleep(0.01)
    with pytest.raises(OSError) as e:
        os.listdir(view)
    assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)  # a dead FUSE mount

    # The next Mount finds the dead mount, detaches it and starts a fresh worker.
    assert driver.mount({"Name": "src", "ID": "c3"})["Mountpoint"] == src
    with open(os.path.join(src, "d", "f")) as f:
        assert f.read() == "durable"
    # The background check re-binds the view to the new worker.
    driver.sup.reconcile("src")
    assert os.listdir(view) == ["f"]
    for name, mount_id in (("src", "c1"), ("src", "c3"), ("view", "c2")):
        driver.unmount({"Name": name, "ID": mount_id})
    assert mounts_under(driver.sup.mnt_dir) == []


@needs_fuse
def test_an_idle_worker_is_kept_for_the_next_mount_until_its_time(store_path):
    driver = Driver(Supervisor(store_path, idle_time=60))
    try:
        driver.create({"Name": "vol"})
        driver.create({"Name": "view", "Opts": {"source": "vol", "subpath": "d"}})
        path = driver.mount({"Name": "vol", "ID": "c1"})["Mountpoint"]
        os.mkdir(os.path.join(path, "d"))
        [pid] = [w.pid for w in workers_of(store_path, "vol")]
        driver.unmount({"Name": "vol", "ID": "c1"})
        assert driver.path({"Name": "vol"}) == {}
        driver.sup.reconcile("vol")  # the check for workers no one counts on leaves it
        assert driver.sup.idle_due() == [] and driver.sup.idle_families() == ["vol"]
        view = driver.mount({"Name": "view", "ID": "c2"})["Mountpoint"]  # a view adopts it too
        assert [w.pid for w in workers_of(store_path, "vol")] == [pid]
        assert driver.sup.idle_families() == []
        driver.unmount({"Name": "view", "ID": "c2"})
        assert not mount.is_mountpoint(view) and mount.is_mountpoint(path)
        driver.sup.stop_idle("vol")  # not yet its time
        assert [w.pid for w in workers_of(store_path, "vol")] == [pid]
        assert driver.sup.idle_due(time.monotonic() + 61) == ["vol"]
        driver.sup.stop_idle("vol", force=True)
        assert workers_of(store_path, "vol") == [] and not mount.is_mountpoint(path)
        assert not mount.pid_alive(pid)
    finally:
        unmount_under(driver.sup.mnt_dir)


@needs_fuse
def test_a_volume_that_follows_a_remote_is_never_kept_idle(store_path):
    driver = Driver(Supervisor(store_path, idle_time=60))
    try:
        driver.create({"Name": "vol"})
        driver.mount({"Name": "vol", "ID": "c1"})
        with driver.store.write() as txn:  # as `-o remote=NAME` records it
            record = volumes.get(txn, "vol")
            record.options = {**record.options, "remote": "r"}
            volumes.put(txn, record)
        driver.sup._follower = type("NoRemote", (), {"after_last_unmount": lambda self, v: None})()
        driver.unmount({"Name": "vol", "ID": "c1"})
        assert workers_of(store_path, "vol") == []
    finally:
        unmount_under(driver.sup.mnt_dir)


@needs_fuse
def test_removing_the_last_view_of_a_removed_source_stops_its_idle_worker(store_path):
    driver = Driver(Supervisor(store_path, idle_time=60))
    try:
        driver.create({"Name": "src"})
        driver.create({"Name": "view", "Opts": {"source": "src", "subpath": "d"}})
        path = driver.mount({"Name": "src", "ID": "c1"})["Mountpoint"]
        os.mkdir(os.path.join(path, "d"))
        driver.unmount({"Name": "src", "ID": "c1"})
        driver.remove({"Name": "src"})  # kept, removed, for its view
        driver.mount({"Name": "view", "ID": "c2"})
        driver.unmount({"Name": "view", "ID": "c2"})  # src's worker kept idle
        driver.remove({"Name": "view"})  # src goes with it: so does its worker
        assert driver.list({}) == {"Volumes": []}
        assert mount.workers(store_path) == [] and not mount.is_mountpoint(path)
        assert not os.path.exists(path)
    finally:
        unmount_under(driver.sup.mnt_dir)
