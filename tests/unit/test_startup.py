"""A worker's start message and report (fs/startup.py), without a worker: what
the starter rebuilds is the error the worker met, class, errno and data."""

import errno
import json

import pytest

from fusevol import errors
from fusevol.fs import startup
from fusevol.records import MountSpec, Volume

LOG = "/store/run/log/vol.log"


def _through_the_pipe(exc: BaseException) -> errors.FusevolError:
    return startup.decode(startup.encode(startup.failure(exc, "/mnt/x")), LOG)


def test_ready_is_no_error():
    assert startup.decode(startup.encode(startup.READY), LOG) is None


@pytest.mark.parametrize("error", [
    errors.NotFound("no such volume: v"),
    errors.Busy("/mnt/x is already a mountpoint"),
    errors.InvalidArgument("dev and suid are for mounts by root only"),
    errors.Busy("volume v has 1 snapshot(s)", reason="has_snapshots", volume="v"),
])
def test_an_error_comes_back_as_itself(error):
    back = _through_the_pipe(error)
    assert type(back) is type(error) and str(back) == str(error)
    assert (back.errno, back.exit_code, back.reason, back.details) == \
        (error.errno, error.exit_code, error.reason, error.details)


def test_data_an_edge_words_survive():
    error = errors.InUse("volume v is mounted at /m", volume="v", holder="worker",
                         action="mount", mountpoint="/m", pid=7)
    back = _through_the_pipe(error)
    assert isinstance(back, errors.InUse) and back.exit_code == errors.Busy.exit_code
    assert (back.volume, back.holder, back.action, back.details["pid"]) == ("v", "worker",
                                                                           "mount", 7)


def test_an_fs_error_keeps_its_errno():
    back = _through_the_pipe(errors.FsError(errno.ENOTDIR, "d is not a folder"))
    assert isinstance(back, errors.FsError) and back.errno == errno.ENOTDIR


def test_a_system_error_names_the_mountpoint_and_keeps_its_errno():
    back = _through_the_pipe(PermissionError(errno.EACCES, "Permission denied"))
    assert type(back) is errors.FusevolError and back.errno == errno.EACCES
    assert str(back) == "cannot mount /mnt/x: Permission denied"
    assert startup.as_error(PermissionError(errno.EACCES, "x"), "/mnt/x").exit_code == 1


def test_a_bug_is_an_internal_error_pointing_at_the_log():
    back = _through_the_pipe(KeyError("vid"))
    assert isinstance(back, errors.InternalError) and back.exit_code == 70
    assert "KeyError: 'vid'" in str(back) and LOG in str(back)
    assert startup.as_error(KeyError("vid"), "/mnt/x") is None  # the foreground: raised as is


@pytest.mark.parametrize("message", [b"", b"garbage", b"[1]",
                                     json.dumps({"error": "NoSuchClass", "message": "m"}).encode(),
                                     json.dumps({"error": "InUse", "message": "m"}).encode()])
def test_a_report_that_says_nothing_usable_still_fails(message):
    back = startup.decode(message, LOG)
    assert isinstance(back, errors.FusevolError)


def test_the_request_carries_the_resolved_spec():
    spec = MountSpec(name="site", data=Volume(name="src", vid=3, atime="relatime"),
                     subpath=None, readonly=True)
    request = startup.WorkerRequest(store="/s", spec=spec, mountpoint="/m", options="noexec")
    back = startup.WorkerRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert back == request
