"""Tables of small rows written again in key order, inside the store's file.

Rows put under random keys (chunk ids, object ids, names) leave a B-tree's
leaves about a third empty: a full leaf splits in two halves. compaction.py
copies the whole file in key order, but only while no other process has the
store open. While one does (a mounted volume, `fusevol serve`), gc writes
each such table again where it is: its rows read, the table emptied and
filled again in key order with LMDB's append mode (a full leaf is then left
full and a new one started), in one transaction per table, so every leaf but
the last is full. The old pages go to LMDB's free list, from where
freepages.py gives them back to the disk. A writer waits for the lock
meanwhile (milliseconds for a table of thousands of rows, see MAX_BYTES).

Count rows and inode records are written short (restforms.py, format 5).

Only tables of small rows (not packs and large blobs, which fill their pages
already), whose leaves are emptier than WORTH says, and of at most MAX_BYTES
(the time writers wait).
"""

from . import restforms
from .env import Store

TABLES = ("refs", "orefs", "ocounts", "packdead", "inodes", "dirents", "parents", "blocks",
          "xattrs", "orphans", "multilinks", "dirchanges")
# A table is written again when its leaves take this much more than its rows
# would in full leaves.
WORTH = 1.15
# Writers wait while a table is written again: 1,000,000 rows of counts
# (98 MiB of leaves) took 8 s, most of it the commit's writes, on the loaded
# bench machine; 16 MiB is about a second there.
MAX_BYTES = 16 << 20
_NODE = 8 + 2  # LMDB's node header, and the node's pointer in its page
_PAGE_HEAD = 16


def _full_pages(rows, psize: int) -> int:
    """Leaf pages the rows take with every leaf full (about: LMDB aligns nodes to 2)."""
    room = psize - _PAGE_HEAD
    pages, used = 1, 0
    for key, value in rows:
        size = _NODE + len(key) + len(value) + ((len(key) + len(value)) & 1)
        if used + size > room:
            pages += 1
            used = 0
        used += size
    return pages


def repack(store: Store, max_bytes: int = MAX_BYTES, tables=TABLES) -> dict:
    """Write again every table of `tables` (of at most max_bytes) whose leaves
    it makes fewer; the leaf pages each took before and after."""
    psize = store.env.stat()["psize"]
    report = {}
    for name in tables:
        db = store.dbs[name]
        with store.read() as txn:
            st = txn.txn.stat(db)
            if st["entries"] < 2 or (st["leaf_pages"] + st["overflow_pages"]) * psize > max_bytes:
                continue
            # The rows' short forms (restforms.py, a few microseconds a row in
            # Python) are made before the write lock is taken: writers wait for
            # the table's copy alone, unless it changed meanwhile.
            seen = list(txn.txn.cursor(db).iternext())
        short = list(restforms.short(name, seen))
        with store.write(durable=False) as txn:
            raw = txn.txn
            rows = list(raw.cursor(db).iternext())
            rows = short if rows == seen else list(restforms.short(name, rows))
            before = raw.stat(db)["leaf_pages"]
            if before <= _full_pages(rows, psize) * WORTH:
                continue
            raw.drop(db, delete=False)
            consumed, added = raw.cursor(db).putmulti(rows, append=True)
            if consumed != added or added != len(rows):
                raise RuntimeError(f"table {name}: {len(rows) - added} rows not taken again")
            report[name] = {"leaf_pages_before": before, "leaf_pages_after": raw.stat(db)["leaf_pages"]}
    return report
