"""What the store and what it holds are called, with no store code loaded (a
snapshot a worker takes leaves the CLI only this to check): the store's
folder, volume and snapshot names, VOLUME@SNAPSHOT references."""

import os
import re

from ..errors import InvalidArgument

DEFAULT_STORE = "/var/lib/fusevol"

# Docker's own rule for volume names.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")
NAME_MAX = 255
SNAPSHOT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")  # fullmatch: `$` lets a final newline through


def resolve_path(path: str | None = None) -> str:
    """The store's folder: `path`, else $FUSEVOL_STORE, else DEFAULT_STORE (absolute)."""
    return os.path.abspath(path or os.environ.get("FUSEVOL_STORE") or DEFAULT_STORE)


def shown(value, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr, cut short if long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_name(name) -> str:
    """A volume's name, or InvalidArgument."""
    if not isinstance(name, str) or len(name) > NAME_MAX or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid volume name {shown(name)}: use 2 to 255 characters from "
            "[A-Za-z0-9_.-], starting with a letter or digit"
        )
    return name


def parse_ref(text: str, need_snapshot: bool = True) -> tuple[str, str | None]:
    """Split VOLUME@SNAPSHOT."""
    volume, sep, snap = text.partition("@")
    check_name(volume)
    if sep and not SNAPSHOT_NAME_RE.fullmatch(snap or ""):
        raise InvalidArgument(f"invalid snapshot name {snap!r} in {text!r}")
    if need_snapshot and not sep:
        raise InvalidArgument(f"{text!r} names no snapshot: use VOLUME@SNAPSHOT")
    return volume, (snap if sep else None)
