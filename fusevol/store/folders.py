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
from .schema import IN_PIECES, NO_TREE, Inode, read_u64, vkey


class FolderPlan:
    """What writing one folder needs: the entries to look at, then the object."""

    def __init__(self, txn: Txn, inodes: Inodes, ino: int, inode: Inode):
        self.ino = ino
        self.base_id = dirchanges.base(txn, inodes.vid, ino) if inode.flags & IN_PIECES else None
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
            self.entries = inodes.list_dir(txn, ino)
            self.gone = []

    def unwritten(self, txn: Txn, inodes: Inodes) -> list[int]:
        """Entries whose inode changed since it was last written."""
        return [child for _, child in self.entries if inodes.get(txn, child).tree_id == NO_TREE]

    def write(self, txn: Txn, inodes: Inodes, inode: Inode, refs: trees.RefBatch) -> trees.TreeObject:
        """The folder's object (its pieces stored, the object itself not yet).
        Sets or clears IN_PIECES on inode, which the caller stores."""
        named = [(name, inodes.get(txn, child).tree_id) for name, child in self.entries]
        if self.base is not None:
            changes = sorted(named + [(name, None) for name in self.gone])
            built = pieces.update(txn, self.base.pieces, self.base.level, self.base.count, changes)
            if built.count <= pieces.FLAT_MAX:  # shrunk: one object again, from the rows
                named = [(name, inodes.get(txn, child).tree_id)
                         for name, child in inodes.list_dir(txn, self.ino)]
                built = None
        elif len(named) > pieces.FLAT_MAX:
            built = pieces.build(named)
        else:
            built = None
        obj = trees.TreeObject(trees.DIR, self.ino, inode)
        if built is None:
            obj.entries = named
            inode.flags &= ~IN_PIECES
        else:
            built.store(txn, refs)
            obj.pieces, obj.count, obj.level = built.top, built.count, built.height
            inode.flags |= IN_PIECES
        return obj

    def done(self, txn: Txn, inodes: Inodes, refs: trees.RefBatch) -> None:
        """Once the new object holds what it shares with the base: let the base
        go, and the names noted since."""
        dirchanges.drop(txn, inodes.vid, self.ino, refs)
