"""The request handlers fed generated requests: every answer is a reply dict or a
readable Err, never an exception the daemon did not expect.

The handlers run as the daemon runs them (lock_key, then the endpoint; a raw body
through decode_request first) over a real store, with real workers when a
generated Mount names a volume that exists. FUSEVOL_FUZZ_EXAMPLES=5000 runs longer.
"""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import HAVE_FUSE
from fusevol.errors import FusevolError
from fusevol.plugin.protocol import ENDPOINTS, Driver, decode_request, error_reply
from fusevol.plugin.supervisor import Supervisor
from fusevol.store import Store
from plugin_daemon import stop_driver_mounts

EXAMPLES = int(os.environ.get("FUSEVOL_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# What each endpoint answers when it succeeds.
SUCCESS_KEYS = {"activate": {"Implements"}, "capabilities": {"Capabilities"}, "create": set(),
                "remove": set(), "mount": {"Mountpoint"}, "unmount": set(),
                "path": {"Mountpoint"}, "get": {"Volume"}, "list": {"Volumes"}}

# Names that exist or may come to exist, next to ones that never can.
GOOD_NAMES = ["fz1", "fz2", "fzview"]
BAD_NAMES = ["ghost", "..", "/etc", "a/b", "", "x\x00y", "fz1\n", "f" * 300]
OPTION_KEYS = ["size", "readonly", "source", "subpath", "compression", "from-snapshot", "colour"]
OPTION_VALUES = ["1M", "0", "-1", str(1 << 64), "99999999999999999999T", "true", "no", "maybe",
                 "zstd", "none", "fz1", "fz2", "d", "d/e", "..", "/abs", "a\x00b", "a\nb",
                 "fz1@snap", "@", "1M,readonly=true", ""]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
# Mostly plausible requests (so that volumes get created, mounted and removed), with
# every field sometimes of the wrong kind.
names = st.sampled_from(GOOD_NAMES) | st.sampled_from(GOOD_NAMES) | st.sampled_from(BAD_NAMES) \
    | st.text(max_size=12) | json_values
view_opts = st.fixed_dictionaries({"source": st.sampled_from(["fz1", "fz2"]),
                                   "subpath": st.sampled_from(["d", "d/e", "missing", "a\x00b",
                                                               "/abs", "d/..", "d\n"])},
                                  optional={"readonly": st.sampled_from(["true", "false"])})
data_opts = st.fixed_dictionaries({}, optional={
    "size": st.sampled_from(["1M", "0", "-1", str(1 << 64), "9" * 5000, "99999999999999999999T",
                             "1M,readonly=true", "\u0661"]),
    "readonly": st.sampled_from(["true", "no", "maybe", ""]),
    "compression": st.sampled_from(["zstd", "none", "lz4"]),
    "from-snapshot": st.sampled_from(["fz1@snap", "@", "fz1@", "a@b\nc"])})
opts = st.none() | st.just({}) | view_opts | data_opts | data_opts \
    | st.dictionaries(st.sampled_from(OPTION_KEYS), st.sampled_from(OPTION_VALUES), max_size=3) \
    | st.dictionaries(st.text(max_size=8), st.text(max_size=12) | json_values, max_size=3) \
    | json_values
ids = st.sampled_from(["c1", "c2", "c3"]) | st.sampled_from(["c1", "c2", "c3"]) \
    | st.sampled_from(["", "\n", "x" * 300]) \
    | st.text(max_size=70) | json_values
requests = st.fixed_dictionaries({"Name": names, "ID": ids, "Opts": opts}) \
    | st.dictionaries(st.text(max_size=8), json_values, max_size=4)
endpoints = st.sampled_from(sorted(ENDPOINTS.values()))


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    store_path = str(tmp_path_factory.mktemp("fuzz") / "store")
    d = Driver(Supervisor(store_path))
    yield d
    stop_driver_mounts(store_path, d.sup.mnt_dir)
    Store._instances.pop(d.store.path, None)
    d.store.close()


def answer(driver: Driver, endpoint: str, request: dict) -> dict:
    """What the daemon replies: the endpoint's answer, or the Err of a FusevolError.
    Any other exception escapes, and fails the test."""
    if endpoint == "mount" and not HAVE_FUSE:
        return {"Err": "skipped: no FUSE"}
    try:
        driver.lock_key(endpoint, request)
        return getattr(driver, endpoint)(request)
    except FusevolError as e:
        return error_reply(e)


def check_reply(endpoint: str, reply) -> None:
    assert isinstance(reply, dict), reply
    if "Err" in reply:
        assert list(reply) == ["Err"] and isinstance(reply["Err"], str) and reply["Err"], reply
        assert len(reply["Err"]) < 1000, reply["Err"]
    else:
        assert set(reply) <= SUCCESS_KEYS[endpoint], reply
    json.dumps(reply)  # the daemon sends it as JSON


@FUZZ
@given(name=names, opts=opts)
def test_create_then_describe(driver, name, opts):
    reply = answer(driver, "create", {"Name": name, "Opts": opts})
    check_reply("create", reply)
    for endpoint in ("get", "path", "list", "remove"):
        check_reply(endpoint, answer(driver, endpoint, {"Name": name}))


@pytest.fixture(scope="module")
def held_source(driver):
    """Volume fzsrc, kept mounted (so views bind at once) with folders d and d/e."""
    if not HAVE_FUSE:
        pytest.skip("real FUSE mounts need root, /dev/fuse and fusermount3 (fuse3)")
    driver.create({"Name": "fzsrc"})
    path = driver.mount({"Name": "fzsrc", "ID": "holder"})["Mountpoint"]
    os.makedirs(os.path.join(path, "d", "e"))
    yield path
    driver.unmount({"Name": "fzsrc", "ID": "holder"})


SUBPATHS = ["d", "d/e", "d/", "./d", "missing", "a\x00b", "/abs", "d/..", "d\n", "..",
            "d/e/../..", ""]


@FUZZ
@given(subpath=st.sampled_from(SUBPATHS) | st.sampled_from(SUBPATHS) | st.text(max_size=10)
       | json_values,
       readonly=st.sampled_from(["true", "false"]) | st.text(max_size=5) | json_values,
       mount_id=st.sampled_from(["c1", "c2"]) | ids)
def test_views_of_generated_subpaths(driver, held_source, subpath, readonly, mount_id):
    opts = {"source": "fzsrc", "subpath": subpath, "readonly": readonly}
    check_reply("create", answer(driver, "create", {"Name": "fzv", "Opts": opts}))
    check_reply("mount", answer(driver, "mount", {"Name": "fzv", "ID": mount_id}))
    check_reply("unmount", answer(driver, "unmount", {"Name": "fzv", "ID": mount_id}))
    check_reply("remove", answer(driver, "remove", {"Name": "fzv"}))
    assert answer(driver, "get", {"Name": "fzv"}) == {"Err": "no such volume: fzv"}


@FUZZ
@given(calls=st.lists(st.tuples(endpoints, requests), min_size=1, max_size=6))
def test_handlers_answer_every_request(driver, calls):
    for endpoint, request in calls:
        check_reply(endpoint, answer(driver, endpoint, request))


@FUZZ
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
       | requests.map(lambda r: json.dumps(r).encode()),
       endpoint=endpoints)
def test_raw_bodies(driver, body, endpoint):
    try:
        request = decode_request(body)
    except FusevolError as e:
        check_reply(endpoint, error_reply(e))
        return
    assert isinstance(request, dict)
    check_reply(endpoint, answer(driver, endpoint, request))


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deep_nesting(driver, depth):
    for body in (b"[" * depth, b'{"Name": "fz1", "Opts": ' + b"[" * depth + b"]" * depth + b"}"):
        with pytest.raises(FusevolError, match="nested too deeply"):
            decode_request(body)
