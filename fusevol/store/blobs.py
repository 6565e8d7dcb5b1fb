"""Chunks and tree objects in their stored form (codec byte + data), as they
travel between stores: what a store holds, and a reader for long walks."""

from ..errors import StoreDamaged
from . import chunks, trees
from .env import Store, Txn

CHUNK, OBJECT = b"C", b"O"
_KINDS = {CHUNK: chunks, OBJECT: trees}  # the module that keeps each kind
RENEW_READ_EVERY = 64 << 20  # bytes read under one read transaction before a fresh one


def has(txn: Txn, kind: bytes, bid: bytes) -> bool:
    """Whether the store holds the chunk or object (an object it holds comes
    with everything below it)."""
    return _KINDS[kind].has(txn, bid)


class BlobReader:
    """Stored blobs read in short read transactions, one after another: a
    long walk (a slow upload) must not pin old pages of the store."""

    def __init__(self, store: Store):
        self.store = store
        self._cm = None
        self.txn: Txn | None = None
        self._read = 0

    def __enter__(self) -> "BlobReader":
        self.renew()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def renew(self) -> None:
        self.close()
        self._cm = self.store.read()
        self.txn = self._cm.__enter__()
        self._read = 0

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = self.txn = None

    def get(self, kind: bytes, bid: bytes) -> bytes:
        if self._read > RENEW_READ_EVERY:
            self.renew()
        raw = _KINDS[kind].stored(self.txn, bid)
        if raw is None:
            what = "tree object" if kind == OBJECT else "chunk"
            raise StoreDamaged(f"{what} {bid.hex()} is gone (was the snapshot deleted meanwhile?)")
        self._read += len(raw)
        return raw
