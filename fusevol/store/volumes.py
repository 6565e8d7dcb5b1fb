"""Volume records: names, driver options, and the life of a volume's rows.

A volume is a JSON record in the ``volumes`` table plus its rows (inodes,
entries, block maps) under its vid. A *view* volume (``source`` + ``subpath``)
has no rows of its own: it shows one folder of its source volume.

Removing a source that still has views (docker-compose removes volumes in the
order its file names them) marks it ``removed`` instead: it is gone for every
caller that names it (get, list, create of the same name), while its views keep
showing its data; the removal of its last view deletes it in the same
transaction. Likewise a view may be created before its source (compose
creates volumes in the order its file names them): the source is looked up
when the view is mounted. So a source and its views can be created and
removed in any order, and data never goes while a view still shows it.
"""

import json
import re
import time

from ..errors import AlreadyExists, Busy, InUse, InvalidArgument, NotFound
from ..records import MountSpec, Volume
from . import schema
from .env import Txn
from .names import NAME_MAX, NAME_RE, check_name, shown  # noqa: F401 (callers take them from here too)
from .schema import u64

OPTIONS = {
    "readonly": "true or false: every mount of the volume is read-only",
    "source": "an existing volume: this volume is a view of it (needs subpath)",
    "subpath": "a folder inside the source volume that the view shows",
    "size": "a quota in bytes, or with a suffix K, M, G, T (powers of 1024)",
    "compression": "zstd or none",
    "from-snapshot": "VOLUME@SNAPSHOT: the new volume starts as that snapshot (a clone)",
    "atime": "noatime (the default), relatime or strictatime: when reads renew atime",
    "suid": "true or false (the default): setuid and setgid bits take effect",
    "dev": "true or false (the default): device nodes on the volume can be opened",
    "xattr": "on (the default) or off: no extended attributes, and cheaper writes",
    "from-remote": "REMOTE:VOLUME@SNAPSHOT to start from",
    "remote": "a remote the volume follows",
}
ATIME_MODES = ("noatime", "relatime", "strictatime")
# Every setting a volume has, as an old record without it is taken to have.
DEFAULTS = {"readonly": False, "source": None, "subpath": None, "quota": None,
            "compression": "zstd", "atime": None, "suid": False, "dev": False,
            "xattr": True}
_REMOTE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

