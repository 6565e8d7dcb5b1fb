"""The block map of a file: which chunk backs each of its fixed-size blocks.

A file is a map block index -> chunk id (`blocks`, one row per stored block);
a missing row is a hole, and an all-zero block is never stored. Each row holds
a reference on its chunk (chunks.py counts them). The map keeps the counters
that follow from it: the file's data_bytes (for st_blocks) and the volume's
logical bytes. This module is the only writer of `blocks`.
"""

from .. import native
from ..ondemand import OnFirstUse
from .env import Txn
from .inoderows import now_ns
from .schema import Inode, ino_key, ino_pair_key, u64


def _import_chunks():
    from . import chunks
    return chunks


# Loaded when a block is first read or written or a map let go: a snapshot
# (the CLI's) reaches the block maps of no file.
chunks = OnFirstUse(globals(), "chunks", _import_chunks)


def adopt_rows(txn: Txn, vid: int, ino: int, blocks) -> None:
    """A cloned file's map from its tree object ((index, chunk id) pairs),
    each row taking its reference; the counters were the tree's already."""
    for index, cid in blocks:
        chunks.incref(txn, cid)
        txn.put("blocks", ino_pair_key(vid, ino, index), cid)


def drop_rows(txn: Txn, vid: int, ino: int) -> int:
    """Delete a file's map, letting go of its chunks, when its tree object
    holds it (a file at rest, resttree.py: the counters stay); the rows gone."""
    rows = list(txn.scan("blocks", ino_key(vid, ino)))
    for key, cid in rows:
        chunks.decref(txn, bytes(cid))
        txn.delete("blocks", bytes(key))
    return len(rows)


def drop_volume(txn: Txn, vid: int) -> None:
    """Delete every map of a volume, letting go of the chunks."""
    prefix = u64(vid)
    for _, cid in txn.scan("blocks", prefix):
        chunks.decref(txn, bytes(cid))
    txn.delete_prefix("blocks", prefix)


class BlockMap:
    """The block maps of one volume's files. `tree` (treerows.TreeRows) gives
    a cloned file its map before it is read, and stores the changed inode."""

    def __init__(self, vid: int, block_size: int, compression: str, tree):
        self.vid = vid
        self.block_size = block_size
        self.compression = compression
        self.tree = tree

    def read_block(self, txn: Txn, ino: int, index: int) -> bytes | None:
        """The stored content of one block (None for a hole); it may be
        shorter than a block at the end of the file."""
        self.tree.check_rows(txn, ino)
        cid = txn.get("blocks", ino_pair_key(self.vid, ino, index))
        if cid is None:
            return None
        return chunks.read(txn, bytes(cid))

    def block_ids(self, txn: Txn, ino: int, indexes: list[int]) -> dict[int, bytes | None]:
        """The chunk id of each block (None for a hole)."""
        self.tree.check_rows(txn, ino)
        out = {}
        vid = self.vid
        for index in indexes:
            cid = txn.get("blocks", ino_pair_key(vid, ino, index))
            out[index] = bytes(cid) if cid is not None else None
        return out

    def write_blocks(self, txn: Txn, ino: int, blocks: list[tuple[int, bytes]], size: int,
                     mtime_ns: int | None = None, ctime_ns: int | None = None,
                     keep_times: bool = False, prepared: dict | None = None) -> int:
        """Replace whole blocks of a file and set its size and times (now,
        unless given; kept as they are with keep_times).

        Each block's data ends at the file's end (or is a full block); an
        all-zero block becomes a hole and costs no space. `prepared` holds the
        blocks already hashed and encoded (chunks.prepare_blocks). Returns the
        change in the volume's stored bytes.
        """
        inode = self.tree.with_rows(txn, ino)
        txn.check_space(sum(len(data) for _, data in blocks))
        delta = 0
        # What each block replaces, read before any hashing: a flush worked out
        # ahead (fs/speculate.py) cannot read chunk lengths and hands over to
        # the store thread before it has hashed anything.
        olds = []
        for index, _ in blocks:
            key = ino_pair_key(self.vid, ino, index)
            old = txn.get("blocks", key)
            old = bytes(old) if old is not None else None
            olds.append((key, old, chunks.raw_length(txn, old) if old is not None else 0))
        for (index, data), (key, old, old_length) in zip(blocks, olds):
            ready = prepared.get(index, False) if prepared is not None else False
            if ready is False:  # not prepared: hash here (and encode if new)
                ready = None if native.is_zero(data) else (chunks.chunk_id(data), None)
            if ready is None:
                new = None
            else:
                new, payload = ready
                if new == old:
                    continue
                txn.defer(chunks.add_ref, data, self.compression, new, payload)
                txn.put("blocks", key, new)
                delta += len(data)
            if old is not None:
                delta -= old_length
                chunks.decref(txn, old)
                if new is None:
                    txn.delete("blocks", key)
        inode.size = size
        inode.data_bytes += delta
        if not keep_times:
            now = now_ns(txn)
            inode.mtime_ns = mtime_ns or now
            inode.ctime_ns = ctime_ns or now
        self.tree.put(txn, ino, inode)
        if delta:
            txn.add_vstats(self.vid, logical_bytes=delta)
        return delta

    def truncate_blocks(self, txn: Txn, ino: int, size: int, inode: Inode | None = None,
                        keep_row: bool = True) -> None:
        """Drop the data beyond size (the tail of the last block included);
        the file's size and times stay as they are. `inode`: its row as
        stored, read already (it is changed and stored here, unless not
        `keep_row`: an inode being purged, whose row goes next)."""
        inode = self.tree.with_rows(txn, ino, inode)
        bs = self.block_size
        first_gone = -(-size // bs)
        prefix = ino_key(self.vid, ino)
        delta = 0
        gone = list(txn.scan("blocks", prefix, start=ino_pair_key(self.vid, ino, first_gone)))
        for key, cid in gone:
            delta -= chunks.decref(txn, bytes(cid))
            txn.delete("blocks", bytes(key))
        if delta:  # (letting go of chunks wrote no inode row)
            txn.add_vstats(self.vid, logical_bytes=delta)
            inode.data_bytes += delta
            if keep_row:
                self.tree.put(txn, ino, inode)
        if size % bs:
            last = size // bs
            data = self.read_block(txn, ino, last)
            if data is not None and len(data) > size % bs:
                inode = self.tree.with_rows(txn, ino)
                self.write_blocks(txn, ino, [(last, data[: size % bs])], inode.size,
                                  inode.mtime_ns, inode.ctime_ns)
