"""Docker's VolumeDriver protocol as plain functions: a request dict in, a reply dict out.

No networking here. ``ENDPOINTS`` maps each URL path to a ``Driver`` method;
``decode_request`` turns a raw body into a request dict and ``error_reply``
turns any domain error into ``{"Err": message}``. Driver methods block (store
transactions, workers): the daemon runs them in threads, serialised per family
(see ``Driver.lock_key``).
"""

import json
import logging

from ..errors import AlreadyExists, FusevolError, InvalidArgument
from ..records import Volume
from ..store import chunks, remotes, volumes
from .supervisor import Supervisor, check_mount_id

log = logging.getLogger(__name__)

ENDPOINTS = {
    "/Plugin.Activate": "activate",
    "/VolumeDriver.Create": "create",
    "/VolumeDriver.Remove": "remove",
    "/VolumeDriver.Mount": "mount",
    "/VolumeDriver.Unmount": "unmount",
    "/VolumeDriver.Path": "path",
    "/VolumeDriver.Get": "get",
    "/VolumeDriver.List": "list",
    "/VolumeDriver.Capabilities": "capabilities",
}
# Calls that start, stop or delete something: one at a time per family.
SERIALISED = {"mount", "unmount", "remove"}

# Settings a repeated Create must match (the parsed form, so "1M" equals "1048576").
_SETTINGS = volumes.DEFAULTS


