"""A worker's start: the request it is given, and the report it gives back.

The request (`WorkerRequest`) holds everything the worker needs, already
resolved: the store, the MountSpec (store/volumes.mount_spec, asked by the
volume service), the mountpoint, mount options; the worker looks nothing up
by name.

The report says that the worker serves, or why not. In the spirit of trio's `task_status.started()`: the starter waits for one
message, and an error the worker met before serving reaches it as that very
error (its class, errno and data), so the CLI's exit code and the plugin's Err
are the same whether the worker ran in the foreground or was started by
someone else. One JSON object on a pipe, which is then closed:

    {"ready": true}
    {"error": "NotFound", "errno": 2, "message": "...", "reason": null, "details": {}}
    {"error": "internal", "errno": 5, "message": "TypeError: ..."}   (a bug)

Sans-IO: the pipes are worker.py's, forkserver.py's and registry.py's. This
module imports neither pyfuse3 nor trio.
"""

import errno as errnos
import json
from dataclasses import dataclass

from .. import errors
from ..errors import FusevolError, InternalError
from ..records import MountSpec


@dataclass(frozen=True)
class WorkerRequest:
    """What a worker serves and where: everything it needs, nothing to look up."""

    store: str
    spec: MountSpec
    mountpoint: str
    options: str | None = None  # mount(8)-style (mountopts.py), beyond read-only
    fsname: str | None = None
    log_path: str | None = None

    def to_dict(self) -> dict:
        return {"store": self.store, "spec": self.spec.to_dict(), "mountpoint": self.mountpoint,
                "options": self.options, "fsname": self.fsname, "log_path": self.log_path}

    @classmethod
    def from_dict(cls, data: dict) -> "WorkerRequest":
        return cls(store=data["store"], spec=MountSpec.from_dict(data["spec"]),
                   mountpoint=data["mountpoint"], options=data.get("options"),
                   fsname=data.get("fsname"), log_path=data.get("log_path"))


READY = {"ready": True}


def as_error(exc: BaseException, mountpoint: str) -> FusevolError | None:
    """The error a worker's failure is, as the foreground CLI and the report
    both give it: a FusevolError as it is, a system error as one naming the
    mountpoint; None for anything else (a bug: see `failure`)."""
    if isinstance(exc, FusevolError):
        return exc
    if isinstance(exc, OSError):
        error = FusevolError(f"cannot mount {mountpoint}: {exc.strerror or exc}")
        error.errno = exc.errno or errnos.EIO
        return error
    if isinstance(exc, RuntimeError):  # pyfuse3.init's way of failing to mount
        return FusevolError(f"cannot mount {mountpoint}: {exc}")
    return None


def failure(exc: BaseException, mountpoint: str) -> dict:
    """The report of a worker that could not serve."""
    error = as_error(exc, mountpoint)
    if error is None:
        return {"error": "internal", "errno": errnos.EIO,
                "message": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"}
    return {"error": type(error).__name__, "errno": error.errno, "message": str(error),
            "reason": error.reason, "details": _plain(error.details)}


def encode(report: dict) -> bytes:
    return json.dumps(report).encode()


def decode(message: bytes, log_path: str) -> FusevolError | None:
    """None if the worker serves; else the error it reported (or, if it wrote
    nothing it could say, one that points at its log)."""
    try:
        report = json.loads(message)
    except ValueError:
        report = None
    if not isinstance(report, dict):
        return FusevolError(f"the mount worker exited without serving; see {log_path}")
    if report.get("ready") is True:
        return None
    message_text = str(report.get("message") or "the mount worker failed")
    err = report.get("errno") if isinstance(report.get("errno"), int) else errnos.EIO
    if report.get("error") == "internal":
        return InternalError(f"internal error in the mount worker: {message_text} "
                             f"(traceback in {log_path})")
    return _rebuild(str(report.get("error")), message_text, err, report.get("reason"),
                    report.get("details") if isinstance(report.get("details"), dict) else {})


def _rebuild(name: str, message: str, err: int, reason, details: dict) -> FusevolError:
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, FusevolError)):
        cls = FusevolError
    try:
        if issubclass(cls, errors.FsError):
            error = cls(err, message)
        elif issubclass(cls, errors.InUse):  # its data are its details
            error = cls(message, **details)
        else:
            error = cls(message, reason=reason, **details)
    except TypeError:  # a report this version cannot rebuild: its message, its errno
        error = FusevolError(message)
    error.errno = err
    return error


def _plain(details: dict) -> dict:
    """Details as JSON carries them (anything else as its text)."""
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
            for k, v in details.items()}
