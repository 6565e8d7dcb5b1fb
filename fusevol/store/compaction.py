"""The store file written again, without free pages and with full B-tree pages.

LMDB never shortens its file: the pages a commit copies are free for reuse
only two commits later, so the file keeps the live pages plus what the last
commits changed, and B-trees of random keys (chunk ids, object ids) keep
their leaves about a third empty. A copy made table by table, each row
appended in key order (LMDB's MDB_APPEND splits a full leaf at its end, so
every leaf but the last is full), holds the same rows in the fewest pages;
it then takes the old file's place by a rename.

Only while no other process has the store open: one that had it mapped
would go on reading and writing the old file. Every process that opens an
LMDB environment holds a shared lock on the first byte of its `lock.mdb`
(taken exclusively by the first opener, which then initialises the lock
file); a write lock on that byte taken here (an open file description lock,
which conflicts with those POSIX locks in any process) succeeds only when
no process has it open, and makes any that opens it meanwhile wait until
the copy is in place.
"""

import errno
import fcntl
import os
import shutil
import struct

import lmdb

from ..errors import FusevolError
from . import restforms, schema

# struct flock: l_type, l_whence, l_start, l_len, l_pid (and padding) on Linux.
_FLOCK = struct.Struct("@hhqqi4x")
COPY_DIR = "db.compacting"
# The file is written again only when this share of it is free pages: a copy
# reads and writes the whole file.
MIN_SHARE = 1 / 32
SPACE_RESERVE = 64 << 20


class Held(Exception):
    """Another process has the store open."""


def _lock_exclusive(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0))
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise Held() from None
        raise


def rewrite_file(store_path: str, min_share: float = MIN_SHARE, rest: bool = True) -> dict:
    """Write the store's file again (see the module's doc) when no process has
    the store open, this one included, and pages free for reuse are at least
    `min_share` of it; what it took before and after, or `rewritten: False`
    and why not. First, with `rest`, every volume unchanged since it was last
    written as objects keeps its root row alone (resttree.py): what that frees
    counts for the copy."""
    db_dir = os.path.join(store_path, "db")
    data = os.path.join(db_dir, "data.mdb")
    before = os.stat(data).st_size
    report = {"rewritten": False, "file_bytes_before": before, "file_bytes_after": before}
    copy_dir = os.path.join(store_path, COPY_DIR)
    lock_fd = os.open(os.path.join(db_dir, "lock.mdb"), os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            _lock_exclusive(lock_fd)
        except Held:
            report["reason"] = "the store is open elsewhere (a mounted volume, fusevol serve)"
            return report
        shutil.rmtree(copy_dir, ignore_errors=True)  # a copy a crash left: never in place
        if rest:
            try:
                report["volumes_at_rest"] = _rest_volumes(store_path)
            except FusevolError as e:  # (damage: its transaction undone; the copy goes on)
                report["volumes_at_rest"] = []
                report["rest_error"] = str(e)
        src = lmdb.open(db_dir, readonly=True, lock=False, max_dbs=len(schema.TABLES) + 4)
        try:
            free = free_bytes(src)
            report["free_bytes"] = free
            st = os.statvfs(store_path)
            if free < before * min_share:
                report["reason"] = "too few free pages to be worth a copy"
                return report
            if st.f_bavail * st.f_frsize < before + SPACE_RESERVE:
                report["reason"] = "not enough free disk space for a copy"
                return report
            os.makedirs(copy_dir, mode=0o700)
            try:
                rows = _copy(src, copy_dir)
                os.rename(os.path.join(copy_dir, "data.mdb"), data)
            finally:
                shutil.rmtree(copy_dir, ignore_errors=True)
        finally:
            src.close()
        dir_fd = os.open(db_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        report.update(rewritten=True, rows=rows, file_bytes_after=os.stat(data).st_size)
        return report
    finally:
        os.close(lock_fd)  # lets go of the lock: openers that waited go on


def _rest_volumes(store_path: str) -> list[str]:
    """resttree.rest_volumes, on the store opened without LMDB's lock file
    (this process holds the store alone: its lock, above)."""
    from .env import Store
    from .resttree import rest_volumes

    store = Store(store_path, lock=False)
    try:
        return rest_volumes(store)
    finally:
        store.close()


def free_bytes(env: lmdb.Environment) -> int:
    """Bytes of the file in no table's pages (LMDB's free pages, and its
    list of them)."""
    psize = env.stat()["psize"]
    used = 2  # the meta pages
    with env.begin() as txn:
        names = [bytes(k) for k in txn.cursor().iternext(values=False)]
        stats = [env.stat()] + [txn.stat(env.open_db(n, txn=txn, create=False)) for n in names]
    for st in stats:
        used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
    return max(0, env.info()["last_pgno"] + 1 - used) * psize


def _copy(src: lmdb.Environment, dst_dir: str) -> int:
    """Every table of src into a new environment in dst_dir, rows appended in
    key order; the new file synced. The rows copied."""
    names = list(schema.TABLES)
    size = max(src.info()["map_size"], (src.info()["last_pgno"] + 1) * src.stat()["psize"] * 2)
    # No lock file: no other process knows this environment.
    dst = lmdb.open(dst_dir, map_size=size, max_dbs=len(names) + 4, lock=False,
                    sync=False, metasync=False, mode=0o600)
    try:
        rows = 0
        with src.begin() as rtxn:
            present = {bytes(k) for k in rtxn.cursor().iternext(values=False)}
            unknown = present - {n.encode() for n in names}
            if unknown:  # rows a newer fusevol wrote: a copy would lose them
                raise FusevolError(f"the store has tables this fusevol does not know: {sorted(unknown)}")
            # One transaction: each commit would leave the pages it copied free.
            with dst.begin(write=True) as wtxn:
                for name in names:
                    if name.encode() not in present:
                        continue
                    sdb = src.open_db(name.encode(), txn=rtxn, create=False)
                    ddb = dst.open_db(name.encode(), txn=wtxn)
                    consumed, added = wtxn.cursor(ddb).putmulti(  # count rows and inodes short (format 5)
                        restforms.short(name, rtxn.cursor(sdb).iternext()), append=True)
                    if consumed != added:
                        raise FusevolError(f"copying table {name}: {consumed - added} rows not taken")
                    rows += added
        dst.sync(True)
    finally:
        dst.close()
    return rows
