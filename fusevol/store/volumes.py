"""Volume records: names, driver options, and the life of a volume's rows.

A volume is a JSON record in the ``volumes`` table plus its rows (inodes,
entries, block maps) under its vid. A *view* volume (``source`` + ``subpath``)
has no rows of its own: it shows one folder of its source volume.
"""

import datetime
import json
import re
import time

from ..errors import AlreadyExists, Busy, InvalidArgument, NotFound
from . import schema
from .env import Txn
from .schema import ROOT_INO, Inode, u64, vkey

# Docker's own rule for volume names.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")

OPTIONS = {
    "readonly": "true or false: every mount of the volume is read-only",
    "source": "an existing volume: this volume is a view of it (needs subpath)",
    "subpath": "a folder inside the source volume that the view shows",
    "size": "a quota in bytes, or with a suffix K, M, G, T (powers of 1024)",
    "compression": "zstd or none",
    "from-snapshot": "VOLUME@SNAPSHOT: the new volume starts as that snapshot (a clone)",
    "from-remote": "REMOTE:VOLUME@SNAPSHOT: the new volume starts as that snapshot, pulled "
                   "from the remote (fusevol remote add)",
    "remote": "REMOTE: the volume follows its service between hosts through that remote "
              "(a lease while mounted, pulled before the first mount, pushed after the last)",
}
_REMOTE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

_SIZE_RE = re.compile(r"^([0-9]+)([KMGT]?)i?B?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# The largest size Linux gives a file (off_t); statfs reports it in 4 KiB blocks
# and df multiplies them back into a u64, so every figure stays representable.
MAX_SIZE = (1 << 63) - 1
NAME_MAX = 255
SUBPATH_MAX = 4000  # below PATH_MAX (4096), leaving room for the mountpoint
_TABLES_BY_VID = ("blocks", "inodes", "dirents", "parents", "xattrs", "orphans", "multilinks")


def shown(value, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr, cut short if long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_name(name) -> str:
    if not isinstance(name, str) or len(name) > NAME_MAX or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid volume name {shown(name)}: use 2 to 255 characters from "
            "[A-Za-z0-9_.-], starting with a letter or digit"
        )
    return name


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
    settings = {"readonly": False, "source": None, "subpath": None, "quota": None, "compression": "zstd"}
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
        elif key == "remote":
            if not _REMOTE_NAME_RE.match(value):
                raise InvalidArgument(f"option remote={shown(value)}: name a remote (fusevol remote ls)")
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
    if settings["source"] and (settings["quota"] or "compression" in opts or "from-snapshot" in opts
                               or "from-remote" in opts or "remote" in opts):
        raise InvalidArgument("a view (source=...) takes only subpath and readonly")
    return settings


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _next_vid(txn: Txn) -> int:
    raw = txn.get("meta", b"next_vid")
    vid = schema.read_u64(raw) if raw else 1
    txn.put("meta", b"next_vid", u64(vid + 1))
    return vid


def create(txn: Txn, name: str, opts: dict | None = None) -> dict:
    check_name(name)
    settings = parse_options(opts)
    existing = get(txn, name, missing_ok=True)
    if existing is not None:
        raise AlreadyExists(f"volume {name} already exists")
    if settings["source"]:
        source = get(txn, settings["source"])
        if source.get("source"):
            raise InvalidArgument(f"volume {settings['source']} is itself a view; give its source")
    record = {
        "name": name,
        "vid": None if settings["source"] else _next_vid(txn),
        "created_at": _now_rfc3339(),
        "options": dict(opts or {}),
        **settings,
    }
    if record["vid"] is not None:
        now = time.time_ns()
        root = Inode(mode=0o040755, uid=0, gid=0, nlink=2, atime_ns=now, mtime_ns=now,
                     ctime_ns=now, parent=ROOT_INO)
        txn.put("inodes", vkey(record["vid"], ROOT_INO), root.pack())
        txn.put("meta", b"next_ino" + u64(record["vid"]), u64(ROOT_INO + 1))
        txn.add_vstats(record["vid"], inodes=1)
    txn.put("volumes", name.encode(), json.dumps(record).encode())
    return record


def get(txn: Txn, name: str, missing_ok: bool = False) -> dict | None:
    raw = txn.get("volumes", name.encode())
    if raw is None:
        if missing_ok:
            return None
        raise NotFound(f"no such volume: {name}")
    return json.loads(bytes(raw))


def put(txn: Txn, record: dict) -> None:
    txn.put("volumes", record["name"].encode(), json.dumps(record).encode())


def list_all(txn: Txn) -> list[dict]:
    return [json.loads(bytes(v)) for _, v in txn.scan("volumes", b"")]


def views_of(txn: Txn, name: str) -> list[str]:
    return [v["name"] for v in list_all(txn) if v.get("source") == name]


def stats(txn: Txn, record: dict) -> schema.VolumeStats:
    vid = record["vid"] if record["vid"] is not None else get(txn, record["source"])["vid"]
    return txn.vstats(vid)


def remove(txn: Txn, name: str) -> None:
    """Delete a volume and drop its references to chunks (freeing those no one else holds)."""
    record = get(txn, name)
    views = views_of(txn, name)
    if views:
        raise Busy(f"volume {name} is shown by view volume(s) {', '.join(views)}; remove them first")
    if record.get("mounts"):
        raise Busy(f"volume {name} is mounted ({len(record['mounts'])} mount(s)); unmount it first")
    snaps = sum(1 for _ in txn.scan("snapshots", name.encode() + b"\0"))
    if snaps:
        raise Busy(f"volume {name} has {snaps} snapshot(s); delete them first "
                   f"(fusevol snapshot ls {name}; fusevol snapshot rm {name}@NAME)")
    if record["vid"] is not None:
        drop_rows(txn, record["vid"])
    txn.delete("volumes", name.encode())


def drop_rows(txn: Txn, vid: int, keep_counter: bool = False) -> None:
    """Delete every row of a volume, letting go of the chunks and tree objects
    they reference. The inode counter may stay, so numbers are never reused."""
    from . import chunks, trees  # hashing and compression: not for `volume ls`

    prefix = u64(vid)
    for _, cid in txn.scan("blocks", prefix):
        chunks.decref(txn, bytes(cid))
    for _, raw in txn.scan("inodes", prefix):
        tree_id = Inode.unpack(raw).tree_id
        if tree_id != schema.NO_TREE:
            trees.decref(txn, tree_id)
    for table in _TABLES_BY_VID:
        txn.delete_prefix(table, prefix)
    usage = stats(txn, {"vid": vid})
    txn.add_vstats(vid, -usage.logical_bytes, -usage.inodes)
    if not keep_counter:
        txn.delete("meta", b"next_ino" + prefix)
