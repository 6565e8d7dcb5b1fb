"""A volume at rest kept as its tree alone (gc's copy of the file).

A volume's rows (inode records, entries, back references, block maps,
xattrs) say again what the tree object its root row names says, once that
row has a tree id: every change clears the tree ids of the inode and of the
folders above it (treerows.py), so a root with one is a volume unchanged
since it was last written as objects (its last snapshot, mostly). Such a
volume can then drop its rows and keep its root row alone, LAZY, as a clone
or a rollback does (snapshots.install_root): the rest becomes rows again as
it is reached (treerows.with_rows), the same rows with the same numbers and
counts. On the evolve bench's store (1,500 files, five snapshots) that is
the 450 KB of the volume's rows: what was left of its overhead beyond the
snapshots' own objects and counts.

Only where no process can hold a copy of the rows: gc's copy of the file
(compaction.py) does it under its exclusive lock on the store, so no worker
serves the volume and none can start meanwhile. A volume whose intent log
holds operations not applied yet (a worker killed) is left as it is: they
name its inodes by number. The first access to each folder and file after
it writes its rows (a commit, as after a rollback).
"""

import os

from . import intentlog, namespace, snapshots, trees, volumes
from .env import Store, Txn
from .inodes import Inodes
from .schema import LAZY, NO_TREE, ROOT_INO, Inode, ino_key, u64


def rest_as_tree(txn: Txn, inodes: Inodes) -> bool:
    """Drop the rows of a volume unchanged since it was last written as
    objects, its root row left LAZY on that object; whether it did."""
    vid = inodes.vid
    raw = txn.get("inodes", ino_key(vid, ROOT_INO))
    if raw is None:
        return False
    root = Inode.unpack(raw)
    root_id = root.tree_id
    if root_id == NO_TREE:  # changed since: its rows are all there is
        return False
    if root.flags & LAZY and next(txn.scan("inodes", u64(vid), start=ino_key(vid, ROOT_INO + 1)), None) is None:
        return False  # its root row alone already
    if next(txn.scan("orphans", u64(vid)), None) is not None:
        return False  # unnamed files still open when it was last served: not in the tree
    hardlinks = namespace.hardlinks(txn, vid)
    next_ino = inodes.rows.next_ino(txn)
    usage = txn.vstats(vid)
    trees.incref(txn, root_id)  # kept while the rows that hold it go
    inodes.drop_all(txn, keep_counter=True)
    snapshots.install_root(txn, inodes, root_id, hardlinks, next_ino)
    trees.decref(txn, root_id)  # the root row took its own
    now = txn.vstats(vid)
    txn.add_vstats(vid, usage.logical_bytes - now.logical_bytes, usage.inodes - now.inodes)
    return True


def rest_volumes(store: Store) -> list[str]:
    """rest_as_tree for every volume of the store (whose rows no process may
    hold: see the module's doc) that has no intent log waiting; the names
    of those it did, in one transaction."""
    done = []
    with store.write() as txn:
        for record in volumes.list_all(txn, removed=True):
            if record.vid is None:  # a view: its source's rows
                continue
            if any(os.path.exists(p) for p in intentlog.file_paths(store.path, record.vid)):
                continue
            if rest_as_tree(txn, Inodes(record.vid, store.block_size, record.compression)):
                done.append(record.name)
    return done