def decode_request(raw: bytes) -> dict:
    """The JSON object of a request body; an empty body is an empty request."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidArgument("request body is nested too deeply (Docker's requests are "
                              "flat JSON objects)") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return body


def error_reply(error: Exception) -> dict:
    if isinstance(error, FusevolError):
        return {"Err": worded(error)}
    log.exception("unexpected error", exc_info=error)
    return {"Err": f"internal error: {type(error).__name__}: {error}"}


def worded(error: FusevolError) -> str:
    """An error as a Docker user reads it: what they can do about it added
    (the layers below say what is wrong, never what to type; errors.py)."""
    text, details = str(error), error.details
    if error.reason == "in_use":
        if details["holder"] == "containers":
            return f"{text}; stop the containers using it first"
        if details["action"] == "mount":
            return f"{text}; unmount it there first"
        return f"{text}; unmount it first"
    if error.reason == "has_snapshots":
        return f"{text} (fusevol snapshot rm {details['volume']}@NAME on the host)"
    if error.reason == "changed_since_snapshot":
        return f"{text} (snapshot it on the host first, or discard the change there)"
    if error.reason in ("no_remote", "remote_name"):
        return f"{text} (fusevol remote ls on the host lists the remotes)"
    if error.reason == "pulling":
        return (f"{text}; start it again once the pull is done (docker volume inspect "
                f"{details['volume']} shows how far it is)")
    if error.reason == "pull_failed":
        return f"{text}; starting a container tries again, docker volume rm drops the volume"
    if error.reason == "damaged":
        return f"{text}; fusevol verify on the host names the files it reaches"
    if error.reason == "diverged":
        return f"{text}; keep one by hand on the host (fusevol push or fusevol pull)"
    if error.reason == "no_remote_snapshot":
        return f"{text} (fusevol remote snapshots {details['remote']} on the host lists them)"
    if error.reason == "remote_damaged":
        return f"{text} (fusevol remote verify {details['remote']} on the host names what is wrong)"
    return text


def _name(req: dict) -> str:
    name = req.get("Name")
    if name is None or name == "":
        raise InvalidArgument("missing volume Name")
    return volumes.check_name(name)


class Driver:
    def __init__(self, supervisor: Supervisor):
        self.sup = supervisor
        self.store = supervisor.store
        self._incoming = None  # volumes from a remote, pulled after Create (remote/incoming.py)
        with self.store.read() as txn:
            noted = remotes.pulls(txn)
        if noted:
            self._load_incoming()  # pulls a daemon stopped in the middle of: resumed now

    @property
    def incoming(self):
        """The pulls of this daemon; loads remote/ on first use."""
        return self._incoming or self._load_incoming()

    def _load_incoming(self):
        from ..remote.incoming import Incoming

        self._incoming = Incoming(self.store)
        return self._incoming

    def _pulling(self, name: str):
        """The pull of volume `name` still running or failed, or None."""
        return self._incoming.pending(name) if self._incoming is not None else None

    def lock_key(self, method: str, req: dict) -> str | None:
        """The family a call must hold the lock of, or None if it needs none."""
        if method not in SERIALISED:
            return None
        try:
            record = self.sup.record(_name(req), missing_ok=True)
        except FusevolError:
            return None  # the call itself will fail on the name
        return record.family if record else req["Name"]

    # -- endpoints ----------------------------------------------------------------

    def activate(self, req: dict) -> dict:
        return {"Implements": ["VolumeDriver"]}

    def capabilities(self, req: dict) -> dict:
        return {"Capabilities": {"Scope": "local"}}

    def create(self, req: dict) -> dict:
        name = _name(req)
        opts = req.get("Opts")
        if isinstance(opts, dict) and ("from-remote" in opts or "remote" in opts):
            job = self._pulling(name)
            if job is not None and not job.note.get("catch_up"):
                if job.note["opts"] != opts:
                    raise AlreadyExists(f"volume {name} is already being pulled from remote "
                                        f"{job.source} with other options; options cannot be "
                                        "changed after create")
                return {}
            if self.sup.record(name, missing_ok=True) is None:
                if self.incoming.start(name, opts):  # pulled in the background
                    return {}
            else:
                self._check_same_options(name, opts)
                return {}
        try:
            self.sup.service.create(name, opts)
        except AlreadyExists:
            if self.sup.record(name, missing_ok=True) is None:
                raise  # a removed source kept for its views: the error says so
            self._check_same_options(name, opts)
        return {}

    def _check_same_options(self, name: str, opts: dict | None) -> None:
        wanted = volumes.parse_options(opts)
        record = self.sup.record(name)
        if any(wanted[k] != getattr(record, k) for k in _SETTINGS):
            given = ", ".join(f"{k}={v}" for k, v in sorted((opts or {}).items())) or "none"
            had = ", ".join(f"{k}={v}" for k, v in sorted(record.options.items())) or "none"
            raise AlreadyExists(
                f"volume {name} already exists with options ({had}); options cannot be "
                f"changed after create (asked for: {given}); remove it and create it again")

    def remove(self, req: dict) -> dict:
        name = _name(req)
        if self._pulling(name) is not None and self.incoming.forget(name) \
                and self.sup.record(name, missing_ok=True) is None:
            return {}  # its pull stopped before installing it
        self.sup.remove(name)
        return {}

    def mount(self, req: dict) -> dict:
        name, mount_id = _name(req), check_mount_id(req.get("ID"))
        if self._pulling(name) is not None:
            self.incoming.wait(name)  # a volume still being pulled: its data first
        # A -o remote=NAME volume older here than on its remote is pulled as after a Create.
        path = self.sup.mount(name, mount_id, pull_newer=self._pull_newer)
        return {"Mountpoint": path}

    def _pull_newer(self, name: str, remote: dict, snapshot: str) -> None:
        self.incoming.catch_up(name, remote, snapshot)

    def unmount(self, req: dict) -> dict:
        self.sup.unmount(_name(req), check_mount_id(req.get("ID")))
        return {}

    def path(self, req: dict) -> dict:
        name = _name(req)
        if self._pulling(name) is not None:
            return {}
        path = self.sup.served_path(self.sup.record(name))
        return {"Mountpoint": path} if path else {}

    def get(self, req: dict) -> dict:
        name = _name(req)
        pulling = self.incoming.describe(name) if self._pulling(name) is not None else None
        with self.store.read() as txn:
            volume = volumes.get(txn, name, missing_ok=pulling is not None)
            if volume is None:  # made by the pull, once it is done
                return {"Volume": pulling}
            status = self._status(txn, volume)
        if pulling is not None:  # rolled forward to a newer snapshot of its remote
            status["pull"] = pulling["Status"]["pull"]
        return {"Volume": self._describe(volume, status)}

    def list(self, req: dict) -> dict:
        with self.store.read() as txn:
            found = volumes.list_all(txn)
        out = [self._describe(v) for v in found]
        known = {v.name for v in found}
        if self._incoming is not None:
            out += [{"Name": n} for n in self._incoming.names() if n not in known]
        return {"Volumes": out}

    # -- descriptions -----------------------------------------------------------------

    def _describe(self, volume: Volume, status: dict | None = None) -> dict:
        out = {"Name": volume.name}
        if volume.created_at:
            out["CreatedAt"] = volume.created_at  # RFC 3339; never an empty string
        path = self.sup.served_path(volume)
        if path:
            out["Mountpoint"] = path
        if status is not None:
            out["Status"] = status
        return out

    def _status(self, txn, volume: Volume) -> dict:
        """What `docker volume inspect` shows under Status."""
        st = volumes.stats(txn, volume)
        status = {
            "logical_bytes": st.logical_bytes,
            "inodes": st.inodes,
            "store_dedup_ratio": _store_dedup_ratio(txn),
            "mounts": volume.mount_count,
            "readonly": bool(volume.readonly),
        }
        if volume.is_view:
            status["source"] = volume.source
            status["subpath"] = volume.subpath
        else:
            status["compression"] = volume.compression
            status["xattr"] = volume.xattr
        if volume.quota:
            status["quota_bytes"] = volume.quota
        return status


def _store_dedup_ratio(txn) -> float:
    """Bytes all volumes hold over the bytes stored once: how much deduplication saves."""
    unique = chunks.totals(txn)["unique_bytes"]
    logical = sum(volumes.stats(txn, r).logical_bytes
                  for r in volumes.list_all(txn, removed=True) if r.vid is not None)
    return round(logical / unique, 3) if unique else 1.0
