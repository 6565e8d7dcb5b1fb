"""Pages LMDB holds free, given back to the disk while the store stays open.

LMDB never shortens its file: a page a commit no longer needs goes on its
free list and is written again by a later commit. While any process has the
store open (a mounted volume, `fusevol serve`) the file cannot be written
again (compaction.py), so what gc saves (pages of deleted data, chunks
compressed again) would stay in the file as free pages, paid for on the disk
until later writes take them. Here the free pages that the next write
transaction could take are punched out of the file (fallocate's
PUNCH_HOLE, the file's size kept): the disk gets their blocks back, a read of
one gives zeros, and a commit that takes one later writes it whole, which
allocates a block again (as any write into a hole; the store's space check
keeps room for it).

Which pages: LMDB's own rule for reusing them. A free-list record is keyed
by the transaction that freed its pages; those pages belong to the snapshots
before it, so they may be written again only once no reader can see such a
snapshot: the record's transaction is older than every reader's and than the
last commit (whose predecessor a crash of the system may bring back, as
commits do not sync their meta page). The list is read from the file under
LMDB's writer lock (a write transaction held, nothing written), so no commit
takes or frees a page while the holes are made.

LMDB's file layout (0.9: page header, meta page, B-tree nodes, free-list
records of page-number lists) is read here as its mdb.c writes it; a file
that does not read as expected is left as it is.
"""

import errno
import os
import re
import struct

from .env import Store, Unreadable, fallocate, oldest_reader  # noqa: F401 (callers name them here)

_PAGE_HEAD = struct.Struct("=QHHHH")   # pgno, pad, flags, lower, upper
_OVERFLOW_PAGES = struct.Struct("=I")  # in place of lower, upper
_NODE = struct.Struct("=HHHH")         # lo, hi, flags, key size
_DB = struct.Struct("=IHHQQQQQ")       # pad, flags, depth, branch, leaf, overflow, entries, root
_META_MAGIC = 0xBEEFC0DE
_META_VERSION = 1                      # LMDB 0.9's data format
_META_HEAD = struct.Struct("=II")      # magic, version
_META_DBS = 16 + 4 + 4 + 8 + 8          # page header, magic, version, address, map size
_META_TXNID = _META_DBS + 2 * _DB.size + 8
P_BRANCH, P_LEAF, P_OVERFLOW = 0x01, 0x02, 0x04
F_BIGDATA = 0x01
P_INVALID = (1 << 64) - 1
PAGE_HEAD = 16



class _File:
    def __init__(self, fd: int, psize: int):
        self.fd, self.psize = fd, psize

    def page(self, pgno: int, count: int = 1) -> bytes:
        data = os.pread(self.fd, self.psize * count, pgno * self.psize)
        if len(data) != self.psize * count:
            raise Unreadable(f"page {pgno} is past the file's end")
        return data


def _meta(f: _File) -> tuple[int, int, int]:
    """(free list's root page, the last page in use, the newest txn id) from
    the newer of the two meta pages."""
    best = None
    for pgno in (0, 1):
        page = f.page(pgno)
        magic, version = _META_HEAD.unpack_from(page, PAGE_HEAD)
        if magic != _META_MAGIC:
            raise Unreadable("no LMDB meta page")
        if version != _META_VERSION:  # another layout (LMDB 1.0 is version 2)
            raise Unreadable(f"LMDB's data format {version}, not {_META_VERSION}")
        free_db = _DB.unpack_from(page, _META_DBS)
        if free_db[0] != f.psize:  # the free list's md_pad holds the page size
            raise Unreadable(f"the meta page's page size {free_db[0]}, not {f.psize}")
        last_pg, txnid = struct.unpack_from("=QQ", page, _META_TXNID - 8)
        if best is None or txnid > best[2]:
            best = (free_db[7], last_pg, txnid)
    return best