_SIZE_RE = re.compile(r"^([0-9]+)([KMGT]?)i?B?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# The largest size Linux gives a file (off_t); statfs reports it in 4 KiB blocks
# and df multiplies them back into a u64, so every figure stays representable.
MAX_SIZE = (1 << 63) - 1
SUBPATH_MAX = 4000  # below PATH_MAX (4096), leaving room for the mountpoint

def _removed_note(txn: Txn, name: str) -> str:
    views = ", ".join(views_of(txn, name))
    return f"volume {name} was removed; its data stays until its views ({views}) are removed"


def parse_size(text: str) -> int:
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise InvalidArgument(f"invalid size {shown(text)}: use bytes or a number with K, M, G or T")
    digits = m.group(1).lstrip("0") or "0"
    if len(digits) > 30:  # far past MAX_SIZE; int() of thousands of digits is refused
        digits = "9" * 30
    size = int(digits) * _UNITS[m.group(2).upper()]
    if size <= 0:
        raise InvalidArgument("size must be greater than zero")
    if size > MAX_SIZE:
        raise InvalidArgument(f"size {shown(text)} is too large: at most {MAX_SIZE} bytes (8 EiB), "
                              "the largest size a file can have")
    return size


def _parse_bool(key: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on", ""):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise InvalidArgument(f"option {key}={shown(text)}: use true or false")


def _parse_on_off(key: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true"):
        return True
    if value in ("off", "false"):
        return False
    raise InvalidArgument(f"option {key}={shown(text)}: use on or off")


def normalize_subpath(text: str) -> str:
    """A folder inside a volume, relative to its root, as "a/b/c"."""
    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"invalid subpath {shown(text)}: {why}; give a folder inside the "
                               "volume relative to its root, such as data/public")

    if not isinstance(text, str):
        raise bad("not a string")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise bad("control characters (NUL, newline, ...) are not allowed")
    if text.startswith("/"):
        raise bad("an absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        raise bad("no folder named")
    if ".." in parts:
        raise bad("'..' is not allowed")
    if len(text.encode(errors="surrogateescape")) > SUBPATH_MAX:
        raise bad(f"longer than {SUBPATH_MAX} bytes")
    if any(len(p.encode(errors="surrogateescape")) > NAME_MAX for p in parts):
        raise bad(f"a name longer than {NAME_MAX} bytes")
    return "/".join(parts)


def parse_options(opts: dict | None) -> dict:
    """Check driver options and return the settings they stand for."""
    opts = opts or {}
    if not isinstance(opts, dict):
        raise InvalidArgument("options must be a map of KEY=VALUE")
    unknown = sorted(k for k in opts if k not in OPTIONS)
    if unknown:
        allowed = "; ".join(f"{k} ({v})" for k, v in OPTIONS.items())
        names = ", ".join(k if k.isprintable() and len(k) <= 40 else shown(k) for k in unknown)
        raise InvalidArgument(f"unknown option {names}: allowed are {allowed}")
    settings = dict(DEFAULTS)
    for key, value in opts.items():
        if not isinstance(value, str):
            raise InvalidArgument(f"option {key} needs a string value")
        if key == "readonly":
            settings["readonly"] = _parse_bool(key, value)
        elif key == "source":
            settings["source"] = check_name(value)
        elif key == "subpath":
            settings["subpath"] = normalize_subpath(value)
        elif key == "size":
            settings["quota"] = parse_size(value)
        elif key == "from-snapshot":
            if "@" not in value:
                raise InvalidArgument(f"option from-snapshot={shown(value)}: use VOLUME@SNAPSHOT")
        elif key == "atime":
            if value not in ATIME_MODES:
                raise InvalidArgument(f"option atime={shown(value)}: use noatime, relatime or "
                                      "strictatime")
            settings["atime"] = value
        elif key in ("suid", "dev"):
            settings[key] = _parse_bool(key, value)
        elif key == "xattr":
            settings["xattr"] = _parse_on_off(key, value)
        elif key == "remote":
            if not _REMOTE_NAME_RE.match(value):
                raise InvalidArgument(f"option remote={shown(value)}: name a remote",
                                      reason="remote_name")
        elif key == "from-remote":
            remote, colon, ref = value.partition(":")
            if not remote or not colon or "@" not in ref:
                raise InvalidArgument(f"option from-remote={shown(value)}: use REMOTE:VOLUME@SNAPSHOT")
        elif key == "compression":
            if value not in schema.CODECS:
                raise InvalidArgument(f"option compression={shown(value)}: use zstd or none")
            settings["compression"] = value
    if settings["subpath"] and not settings["source"]:
        raise InvalidArgument("option subpath needs source=VOLUME (the volume to show a folder of)")
    if "from-snapshot" in opts and "from-remote" in opts:
        raise InvalidArgument("options from-snapshot and from-remote exclude each other")
    if settings["source"] and not settings["subpath"]:
        raise InvalidArgument("option source needs subpath=DIR (the folder of it to show)")
    if settings["source"] and any(k in opts for k in ("size", "compression", "from-snapshot",
                                                       "atime", "suid", "dev", "xattr",
                                                       "from-remote", "remote")):
        raise InvalidArgument("a view (source=...) takes only subpath and readonly; it has its "
                              "source's atime, suid, dev and xattr")
    return settings


def now_rfc3339() -> str:
    """The time in UTC to the second, as records give it (2026-11-28T03:22:43Z)."""
    # (as datetime's isoformat(timespec="seconds") in UTC, without loading datetime)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _next_vid(txn: Txn) -> int:
    raw = txn.get("meta", b"next_vid")
    vid = schema.read_u64(raw) if raw else 1
    txn.put("meta", b"next_vid", u64(vid + 1))
    return vid


def create(txn: Txn, name: str, opts: dict | None = None) -> Volume:
    check_name(name)
    settings = parse_options(opts)
    existing = get(txn, name, missing_ok=True, removed_ok=True)
    if existing is not None:
        if existing.removed:
            raise AlreadyExists(f"{_removed_note(txn, name)}; choose another name")
        raise AlreadyExists(f"volume {name} already exists")
    if settings["source"]:
        source = get(txn, settings["source"], missing_ok=True, removed_ok=True)  # None: made later
        if source is not None and source.removed:
            raise NotFound(f"no such volume: {source.name} ({_removed_note(txn, source.name)})")
        if source is not None and source.is_view:
            raise InvalidArgument(f"volume {settings['source']} is itself a view; give its source")
    volume = Volume(name=name, vid=None if settings["source"] else _next_vid(txn),
                    created_at=now_rfc3339(), options=dict(opts or {}), **settings)
    if volume.vid is not None:
        from .inodes import Inodes

        Inodes(volume.vid, txn.store.block_size).make_root(txn)
    put(txn, volume)
    return volume


def get(txn: Txn, name: str, missing_ok: bool = False, removed_ok: bool = False) -> Volume | None:
    """A volume's record; one removed but kept for its views only if `removed_ok`."""
    raw = txn.get("volumes", name.encode())
    volume = Volume.from_dict(json.loads(bytes(raw))) if raw is not None else None
    if volume is not None and volume.removed and not removed_ok:
        if missing_ok:
            return None
        raise NotFound(f"no such volume: {name} ({_removed_note(txn, name)})")
    if volume is None:
        if missing_ok:
            return None
        raise NotFound(f"no such volume: {name}")
    return volume


def put(txn: Txn, volume: Volume) -> None:
    txn.put("volumes", volume.name.encode(), json.dumps(volume.to_dict()).encode())


def list_all(txn: Txn, removed: bool = False) -> list[Volume]:
    """Every volume's record; with `removed`, also sources removed but kept for their views."""
    found = (Volume.from_dict(json.loads(bytes(v))) for _, v in txn.scan("volumes", b""))
    return [v for v in found if removed or not v.removed]


def views_of(txn: Txn, name: str) -> list[str]:
    return [v.name for v in list_all(txn) if v.source == name]


def stats(txn: Txn, volume: Volume) -> schema.VolumeStats:
    """What a volume holds (a view: what its source holds)."""
    if volume.vid is None:
        source = get(txn, volume.source, missing_ok=True, removed_ok=True)
        if source is None or source.vid is None:  # not created yet
            return schema.VolumeStats()
        return txn.vstats(source.vid)
    return txn.vstats(volume.vid)


def source_of(txn: Txn, view: Volume) -> Volume:
    """The data volume a view shows, as its mount needs it."""
    source = get(txn, view.source, missing_ok=True, removed_ok=True)
    if source is None:
        raise NotFound(f"volume {view.name} is a view of volume {view.source}, which "
                       "does not exist (yet); create it first")
    if source.is_view:
        raise InvalidArgument(f"volume {view.name} is a view of {view.source}, which is "
                              "itself a view; a view shows a folder of a data volume")
    return source


def count_mount(txn: Txn, name: str, mount_id: str, delta: int) -> Volume | None:
    """Count `delta` more mounts of Docker's mount `mount_id` on volume `name`
    (a count that reaches 0 goes); None for a volume that does not exist."""
    volume = get(txn, name, missing_ok=True)
    if volume is None:
        return None
    n = volume.mounts.get(mount_id, 0) + delta
    if n > 0:
        volume.mounts[mount_id] = n
    else:
        volume.mounts.pop(mount_id, None)
    put(txn, volume)
    return volume


def mount_spec(txn: Txn, name: str, *, subpath: str | None = None, readonly: bool = False,
               removed_ok: bool = False) -> MountSpec:
    """What mounting volume `name` serves, the one place views and read-only
    mounts are resolved (the volume service asks here, for the CLI and the
    plugin, and hands the answer to the worker).

    A view serves its source's rows, from its own folder (and `subpath` below
    it); a mount is read-only if it asks to be, or the volume or its source
    is. `removed_ok`: a source removed while it has views is still served for
    them (at the driver's own mountpoint)."""
    volume = get(txn, name, removed_ok=removed_ok)
    data = volume
    if volume.is_view:
        data = source_of(txn, volume)
        subpath = "/".join(p for p in (volume.subpath, subpath) if p)
    if subpath is not None:
        subpath = normalize_subpath(subpath)
    return MountSpec(name=name, data=data, subpath=subpath,
                     readonly=bool(readonly or volume.readonly or data.readonly))


def remove(txn: Txn, name: str) -> list[str]:
    """Delete a volume and drop its references to chunks (freeing those no one else
    holds); a source with views is only marked removed (see above). Returns the
    volumes deleted: this one, and its source if it was the source's last view."""
    volume = get(txn, name)
    if volume.mounts:  # the service checked; this holds it within the transaction
        raise InUse(f"volume {name} is mounted ({len(volume.mounts)} mount(s))",
                    volume=name, holder="containers", action="remove")
    snaps = sum(1 for _ in txn.scan("snapshots", name.encode() + b"\0"))
    if snaps:
        raise Busy(f"volume {name} has {snaps} snapshot(s); delete them first",
                   reason="has_snapshots", volume=name)
    if views_of(txn, name):
        volume.removed = True
        put(txn, volume)
        return []
    _delete(txn, volume)
    deleted = [name]
    source = get(txn, volume.source, missing_ok=True, removed_ok=True) if volume.is_view else None
    if source is not None and source.removed and not views_of(txn, source.name):
        _delete(txn, source)
        deleted.append(source.name)
    return deleted


def _delete(txn: Txn, volume: Volume) -> None:
    if volume.vid is not None:
        drop_rows(txn, volume.vid)
    txn.delete("volumes", volume.name.encode())


def drop_rows(txn: Txn, vid: int, keep_counter: bool = False) -> None:
    """Delete every row of a volume (Inodes.drop_all); the inode counter may
    stay, so numbers are never reused."""
    from .inodes import Inodes  # hashing and compression: not for `volume ls`

    Inodes(vid, txn.store.block_size).drop_all(txn, keep_counter=keep_counter)
