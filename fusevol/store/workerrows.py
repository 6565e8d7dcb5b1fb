"""A volume's rows as its worker keeps a copy of them (fs/cache.py, fs/speculate.py).

The worker serving a volume is the only writer of that volume's rows in the
tables below, so it may keep what it wrote and read it back without asking the
store: the store says here which rows those are, and whose they are. The
worker's copy treats tables and keys as opaque names; only the store knows
which table holds what.
"""

from .. import native
from .schema import read_ino_key, read_u64

# The tables whose rows of a volume only its worker writes, which it records
# (Txn.recorded) and keeps. A snapshot only records tree ids in inode rows and
# clears what dirchanges noted; "meta": the volume's next inode number.
WORKER_TABLES = frozenset({"inodes", "dirents", "parents", "xattrs", "blocks", "orphans",
                           "multilinks", "meta", "dirchanges"})

# The rows only changes of names write: a folder's entries, the back
# references, the mark of a file with several names, the next inode number.
# A snapshot writes none of them, nor does a flush or a file's data given
# back (the entries of a lazily cloned folder are written with the folder's
# row, which a change reads first). So what a change read of them holds when
# it is applied, as long as the worker applies its changes of names in order
# (fs/speculate.py): they need not be read again.
NAME_TABLES = frozenset({"dirents", "parents", "multilinks", "meta"})

# Rows only changes of names make (the mark of a file whose last name went:
# unlink, rename over it), though other operations delete them (its data
# given back, its purge). So a change that read one as absent finds it absent
# when it is applied, for the reason above; one it read as present may be gone.
MADE_BY_NAME_CHANGES = frozenset({"orphans"})


def row_owner_py(vid: int):
    """owner(table, key): the inode a row of volume vid belongs to (a folder's
    entries and change notes belong to the folder), None for other rows."""
    def owner(table: str, key: bytes) -> int | None:
        if table == "meta" or len(key) < 16:
            return None
        row_vid, ino = read_ino_key(key)
        return ino if row_vid == vid else None
    return owner


def row_owner(vid: int):
    """row_owner_py's owner, in C when it was built (native/_fusevol_rows.c
    RowOwner): the worker's row cache asks it of every row it does not hold."""
    return native.rows.RowOwner(vid) if native.rows is not None else row_owner_py(vid)


def numbers_between(before, after) -> tuple[int, int]:
    """The inode numbers a change handed out, first to end, from the values
    it read and wrote of its volume's counter row (Inodes.counter_row)."""
    return read_u64(before), read_u64(after)
