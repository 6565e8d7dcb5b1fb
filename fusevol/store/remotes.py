"""Remote records: where a remote's bucket is, kept in the store's `meta` table.

A record holds the remote's name, URL (s3://BUCKET/PREFIX), endpoint and
region, never credentials: those come from the standard AWS chain each time.
"""

import json
import uuid

from ..errors import AlreadyExists, NotFound
from .env import Txn

_PREFIX = b"remote/"


def _key(name: str) -> bytes:
    return _PREFIX + name.encode()


def add(txn: Txn, record: dict) -> None:
    if not txn.put("meta", _key(record["name"]), json.dumps(record).encode(), overwrite=False):
        raise AlreadyExists(f"remote {record['name']} already exists", reason="remote_exists",
                            remote=record["name"])


def get(txn: Txn, name: str) -> dict:
    raw = txn.get("meta", _key(name))
    if raw is None:
        raise NotFound(f"no remote named {name!r}", reason="no_remote")
    return json.loads(bytes(raw))


def list_all(txn: Txn) -> list[dict]:
    return [json.loads(bytes(value)) for _, value in txn.scan("meta", _PREFIX)]


def store_id(txn: Txn) -> str:
    """This store's lasting id (a lease a store takes is its own after a
    restart); made at the first ask, in a write transaction."""
    raw = txn.get("meta", b"store_id")
    if raw is None:
        raw = uuid.uuid4().hex.encode()
        txn.put("meta", b"store_id", raw)
    return bytes(raw).decode()


def known_store_id(txn: Txn) -> str | None:
    raw = txn.get("meta", b"store_id")
    return bytes(raw).decode() if raw is not None else None


def remove(txn: Txn, name: str) -> None:
    if not txn.delete("meta", _key(name)):
        raise NotFound(f"no remote named {name!r}")


# Volumes that follow a remote (-o remote=NAME) and whose data the remote may
# lack: set at their first mount on this host, cleared once the push after
# their last unmount has landed. It outlives the daemon, so a push cut short
# (the daemon killed) is done when the daemon starts again.
_OWED = b"remote-owed/"


def owe(txn: Txn, volume: str) -> None:
    txn.put("meta", _OWED + volume.encode(), b"")


def settle(txn: Txn, volume: str) -> None:
    txn.delete("meta", _OWED + volume.encode())


def owes(txn: Txn, volume: str) -> bool:
    return txn.get("meta", _OWED + volume.encode()) is not None


# Volumes Docker asked for from a remote whose pull runs in the daemon
# (remote/incoming.py): JSON of where from and the volume's options, until the
# pulled volume is installed. It outlives the daemon, so a daemon started
# again resumes the pull (and Docker, which already lists the volume, keeps it).
_PULLING = b"remote-pulling/"


def note_pull(txn: Txn, volume: str, record: dict) -> None:
    txn.put("meta", _PULLING + volume.encode(), json.dumps(record).encode())


def drop_pull(txn: Txn, volume: str) -> None:
    txn.delete("meta", _PULLING + volume.encode())


def pulls(txn: Txn) -> dict[str, dict]:
    """{volume: record} of every pull noted."""
    out = {}
    for key, value in txn.scan("meta", _PULLING):
        out[bytes(key[len(_PULLING):]).decode()] = json.loads(bytes(value))
    return out
