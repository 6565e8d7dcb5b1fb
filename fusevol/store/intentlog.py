"""The intent log of a volume: small fsync'ed writes made durable with one
append and one fdatasync, applied into the volume's chunks later.

An fsync of a few written KiB would otherwise store whole new 128 KiB chunks
and commit the store durably (two fdatasyncs: LMDB's pages, then its meta
page). Instead the worker appends a record of the file's bytes written since
they were last durable (its ranges, its size and times) to the volume's log and
syncs the log alone; the bytes stay in the worker's buffers and reach the store
as usual, with a later commit. A checkpoint (the worker's, every few seconds
and for every fsync or sync that cannot go to the log) stores everything the
worker holds and records, in the same commit, the last record it covers
(`applied`); records up to it are then never read again.

Records are numbered (lsn) one after the other. The log is two files used in
turn: a checkpoint moves the writer to the other file (from its start) and
frees the first once its commit is durable, so the log stays small while
records keep coming. A record carries a BLAKE3 digest: one torn by a crash
ends its file, as does one whose number does not follow (an older record left
beyond what a reused file holds now).

Before anything else reads the volume, the records after `applied` are
applied in order on top of what the store holds, and `applied` moves past them
in the same commit: by the worker that mounts the volume, and by any process
that opens the store while no worker holds the volume's log (its lock, a
flock, is the worker's while it serves): a snapshot, export, send or rollback
after a crash sees everything an fsync covered.

This module is the only reader and writer of the logs and of the `intent`
rows of `meta`.
"""

import errno
import fcntl
import os
import struct
from collections import namedtuple

from ..logs import logger
from . import schema
from .env import Txn

log = logger(__name__)

DIR = "intent"
MAGIC = b"FVIL"
# magic, lsn, ino, size, mtime_ns, ctime_ns, number of ranges, bytes of data
HEAD = struct.Struct(">4sQQQqqII")
RANGE = struct.Struct(">QI")  # offset, length
DIGEST = 16
# Bytes a log file is laid out with (zeros, synced once): overwriting them
# needs no metadata change, so a record costs one data write and its sync (a
# record that grows the file costs a journal commit too: an fdatasync of 8 KiB
# took 370-650 us against 160-220 here). The worker lays out more ahead of its
# records as they come (fs/intent.py).
PREALLOCATE = 4 << 20


# ranges: (offset, bytes) pairs. (collections' namedtuple, not typing's: every
# process that opens the store imports this module, and typing costs a CLI
# command a tenth of its start.)
Record = namedtuple("Record", "lsn ino size mtime_ns ctime_ns ranges")


def encoded_size(ranges) -> int:
    """Bytes the record of these (offset, bytes) ranges takes in a log file."""
    return HEAD.size + len(ranges) * RANGE.size + sum(len(data) for _, data in ranges) + DIGEST


def encode(rec: Record) -> bytes:
    return b"".join(encode_parts(rec))


def encode_parts(rec: Record) -> tuple[bytes, bytes]:
    """The record as its body and its digest (two buffers for one pwritev:
    the body is not copied again to append the digest)."""
    ranges = rec.ranges
    parts = [HEAD.pack(MAGIC, rec.lsn, rec.ino, rec.size, rec.mtime_ns, rec.ctime_ns,
                       len(ranges), sum(len(data) for _, data in ranges))]
    parts += [RANGE.pack(off, len(data)) for off, data in ranges]
    parts += [data for _, data in ranges]
    body = b"".join(parts)  # hashed whole: BLAKE3 hashes its 1 KiB chunks in parallel
    return body, _digest(body)


def _digest(data) -> bytes:
    import blake3  # not for commands that never meet a log

    return blake3.blake3(data).digest(DIGEST)


def decode_all(buf) -> list[Record]:
    """The records a log file holds from its start: consecutive numbers, each
    whole and intact; the first that is not ends the file."""
    out: list[Record] = []
    view = memoryview(buf)
    pos = 0
    while pos + HEAD.size <= len(view):
        magic, lsn, ino, size, mtime, ctime, n, data_len = HEAD.unpack_from(view, pos)
        if magic != MAGIC or (out and lsn != out[-1].lsn + 1):
            break
        end = pos + HEAD.size + n * RANGE.size + data_len
        if end + DIGEST > len(view) or n > data_len:  # (ranges are never empty)
            break
        if _digest(view[pos:end]) != view[end:end + DIGEST]:
            break
        at = pos + HEAD.size + n * RANGE.size
        ranges = []
        for i in range(n):
            off, length = RANGE.unpack_from(view, pos + HEAD.size + i * RANGE.size)
            ranges.append((off, bytes(view[at:at + length])))
            at += length
        out.append(Record(lsn, ino, size, mtime, ctime, ranges))
        pos = end + DIGEST
    return out


# -- where the logs are, and who holds them ---------------------------------------

def log_dir(store_path: str) -> str:
    return os.path.join(store_path, DIR)


def lock_path(store_path: str, vid: int) -> str:
    return os.path.join(log_dir(store_path), f"{vid}.lock")


def file_paths(store_path: str, vid: int) -> list[str]:
    return [os.path.join(log_dir(store_path), f"{vid}.{i}") for i in (0, 1)]


