"""What changed in a folder kept as pieces since a snapshot last wrote it.

A snapshot writes a large folder (pieces.py) from the object it was last
written as and the names whose entries changed since, so it never lists the
whole folder again. When such a folder first changes, the reference its row
held on that object moves here (the base); every name linked, unlinked or
whose inode changed is then recorded, once. The next snapshot reads both and
clears them. Only folders whose row has IN_PIECES are tracked: the rest cost
one flag test per change.
"""

from . import trees
from .env import Txn
from .schema import IN_PIECES, ino_key, row_flags, u64, vkey

TABLE = "dirchanges"


def note(txn: Txn, vid: int, parent: int, name: bytes) -> None:
    """Record that parent/name changed, if parent is a tracked folder."""
    raw = txn.get("inodes", ino_key(vid, parent))
    if raw is not None and row_flags(raw) & IN_PIECES:
        txn.put(TABLE, vkey(vid, parent, name), b"")


def keep_base(txn: Txn, vid: int, ino: int, oid: bytes) -> None:
    """The folder's row lets go of oid: the base row holds that reference now."""
    txn.put(TABLE, vkey(vid, ino), oid)


def base(txn: Txn, vid: int, ino: int) -> bytes | None:
    raw = txn.get(TABLE, vkey(vid, ino))
    return bytes(raw) if raw is not None else None


def names(txn: Txn, vid: int, ino: int) -> list[bytes]:
    prefix = vkey(vid, ino)
    return [bytes(k[len(prefix):]) for k, _ in txn.scan(TABLE, prefix) if len(k) > len(prefix)]


def drop(txn: Txn, vid: int, ino: int, refs: "trees.RefBatch | None" = None) -> None:
    """Forget a folder's record, letting go of its base."""
    oid = base(txn, vid, ino)
    txn.delete_prefix(TABLE, vkey(vid, ino))
    if oid is not None:
        refs.decref(oid) if refs is not None else trees.decref(txn, oid)


def drop_volume(txn: Txn, vid: int) -> None:
    """Forget every record of a volume's folders, letting go of their bases."""
    prefix = u64(vid)
    for key, oid in txn.scan(TABLE, prefix):
        if len(key) == 16:  # a folder's base (the other rows are names)
            trees.decref(txn, bytes(oid))
    txn.delete_prefix(TABLE, prefix)
