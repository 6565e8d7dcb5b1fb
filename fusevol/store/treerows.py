"""How a volume's live rows stand to the tree objects of its snapshots.

Every inode row carries `tree_id`, the object it was last written as (or
NO_TREE). Two rules keep rows and objects true to each other, and this is the
only module that applies them:

- A change clears it. Storing a changed inode (`put`) lets go of the object
  its row held, and clears its folders' tree ids too (a folder's row knows its
  parent; a file finds its folders in the back references), so the next
  snapshot writes again what changed, and only that. A folder in pieces keeps
  that object as the base of its next snapshot, and notes which of its names
  changed (dirchanges.py).
- A clone copies nothing. A clone's or rollback's rows start as the root's row
  alone, flagged LAZY: an inode's entries, block map and xattrs stay in its
  tree object until it is first reached (`with_rows`), and then become rows of
  their own through the modules that own them (namespace.py, blockmap.py,
  xattrs.py), each child a LAZY row in turn.

The namespace, the block maps and the xattrs call `with_rows` before they read an
inode's rows, and `put` to store an inode they changed.
"""

import stat

from . import blockmap, dirchanges, namespace, trees, xattrs
from .env import Txn
from .inoderows import InodeRows
from .schema import IN_PIECES, LAZY, NO_TREE, ROOT_INO, Inode


class TreeRows:
    def __init__(self, vid: int, rows: InodeRows):
        self.vid = vid
        self.inode_rows = rows
        self._put_row = rows.put_row

    def put(self, txn: Txn, ino: int, inode: Inode) -> None:
        """Store a changed inode. It no longer matches the tree object it was
        last written as, nor do the directories above it: clear their tree ids
        so the next snapshot writes them again (and only them).

        The reference to the tree object is the stored row's: `inode` may be a
        copy read before an earlier change of this transaction cleared the row
        (a folder dirtied as the parent of what rename or link just changed),
        and must not release it a second time."""
        if inode.tree_id != NO_TREE:
            self._release_for_change(txn, ino, inode)
        self._put_row(txn, ino, inode)

    def _release_for_change(self, txn: Txn, ino: int, inode: Inode) -> None:
        stored = self.inode_rows.find(txn, ino)
        if stored is None:  # not stored yet: the copy is all there is
            stored = inode
        if stored.tree_id == NO_TREE:  # released and materialized already
            inode.tree_id = NO_TREE
            inode.flags &= ~LAZY
            return
        inode.tree_id = stored.tree_id
        if stored.flags & LAZY:
            self._materialize(txn, ino, inode)
        else:
            inode.flags &= ~LAZY
        old, inode.tree_id = inode.tree_id, NO_TREE
        if stored.flags & IN_PIECES:
            # The next snapshot starts from that object: its reference moves.
            dirchanges.keep_base(txn, self.vid, ino, old)
        else:
            trees.decref(txn, old)
        self._dirty_parents(txn, ino, inode)

    def _dirty_parents(self, txn: Txn, ino: int, inode: Inode) -> None:
        if stat.S_ISDIR(inode.mode):
            parents = [] if ino == ROOT_INO else [inode.parent]
        else:
            parents = namespace.parents_of(txn, self.vid, ino)
        for parent in parents:
            pnode = self.inode_rows.get(txn, parent)
            if pnode.flags & IN_PIECES:  # it records which of its names changed
                for name in namespace.names_in(txn, self.vid, parent, ino):
                    dirchanges.note(txn, self.vid, parent, name)
            if pnode.tree_id != NO_TREE:
                self.put(txn, parent, pnode)

    # -- a clone's rows, made as they are reached ------------------------------

    def with_rows(self, txn: Txn, ino: int, inode: Inode | None = None) -> Inode:
        """The inode (to change), with its entries, block map and xattrs
        present as rows."""
        inode = inode or self.inode_rows.get(txn, ino)
        if inode.flags & LAZY:
            self._materialize(txn, ino, inode)
            self._put_row(txn, ino, inode)
        return inode

    def check_rows(self, txn: Txn, ino: int) -> None:
        """`with_rows` for a reader: the inode's rows are present after it
        (a read of its flags: every read of a block map or an xattr asks)."""
        if self.inode_rows.flags(txn, ino) & LAZY:
            self.with_rows(txn, ino)

    def _materialize(self, txn: Txn, ino: int, inode: Inode) -> None:
        """Give a cloned inode rows of its own (entries or block map, xattrs)
        from its tree object; it stays equal to that object."""
        obj = trees.get(txn, inode.tree_id)
        xattrs.adopt_rows(txn, self.vid, ino, obj.xattrs)
        blockmap.adopt_rows(txn, self.vid, ino, obj.blocks)
        for name, child_id in trees.entries(txn, obj):
            child = trees.get(txn, child_id)
            if not self.inode_rows.exists(txn, child.ino):
                node = child.inode
                node.tree_id = child_id
                if stat.S_ISDIR(node.mode):
                    node.parent = ino
                if stat.S_ISDIR(node.mode) or child.blocks or child.xattrs:
                    node.flags |= LAZY
                if child.pieces is not None:
                    node.flags |= IN_PIECES
                trees.incref(txn, child_id)
                self._put_row(txn, child.ino, node)
            namespace.link_entry(txn, self.vid, ino, name, child.ino, note=False)  # the object has it
        inode.flags &= ~LAZY

    # -- the end of an inode, and of a volume ------------------------------------

    def release(self, txn: Txn, ino: int, inode: Inode) -> None:
        """An inode with no name left lets go of its tree object (and of the
        base its folder in pieces kept), stored as it is then."""
        if inode.tree_id != NO_TREE:
            trees.decref(txn, inode.tree_id)
            inode.tree_id = NO_TREE
            inode.flags &= ~LAZY  # a lazy inode has no rows of its own to drop
            self._put_row(txn, ino, inode)
        if inode.flags & IN_PIECES:
            dirchanges.drop(txn, self.vid, ino)
            inode.flags &= ~IN_PIECES
            self._put_row(txn, ino, inode)

    def drop(self, txn: Txn) -> None:
        """Let go of every tree object the volume's rows hold (before they go)."""
        for tree_id in self.inode_rows.tree_ids(txn):
            trees.decref(txn, tree_id)
        dirchanges.drop_volume(txn, self.vid)

