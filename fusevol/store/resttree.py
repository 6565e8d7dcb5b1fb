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
snapshots' own objects and counts. In a volume changed since, the same
holds below every folder and file that still has a tree id (rest_parts).

Only where no process can hold a copy of the rows: gc's copy of the file
(compaction.py) does it under its exclusive lock on the store, so no worker
serves the volume and none can start meanwhile. A volume whose intent log
holds operations not applied yet (a worker killed) is left as it is: they
name its inodes by number. The first access to each folder and file after
it writes its rows (a commit, as after a rollback).
"""

import os
import stat

from . import blockmap, intentlog, namespace, snapshots, trees, volumes, xattrs
from .env import Store, Txn
from .inodes import Inodes
from .schema import LAZY, NO_TREE, ROOT_INO, Inode, full_row, ino_key, read_u64, row_mode, u64


def rest_as_tree(txn: Txn, inodes: Inodes) -> bool:
    """Drop the rows of a volume unchanged since it was last written as
    objects, its root row left LAZY on that object; of a volume changed
    since, those below each unchanged folder and file (rest_parts); whether
    it dropped any."""
    vid = inodes.vid
    raw = txn.get("inodes", ino_key(vid, ROOT_INO))
    if raw is None:
        return False
    root = Inode.unpack(raw)
    root_id = root.tree_id
    if root_id == NO_TREE:  # changed since: its unchanged parts alone
        return rest_parts(txn, inodes) > 0
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


def rest_parts(txn: Txn, inodes: Inodes) -> int:
    """In a volume changed since it was last written as objects: below the
    changed folders (no tree id), each unchanged folder keeps its row alone
    (LAZY: its entries, xattrs and everything below it dropped) and each
    unchanged file its row (LAZY: its block map and xattrs dropped), as a
    clone's rows stand once their folder is reached. A folder holding a file
    with several names is gone through as a changed one (that file's other
    names may be rows), and such a file keeps its rows. How many rows went."""
    vid = inodes.vid
    multi = {read_u64(k, 8) for k, _ in txn.scan("multilinks", u64(vid))}
    dropped = 0
    changed = [ROOT_INO]
    while changed:
        folder = changed.pop()
        for _, child in _entries(txn, vid, folder):
            node = inodes.rows.get(txn, child)
            if node.tree_id == NO_TREE:
                if stat.S_ISDIR(node.mode):
                    changed.append(child)
                continue
            if node.flags & LAZY or child in multi:
                continue
            if stat.S_ISDIR(node.mode):
                below = _subtree(txn, vid, child)
                if multi.intersection(below):
                    changed.append(child)
                    continue
                dropped += _drop_below(txn, inodes, child, below)
            elif next(txn.scan("blocks", ino_key(vid, child)), None) is not None \
                    or next(txn.scan("xattrs", ino_key(vid, child)), None) is not None:
                dropped += _drop_own(txn, vid, child)
            else:
                continue  # nothing below it: as a clone's row of it stands
            node.flags |= LAZY
            inodes.rows.put_row(txn, child, node)
    return dropped


def _entries(txn: Txn, vid: int, folder: int) -> list[tuple[bytes, int]]:
    prefix = ino_key(vid, folder)
    return [(bytes(k[len(prefix):]), read_u64(v)) for k, v in txn.scan("dirents", prefix)]


def _subtree(txn: Txn, vid: int, folder: int) -> list[int]:
    """Every inode below a folder (not the folder itself)."""
    out, work = [], [folder]
    while work:
        for _, child in _entries(txn, vid, work.pop()):
            out.append(child)
            raw = txn.get("inodes", ino_key(vid, child))
            if raw is not None and stat.S_ISDIR(row_mode(full_row(raw))):
                work.append(child)
    return out


def _drop_own(txn: Txn, vid: int, ino: int) -> int:
    """An inode's block map and xattrs: what its tree object holds."""
    return blockmap.drop_rows(txn, vid, ino) + xattrs.drop_rows(txn, vid, ino)


def _drop_below(txn: Txn, inodes: Inodes, folder: int, below: list[int]) -> int:
    """Every row below an unchanged folder (entries, back references, inode
    records with the references they hold, block maps, xattrs) and the
    folder's own entries and xattrs."""
    vid = inodes.vid
    n = _drop_own(txn, vid, folder)
    for ino in [folder] + below:
        n += 2 * len(namespace.drop_entries(txn, vid, ino))
    for ino in below:
        node = inodes.rows.get(txn, ino)
        if node.tree_id != NO_TREE:
            trees.decref(txn, node.tree_id)
        n += _drop_own(txn, vid, ino) + 1
        inodes.rows.delete_row(txn, ino)
    return n


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
