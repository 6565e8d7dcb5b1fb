"""Chunks of a pull stored while they download, ahead of the snapshot that uses them.

Storing 1 GiB only once the whole snapshot had arrived (spool, check, then one
write transaction) took a pull to twice a plain download. Instead every chunk
is stored as its range arrives, in short write transactions (the store's write
lock is never held for a download), each chunk with one reference of the
pull's own: the snapshot installed at the end takes its references like any
holder, and the pull then drops its own, whether it succeeded or failed. A
pull that fails leaves the store as it was; one that is killed leaves chunks
with a count nothing holds, which `fusevol gc` frees (and recounts). A gc run
during a pull frees the chunks staged so far too: the pull then stops and
says so, and pulling again fetches them again.
"""

import logging
import os

from ..store import blobs, chunks
from ..store.env import Store
from ..progress import NoProgress

log = logging.getLogger(__name__)
BATCH_BYTES = 64 << 20  # per write transaction: short enough for other writers to get in
RELEASE_BATCH = 16384   # references dropped per write transaction


def batch_bytes() -> int:
    """Bytes per write transaction; FUSEVOL_PULL_BATCH makes small ones in tests."""
    return int(os.environ.get("FUSEVOL_PULL_BATCH", BATCH_BYTES))


class Staging:
    """Use as a context manager: its exit drops every reference it took."""

    def __init__(self, store: Store):
        self.store = store
        self.held: list[bytes] = []  # chunk ids with a reference of ours, committed
        self.new_chunks = 0  # of those, the ones the store did not hold before

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.release()
        except Exception as e:
            if exc is None:
                raise
            # The pull's own error tells the user more; the counts are gc's to fix.
            log.warning("dropping the references of a failed pull: %s", e)

    def store_batches(self, batches, progress: NoProgress | None = None) -> int:
        """Store every (id, stored, content) of the batches (checked
        already), each with a reference of ours; the bytes stored. Batches
        are gathered first, so no write transaction waits for the network."""
        progress = progress or NoProgress()
        limit = batch_bytes()
        gathered, pending, total = [], 0, 0
        for batch in batches:
            gathered.append(batch)
            pending += sum(len(stored) for _, stored, _ in batch)
            if pending >= limit:
                self._store(gathered, pending, progress)
                total += pending
                gathered, pending = [], 0
        if gathered:
            self._store(gathered, pending, progress)
            total += pending
        return total

    def _store(self, gathered: list, size: int, progress: NoProgress) -> None:
        taken = []
        # Not durable: the install at the end is, and it covers these pages.
        with self.store.write(durable=False, data_files=True) as txn:
            txn.check_space(size)
            for batch in gathered:
                for cid, stored, data in batch:
                    chunks.add_ref(txn, data, cid=cid, payload=stored)
                    taken.append(cid)
            new = txn.chunk_delta[0]
        self.held.extend(taken)
        self.new_chunks += new
        progress.advance(size)

    def release(self) -> None:
        held, self.held = self.held, []
        for start in range(0, len(held), RELEASE_BATCH):
            # Not durable: a crash may undo it, leaving counts too high (gc
            # recounts them), never too low; the next durable commit covers it.
            with self.store.write(durable=False) as txn:
                for cid in held[start:start + RELEASE_BATCH]:
                    if blobs.has(txn, blobs.CHUNK, cid):  # a gc meanwhile may have freed it
                        chunks.decref(txn, cid)

