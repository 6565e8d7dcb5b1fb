"""Hostile input on the plugin socket: every bad request gets a clear Err, the daemon
keeps serving everyone else, and nothing outside the store is touched.

FUSEVOL_HOSTILE_CALLS=20000 runs the Mount/Unmount churn longer by hand.
"""

import json
import os
import random
import socket
import threading
import time
import uuid

import pytest

from conftest import needs_fuse, run_cli
from fusevol.fs import mount
from fusevol.store import Store
from plugin_daemon import PluginDaemon, mounts_under

CALLS = int(os.environ.get("FUSEVOL_HOSTILE_CALLS", "2000"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    d = PluginDaemon(str(base / "store"), str(base / "run" / "fv-hostile.sock"),
                     str(base / "serve.log"))
    d.start()
    yield d
    d.cleanup()
    log = d.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


@pytest.fixture
def host_dir(tmp_path):
    """A host folder no request may reach, with a marker in it."""
    path = tmp_path / "host"
    path.mkdir()
    (path / "MARKER").write_text("outside every volume")
    return path


def clear_err(status: int, reply: dict) -> str:
    """The Err of a refused request, checked to be a readable message."""
    assert status in (400, 404, 413, 500), (status, reply)
    assert list(reply) == ["Err"] and isinstance(reply["Err"], str), reply
    err = reply["Err"]
    assert err and "internal error" not in err and "Traceback" not in err, err
    assert len(err) < 1000, f"an Err of {len(err)} characters"
    return err


def still_serving(daemon: PluginDaemon) -> bool:
    status, reply = daemon.call("/VolumeDriver.List", {})
    return status == 200 and "Volumes" in reply


def volume_names(daemon: PluginDaemon) -> list[str]:
    return [v["Name"] for v in daemon.call("/VolumeDriver.List", {})[1]["Volumes"]]


NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("body, words", [
    (b"{", "not valid JSON"),
    (b'{"Name": "x"', "not valid JSON"),
    (b'{"Name": ', "not valid JSON"),
    (b'{"Name": "tr\xc3"}', "not valid JSON"),      # a cut UTF-8 sequence
    (b"\x00\x01\x02", "not valid JSON"),
    (b'{"Name": NaN, "Name": "dup"', "not valid JSON"),
    (b"null", "must be a JSON object"),
    (b"123", "must be a JSON object"),
    (b'"Name"', "must be a JSON object"),
    (NESTED, "nested too deeply"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"Name": "n1", "Opts": {"size": ' + NESTED + b"}}", "nested too deeply"),
])
@pytest.mark.parametrize("endpoint", ["/VolumeDriver.Create", "/VolumeDriver.Mount"])
def test_malformed_json(daemon, endpoint, body, words):
    assert words in clear_err(*daemon.call(endpoint, body))
    assert still_serving(daemon)


@pytest.mark.parametrize("request_body, words", [
    ({"Name": 7}, "invalid volume name 7"),
    ({"Name": ["a"]}, "invalid volume name"),
    ({"Name": {"a": 1}}, "invalid volume name"),
    ({"Name": True}, "invalid volume name"),
    ({"Name": None}, "missing volume Name"),
    ({"Name": "v" * 300_000}, "invalid volume name"),
    ({"Name": "new\n"}, "invalid volume name"),
    ({"Name": "x\u0000y"}, "invalid volume name"),
    ({"Name": "\udcff\udcfe"}, "invalid volume name"),
    ({"Name": "ok1", "Opts": ["size=1M"]}, "options must be a map"),
    ({"Name": "ok1", "Opts": "size=1M"}, "options must be a map"),
    ({"Name": "ok1", "Opts": 5}, "options must be a map"),
    ({"Name": "ok1", "Opts": {"size": 5}}, "option size needs a string value"),
    ({"Name": "ok1", "Opts": {"size": ["1M"]}}, "option size needs a string value"),
    ({"Name": "ok1", "Opts": {"size": None}}, "option size needs a string value"),
    ({"Name": "ok1", "Opts": {"x" * 100_000: "1"}}, "unknown option"),
])
def test_wrong_types_at_create(daemon, request_body, words):
    assert words in clear_err(*daemon.call("/VolumeDriver.Create", request_body))
    assert "ok1" not in volume_names(daemon)


@pytest.mark.parametrize("mount_id", [None, 7, "", ["a"], {"a": "b"}, "id\n", "id\x00", "i" * 5000])
@pytest.mark.parametrize("endpoint", ["/VolumeDriver.Mount", "/VolumeDriver.Unmount"])
def test_wrong_mount_ids(daemon, endpoint, mount_id):
    daemon.call("/VolumeDriver.Create", {"Name": "idvol"})
    err = clear_err(*daemon.call(endpoint, {"Name": "idvol", "ID": mount_id}))
    assert "ID must be a non-empty string" in err
    assert daemon.call("/VolumeDriver.Get", {"Name": "idvol"})[1]["Volume"]["Status"]["mounts"] == 0


def test_body_just_under_the_limit(daemon):
    body = json.dumps({"Name": "n" * 1_000_000}).encode()
    assert len(body) < 1 << 20
    assert "invalid volume name" in clear_err(*daemon.call("/VolumeDriver.Create", body))
    assert still_serving(daemon)


@pytest.mark.parametrize("opts, words", [
    ({"size": "1M,readonly=true"}, "invalid size"),
    ({"size": "1M\nreadonly=true"}, "invalid size"),
    ({"size": "1M readonly"}, "invalid size"),
    ({"compression": "zstd,none"}, "compression="),
    ({"compression": "zstd\n"}, "compression="),
    ({"readonly": "true,size=1"}, "use true or false"),
    ({"readonly=true,size": "1M"}, "unknown option"),
    ({"from-snapshot": "optsrc@b\nc"}, "snapshot"),
    ({"source": "optsrc\n", "subpath": "d"}, "invalid volume name"),
    ({"source": "optsrc,x", "subpath": "d"}, "invalid volume name"),
    ({"source": "optsrc", "subpath": "d\ne"}, "control characters"),
    ({"source": "optsrc", "subpath": "d,e\n"}, "control characters"),
    # Sizes the filesystem could not report (statfs counts 4 KiB blocks, files end at 2^63).
    ({"size": str(1 << 64)}, "too large"),
    ({"size": str(1 << 63)}, "too large"),
    ({"size": "8388608T"}, "too large"),
    ({"size": "9" * 5000}, "too large"),
    ({"size": "0"}, "greater than zero"),
    ({"size": "-1"}, "invalid size"),
])
def test_option_values_that_smuggle(daemon, opts, words):
    daemon.call("/VolumeDriver.Create", {"Name": "optsrc"})
    assert words in clear_err(*daemon.call("/VolumeDriver.Create", {"Name": "smuggled", "Opts": opts}))
    assert "smuggled" not in volume_names(daemon)


def test_largest_size_is_accepted_and_reported(daemon):
    largest = str((1 << 63) - 1)
    assert daemon.call("/VolumeDriver.Create", {"Name": "huge", "Opts": {"size": largest}}) == (200, {})
    status = daemon.call("/VolumeDriver.Get", {"Name": "huge"})[1]["Volume"]["Status"]
    assert status["quota_bytes"] == (1 << 63) - 1
    assert daemon.call("/VolumeDriver.Remove", {"Name": "huge"}) == (200, {})


@pytest.mark.parametrize("name", ["..", "../x", "/etc", "a/b", "a\\b", ".", "-x", "x" * 256,
                                  "a\nb", "a b", "\u00e9t\u00e9"])
@pytest.mark.parametrize("endpoint", ["/VolumeDriver.Create", "/VolumeDriver.Mount",
                                      "/VolumeDriver.Remove", "/VolumeDriver.Get",
                                      "/VolumeDriver.Path"])
def test_names_that_escape(daemon, endpoint, name):
    assert "invalid volume name" in clear_err(*daemon.call(endpoint, {"Name": name, "ID": "c1"}))


@pytest.mark.parametrize("subpath, words", [
    ("..", "'..' is not allowed"),
    ("../..", "'..' is not allowed"),
    ("a/../../b", "'..' is not allowed"),
    ("a/..", "'..' is not allowed"),
    ("/etc", "an absolute path"),
    ("//etc", "an absolute path"),
    ("a\x00b", "control characters"),
    ("\x00", "control characters"),
    ("", "no folder named"),
    ("./.", "no folder named"),
    ("x" * 256, "longer than 255 bytes"),
    ("a/" * 2100, "longer than 4000 bytes"),
])
def test_subpaths_that_escape_are_refused_at_create(daemon, subpath, words):
    daemon.call("/VolumeDriver.Create", {"Name": "escsrc"})
    err = clear_err(*daemon.call("/VolumeDriver.Create", {
        "Name": "escview", "Opts": {"source": "escsrc", "subpath": subpath}}))
    assert "invalid subpath" in err and words in err, err
    assert "escview" not in volume_names(daemon)


@needs_fuse
def test_symlinks_planted_in_a_volume(daemon, host_dir):
    """Folders of a view replaced by symlinks (to the host, to /, through a middle
    component, to a file): every Mount of such a view is an Err, never the host."""
    (host_dir / "inner").mkdir()
    assert daemon.call("/VolumeDriver.Create", {"Name": "plant"}) == (200, {})
    status, reply = daemon.call("/VolumeDriver.Mount", {"Name": "plant", "ID": "planter"})
    assert status == 200, reply
    root = reply["Mountpoint"]
    os.symlink(str(host_dir), os.path.join(root, "out"))
    os.makedirs(os.path.join(root, "nested", "real"))
    os.symlink("/", os.path.join(root, "nested", "slash"))
    os.symlink("../..", os.path.join(root, "nested", "up"))
    os.symlink("real", os.path.join(root, "nested", "relative"))  # stays inside, still refused
    with open(os.path.join(root, "file"), "w") as f:
        f.write("a file, not a folder")
    cases = {"out": "not a plain folder", "out/inner": "not a plain folder",
             "nested/slash": "not a plain folder", "nested/slash/etc": "not a plain folder",
             "nested/up": "not a plain folder", "nested/relative": "not a plain folder",
             "file": "not a plain folder", "missing": "does not exist"}
    for i, (subpath, words) in enumerate(cases.items()):
        view = f"planted{i}"
        for readonly in ("true", "false"):
            daemon.call("/VolumeDriver.Remove", {"Name": view})
            assert daemon.call("/VolumeDriver.Create", {"Name": view, "Opts": {
                "source": "plant", "subpath": subpath, "readonly": readonly}}) == (200, {})
            err = clear_err(*daemon.call("/VolumeDriver.Mount", {"Name": view, "ID": "c" + view}))
            assert f"folder {subpath}" in err and words in err, (subpath, err)
            assert not mount.is_mountpoint(daemon.mountpoint_of(view))
            assert daemon.call("/VolumeDriver.Unmount", {"Name": view, "ID": "c" + view}) == (200, {})
    # A real folder next to them still works.
    assert daemon.call("/VolumeDriver.Create", {"Name": "plantok", "Opts": {
        "source": "plant", "subpath": "nested/real"}}) == (200, {})
    status, reply = daemon.call("/VolumeDriver.Mount", {"Name": "plantok", "ID": "ok"})
    assert status == 200 and os.listdir(reply["Mountpoint"]) == []
    assert os.stat(reply["Mountpoint"]).st_dev == os.stat(root).st_dev
    assert daemon.call("/VolumeDriver.Unmount", {"Name": "plantok", "ID": "ok"}) == (200, {})
    assert daemon.call("/VolumeDriver.Unmount", {"Name": "plant", "ID": "planter"}) == (200, {})
    assert sorted(os.listdir(host_dir)) == ["MARKER", "inner"] and os.listdir(host_dir / "inner") == []
    daemon.wait_idle_workers_stopped()


@needs_fuse
def test_mount_unmount_churn_with_random_ids(daemon):
    """Thousands of Mount and Unmount calls with random IDs, bad and unknown: each a
    clear Err or harmless, and the one real mount keeps its count and its data."""
    assert daemon.call("/VolumeDriver.Create", {"Name": "held"}) == (200, {})
    status, reply = daemon.call("/VolumeDriver.Mount", {"Name": "held", "ID": "holder"})
    assert status == 200, reply
    path = reply["Mountpoint"]
    with open(os.path.join(path, "kept"), "w") as f:
        f.write("still here")
    rng = random.Random(8)
    refused = harmless = 0
    started = time.monotonic()
    for _ in range(CALLS):
        mount_id = uuid.UUID(int=rng.getrandbits(128)).hex
        kind = rng.randrange(5)
        if kind == 0:    # a volume that does not exist
            status, reply = daemon.call("/VolumeDriver.Mount", {"Name": f"ghost{rng.randrange(99)}",
                                                                "ID": mount_id})
            assert "no such volume" in clear_err(status, reply)
            refused += 1
        elif kind == 1:  # an ID no one mounted with
            assert daemon.call("/VolumeDriver.Unmount", {"Name": "held", "ID": mount_id}) == (200, {})
            harmless += 1
        elif kind == 2:  # an ID that is not one
            bad = rng.choice([None, 0, "", [mount_id], "\n" + mount_id, mount_id * 10])
            endpoint = rng.choice(["/VolumeDriver.Mount", "/VolumeDriver.Unmount"])
            assert "ID must be" in clear_err(*daemon.call(endpoint, {"Name": "held", "ID": bad}))
            refused += 1
        elif kind == 3:  # an unknown volume, unmounted
            assert daemon.call("/VolumeDriver.Unmount", {"Name": f"ghost{rng.randrange(99)}",
                                                          "ID": mount_id}) == (200, {})
            harmless += 1
        else:            # a name that is not one
            name = rng.choice(["../held", "held/..", "/held", "held\n", ""])
            clear_err(*daemon.call("/VolumeDriver.Mount", {"Name": name, "ID": mount_id}))
            refused += 1
    elapsed = time.monotonic() - started
    print(f"{CALLS} calls in {elapsed:.1f}s: {refused} refused, {harmless} harmless")
    status = daemon.call("/VolumeDriver.Get", {"Name": "held"})[1]["Volume"]["Status"]
    assert status["mounts"] == 1
    with open(os.path.join(path, "kept")) as f:
        assert f.read() == "still here"
    assert daemon.call("/VolumeDriver.Unmount", {"Name": "held", "ID": "holder"}) == (200, {})
    daemon.wait_idle_workers_stopped()
    assert not mount.is_mountpoint(path)


def test_idle_and_slow_clients_do_not_block_others(daemon):
    idle = []
    try:
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX)
            s.connect(daemon.socket)
            idle.append(s)
        slow = idle[0]
        slow.sendall(b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nContent-Le")
        half = idle[1]
        half.sendall(b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        started = time.monotonic()
        assert still_serving(daemon)
        assert daemon.call("/VolumeDriver.Capabilities", {})[0] == 200
        assert time.monotonic() - started < 10
    finally:
        for s in idle:
            s.close()
    assert still_serving(daemon)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read().replace(b"\0", b" "):
                    found.append(int(pid))
        except OSError:
            pass
    return found


@needs_fuse
def test_worker_that_hangs_before_ready_is_given_up(tmp_path):
    """A worker stuck before it serves (here on the store's write lock, held by
    another process as a long gc or a hung disk would) is killed after the
    daemon's timeout: the Mount answers a clear Err, other calls are served
    meanwhile, and the next Mount after the cause is gone works."""
    store_path = str(tmp_path / "store")
    d = PluginDaemon(store_path, str(tmp_path / "run" / "fv-hang.sock"), str(tmp_path / "serve.log"),
                     "--worker-start-timeout", "3")
    d.start()
    try:
        assert d.call("/VolumeDriver.Create", {"Name": "stuck"}) == (200, {})
        store = Store.open(store_path)
        holder = store.begin_write()  # the worker's Store.open waits on this lock
        try:
            results = {}
            caller = threading.Thread(target=lambda: results.update(
                mount=d.call("/VolumeDriver.Mount", {"Name": "stuck", "ID": "c1"})))
            started = time.monotonic()
            caller.start()
            time.sleep(0.5)
            assert still_serving(d)  # reads go on while the Mount waits
            caller.join(60)
            elapsed = time.monotonic() - started
            assert not caller.is_alive(), "the Mount is still waiting for the worker"
        finally:
            holder.txn.abort()
            Store._instances.pop(store.path, None)
            store.close()
        err = clear_err(*results["mount"])
        assert "worker for volume stuck was not ready after 3 s" in err, err
        assert 3 <= elapsed < 30
        assert _processes_mentioning(f"{store_path} mount stuck") == []
        assert mounts_under(os.path.join(store_path, "mnt")) == []
        assert d.call("/VolumeDriver.Get", {"Name": "stuck"})[1]["Volume"]["Status"]["mounts"] == 0

        status, reply = d.call("/VolumeDriver.Mount", {"Name": "stuck", "ID": "c2"})
        assert status == 200, reply
        assert os.listdir(reply["Mountpoint"]) == []
        assert d.call("/VolumeDriver.Unmount", {"Name": "stuck", "ID": "c2"}) == (200, {})
        assert "Traceback" not in d.log()
    finally:
        d.cleanup()


@pytest.mark.parametrize("opts, words", [
    (["size=18446744073709551616"], "too large"),
    (["size=" + "9" * 5000], "too large"),
    (["source=base", "subpath=a\x01b"], "control characters"),
    (["source=base", "subpath=/etc"], "an absolute path"),
    (["source=base", "subpath=a/../.."], "'..' is not allowed"),
])
def test_cli_create_refuses_the_same(store_path, opts, words):
    run_cli(store_path, "volume", "create", "base")
    args = [a for opt in opts for a in ("-o", opt)]
    proc = run_cli(store_path, "volume", "create", "bad", *args, check=False)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 4 and words in stderr and "Traceback" not in stderr, stderr
    assert stderr.startswith("fusevol: ") and stderr.count("\n") == 1
    assert run_cli(store_path, "volume", "inspect", "bad", check=False).returncode == 2