def _records(f: _File, pgno: int, last_pg: int, depth: int = 0):
    """(txn id, page numbers) of every free-list record under page pgno."""
    if depth > 32 or not 2 <= pgno <= last_pg:
        raise Unreadable("a free-list page out of place")
    page = f.page(pgno)
    _, _, flags, lower, _ = _PAGE_HEAD.unpack_from(page)
    count = (lower - PAGE_HEAD) // 2
    if count < 0 or lower > len(page):
        raise Unreadable("a free-list page's header is damaged")
    ptrs = struct.unpack_from(f"={count}H", page, PAGE_HEAD)
    for ptr in ptrs:
        lo, hi, nflags, ksize = _NODE.unpack_from(page, ptr)
        if flags & P_BRANCH:
            yield from _records(f, lo | hi << 16 | nflags << 32, last_pg, depth + 1)
        elif flags & P_LEAF:
            size = lo | hi << 16
            if ksize != 8:
                raise Unreadable("a free-list key is not a txn id")
            txnid = struct.unpack_from("=Q", page, ptr + _NODE.size)[0]
            at = ptr + _NODE.size + ksize
            if nflags & F_BIGDATA:
                first = struct.unpack_from("=Q", page, at)[0]
                if not 2 <= first <= last_pg:
                    raise Unreadable("a free-list record's pages out of place")
                head = f.page(first)
                pages = _OVERFLOW_PAGES.unpack_from(head, 12)[0]
                data = f.page(first, pages)[PAGE_HEAD: PAGE_HEAD + size]
            else:
                data = page[at: at + size]
            if len(data) < 8:
                raise Unreadable("a free-list record is cut short")
            n = struct.unpack_from("=Q", data)[0]
            if len(data) < 8 * (n + 1):
                raise Unreadable("a free-list record is cut short")
            yield txnid, struct.unpack_from(f"={n}Q", data, 8)
        else:
            raise Unreadable("a free-list page is neither branch nor leaf")


def reusable(store: Store, f: _File) -> list[int]:
    """The page numbers the next write transaction could take from the free
    list (call with LMDB's writer lock held)."""
    root, last_pg, txnid = _meta(f)
    if root == P_INVALID:
        return []
    oldest = txnid  # LMDB's mdb_find_oldest: the writer's own id less one
    reader = oldest_reader(store)
    if reader is not None:
        oldest = min(oldest, reader)
    out = []
    for freed_by, pages in _records(f, root, last_pg):
        if freed_by < oldest:
            if any(not 2 <= p <= last_pg for p in pages):
                raise Unreadable("a free page past the file's end")
            out.extend(pages)
    return out


def _runs(pages: list[int]):
    """(first, count) of each run of consecutive page numbers."""
    first = prev = None
    for p in sorted(set(pages)):
        if prev is not None and p == prev + 1:
            prev = p
            continue
        if first is not None:
            yield first, prev - first + 1
        first = prev = p
    if first is not None:
        yield first, prev - first + 1


def punch(store: Store) -> dict:
    """Give the disk back the blocks of the free pages LMDB would hand out
    next; what the file took on the disk before and after."""
    data = os.path.join(store.path, "db", "data.mdb")
    report = {"punched": False, "free_pages": 0,
              "disk_bytes_before": os.stat(data).st_blocks * 512}
    report["disk_bytes_after"] = report["disk_bytes_before"]
    psize = store.env.stat()["psize"]
    # One commit first: the pages the last commit freed (gc's own last batch)
    # become ones the next writer may take, and so ones to punch.
    store.touch()
    fd = os.open(data, os.O_RDWR | os.O_CLOEXEC)
    try:
        with store.writer_lock():  # the free list holds still
            f = _File(fd, psize)
            try:
                pages = reusable(store, f)
            except (Unreadable, struct.error) as e:
                report["reason"] = f"the store file's free list was not read: {e}"
                return report
            try:
                for first, count in _runs(pages):
                    fallocate(fd, first * psize, count * psize)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                report["reason"] = "the store's file system does not punch holes"
                return report
    finally:
        os.close(fd)
    report.update(punched=True, free_pages=len(pages),
                  disk_bytes_after=os.stat(data).st_blocks * 512)
    return report
