"""The object a snapshot writes for a folder: one object, or a tree of pieces.

A folder of up to pieces.FLAT_MAX entries is one object listing them all, as
it always was. A larger one is a PIECED object over a tree of pieces. When a
folder in pieces changed since it was last written, only the names noted in
dirchanges are read and the pieces they fall in rewritten (pieces.update): the
folder is not listed again, so a snapshot costs the change, not the folder.
The form follows the number of entries alone, so equal folders get equal ids.
"""

from . import dirchanges, pieces, trees
from .env import Txn
from .inodes import Inodes
from .schema import IN_PIECES, read_u64, row_flags, vkey


class FolderPlan:
    """What writing one folder needs: the entries to look at (name, ino), and
    the object id of each, filled in as its inode is written."""

    def __init__(self, txn: Txn, inodes: Inodes, ino: int, row, list_dir=None):
        """list_dir(ino): the folder's entries as Inodes.list_dir gives them."""
        self.ino = ino
        self.base_id = dirchanges.base(txn, inodes.vid, ino) if row_flags(row) & IN_PIECES else None
        self.base = trees.get(txn, self.base_id) if self.base_id is not None else None
        if self.base is not None and self.base.pieces is not None:
            # Only the names that changed: each now names an inode, or nothing.
            self.entries = []
            self.gone = []
            for name in dirchanges.names(txn, inodes.vid, ino):
                raw = txn.get("dirents", vkey(inodes.vid, ino, name))
                if raw is None:
                    self.gone.append(name)
                else:
                    self.entries.append((name, read_u64(raw)))
        else:
            self.base = None
            self.entries = list_dir(ino) if list_dir is not None else inodes.list_dir(txn, ino)
            self.gone = []
        self.ids: list[bytes | None] = [None] * len(self.entries)

    def write(self, txn: Txn, inodes: Inodes, row, xattrs: list, refs: trees.RefBatch) -> tuple[bytes, int]:
        """The folder's object, stored (its pieces too) and held once by its
        row: (its id, the flag IN_PIECES or 0, which the row takes)."""
        named = list(zip((name for name, _ in self.entries), self.ids))
        if self.base is not None:
            changes = sorted(named + [(name, None) for name in self.gone])
            built = pieces.update(txn, self.base.pieces, self.base.level, self.base.count, changes)
            if built.count <= pieces.FLAT_MAX:  # shrunk: one object again, from the rows
                named = [(name, inodes.get(txn, child).tree_id) for name, child in inodes.list_dir(txn, self.ino)]
                built = None
        elif len(named) > pieces.FLAT_MAX:
            built = pieces.build(named)
        else:
            built = None
        if built is None:
            data = trees.encode_row(self.ino, row, xattrs, entries=named)
            return refs.add(data, [oid for _, oid in named], [], held=1), 0
        built.store(txn, refs)
        data = trees.encode_row(self.ino, row, xattrs, pieced=(built.count, built.height, built.top))
        return refs.add(data, [built.top], [], held=1), IN_PIECES

    def done(self, txn: Txn, inodes: Inodes, refs: trees.RefBatch) -> None:
        """Once the new object holds what it shares with the base: let the base
        go, and the names noted since."""
        dirchanges.drop(txn, inodes.vid, self.ino, refs)