def lock(store_path: str, vid: int, blocking: bool = True) -> int | None:
    """The volume's log lock (an open fd holding a flock), or None if another
    process holds it and not `blocking`. The lock file may be removed by the
    holder before it lets go: a lock taken on a removed file is taken again."""
    os.makedirs(log_dir(store_path), mode=0o700, exist_ok=True)
    path = lock_path(store_path, vid)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def remove(store_path: str, vid: int, lock_fd: int) -> None:
    """Delete the volume's log files and lock (the caller holds the lock and
    has made everything they held durable in the store)."""
    for path in file_paths(store_path, vid) + [lock_path(store_path, vid)]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    os.close(lock_fd)


def read_records(store_path: str, vid: int, after: int) -> list[Record]:
    """Records numbered after `after`, in order, up to the first gap."""
    found: list[Record] = []
    for path in file_paths(store_path, vid):
        try:
            with open(path, "rb") as f:
                found += [r for r in decode_all(f.read()) if r.lsn > after]
        except FileNotFoundError:
            pass
    found.sort(key=lambda r: r.lsn)
    out = []
    for rec in found:
        if rec.lsn != after + len(out) + 1:
            break
        out.append(rec)
    return out


# -- the store's side ---------------------------------------------------------------

def _key(vid: int) -> bytes:
    return b"intent" + schema.u64(vid)


def applied(txn: Txn, vid: int) -> int:
    raw = txn.get("meta", _key(vid))
    return schema.read_u64(raw) if raw else 0


def set_applied(txn: Txn, vid: int, lsn: int) -> None:
    if lsn > applied(txn, vid):
        txn.put("meta", _key(vid), schema.u64(lsn))


def apply(txn: Txn, inodes, records: list[Record]) -> None:
    """Apply records in order (each in full) and move `applied` past them. A
    file gone since (or a number that is no longer a file) is skipped: a
    later change that the store holds removed it."""
    from ..errors import FusevolError
    import stat

    bs = inodes.block_size
    for rec in records:
        try:
            node = inodes.get(txn, rec.ino)
        except FusevolError as e:
            if e.errno != errno.ENOENT:
                raise
            continue
        if node.nlink == 0 or not stat.S_ISREG(node.mode):
            continue
        inodes.setattr(txn, rec.ino, size=rec.size, mtime_ns=rec.mtime_ns, ctime_ns=rec.ctime_ns)
        touched: dict[int, bytearray] = {}
        for off, data in rec.ranges:
            end = min(off + len(data), rec.size)
            pos = off
            while pos < end:
                index = pos // bs
                stop = min(end, (index + 1) * bs)
                block = touched.get(index)
                if block is None:
                    block = touched[index] = bytearray(inodes.read_block(txn, rec.ino, index) or b"")
                lo, hi = pos - index * bs, stop - index * bs
                if len(block) < hi:
                    block.extend(bytes(hi - len(block)))
                block[lo:hi] = data[pos - off:stop - off]
                pos = stop
        if touched:
            inodes.write_blocks(txn, rec.ino, sorted((i, bytes(b)) for i, b in touched.items()),
                                rec.size, mtime_ns=rec.mtime_ns, ctime_ns=rec.ctime_ns)
    if records:
        set_applied(txn, inodes.vid, records[-1].lsn)


def replay(txn: Txn, store_path: str, inodes) -> int:
    """Apply what the volume's log holds past `applied` (the caller holds the
    log's lock); the last record number the store now covers."""
    done = applied(txn, inodes.vid)
    records = read_records(store_path, inodes.vid, done)
    if records:
        log.info("volume %d: applying %d records of its intent log", inodes.vid, len(records))
        apply(txn, inodes, records)
        done = records[-1].lsn
    return done


def replay_unserved(store) -> None:
    """Apply the log of every volume no worker holds (a worker killed), then
    delete it: called when a process opens the store, before it reads."""
    try:
        names = os.listdir(log_dir(store.path))
    except FileNotFoundError:
        return
    except OSError as e:  # (not the store's owner: it cannot read the store either)
        log.warning("cannot list the intent logs of %s: %s", store.path, e)
        return
    vids = sorted({int(n.split(".")[0]) for n in names if n.split(".")[0].isdigit()})
    for vid in vids:
        if not any(os.path.exists(p) for p in file_paths(store.path, vid)):
            continue
        try:
            fd = lock(store.path, vid, blocking=False)
        except OSError as e:
            log.warning("cannot take the intent log of volume %d: %s", vid, e)
            continue
        if fd is None:
            continue  # its worker serves it (and applies it)
        try:
            _replay_one(store, vid)
        except Exception as e:
            os.close(fd)
            log.error("cannot apply the intent log of volume %d: %s", vid, e)
            continue
        remove(store.path, vid, fd)


def _replay_one(store, vid: int) -> None:
    from . import volumes
    from .inodes import Inodes

    with store.write() as txn:  # durable: the log goes once this returns
        for volume in volumes.list_all(txn, removed=True):
            if volume.vid == vid:
                inodes = Inodes(vid, store.block_size, volume.compression)
                replay(txn, store.path, inodes)
                return
