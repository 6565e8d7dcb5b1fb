"""Snapshot names and VOLUME@SNAPSHOT references: checked without the store's
tree code (a snapshot a worker takes leaves the CLI only this to check)."""

import re

from ..errors import InvalidArgument
from .volumes import check_name

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")  # fullmatch: `$` lets a final newline through


def parse_ref(text: str, need_snapshot: bool = True) -> tuple[str, str | None]:
    """Split VOLUME@SNAPSHOT."""
    volume, sep, snap = text.partition("@")
    check_name(volume)
    if sep and not NAME_RE.fullmatch(snap or ""):
        raise InvalidArgument(f"invalid snapshot name {snap!r} in {text!r}")
    if need_snapshot and not sep:
        raise InvalidArgument(f"{text!r} names no snapshot: use VOLUME@SNAPSHOT")
    return volume, (snap if sep else None)
