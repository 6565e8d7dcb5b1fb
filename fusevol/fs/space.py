"""How much more a mounted volume can take: its quota and its store's disk.

The worker admits a write only if the bytes it already holds in memory plus the
new ones fit in what is left, so data it acknowledged can always be stored.

Where a refusal is seen depends on the kernel's writeback cache. Without it
(volumes with a quota, see operations.py) every write(2) reaches the worker
and gets EDQUOT or ENOSPC itself. With it, write(2) only fills the page cache;
the worker refuses the kernel's later writes, and fsync and close report it
(the kernel keeps ENOSPC as it is and reports other errors as EIO).
"""

import errno

from ..store import Store
from ..store.env import SPACE_RESERVE

# The worker keeps more free than the store's own last-moment check does
# (SPACE_RESERVE), so that what it admitted always passes that check.
WORKER_RESERVE = SPACE_RESERVE + (32 << 20)
# A 128 KiB block takes 33 pages of LMDB's 4 KiB, and B-tree pages come on top.
OVERHEAD = 1 + 1 / 16
# The disk's free space may be a figure this many seconds old while the room
# is at least FAR_FROM_FULL; nearer the limit it is looked at again each time.
FREE_FRESH_FOR = 0.05
FAR_FROM_FULL = 1 << 30


class SpaceBudget:
    def __init__(self, store: Store, quota: int | None, used: int, pending=lambda: 0):
        self.store = store
        self.pending = pending  # bytes stored but not committed yet (not on disk)
        self.quota = quota
        self.used = used  # the volume's stored logical bytes, as last seen
        # Pages LMDB freed inside its file (after deletes), as last counted;
        # spent as flushes store data, so it never counts twice.
        self.store_slack = 0

    def disk_room(self) -> int:
        ours = self.store_slack - WORKER_RESERVE - self.pending()
        room = self.store.disk_free(max_age=FREE_FRESH_FOR) + ours
        return room if room >= FAR_FROM_FULL else self.store.disk_free() + ours

    def stored(self, added: int, written: int) -> None:
        """A flush stored `written` bytes, adding `added` to the volume's."""
        self.used += added
        self.store_slack = max(0, self.store_slack - written)

    def _lefts(self, buffered: int) -> tuple[float, float]:
        """Bytes that may still come, for the disk and for the quota."""
        disk = self.disk_room() - buffered * OVERHEAD
        quota = float("inf") if self.quota is None else self.quota - self.used - buffered
        return disk, quota

    def shortfall(self, incoming: int, buffered: int) -> int | None:
        """The errno to refuse `incoming` more bytes with, or None if they fit."""
        disk, quota = self._lefts(buffered)
        if incoming > quota:
            return errno.EDQUOT
        if incoming * OVERHEAD > disk:
            return errno.ENOSPC
        return None
