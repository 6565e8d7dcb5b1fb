"""Small stored blobs (chunks, tree objects) several to an LMDB value.

LMDB gives a value larger than about 2 KB whole 4 KiB overflow pages of its
own, so a compressed chunk of 5 KB took 8 KB and one of 9 KB took 12 KB; small
values sit in B-tree leaves that random keys leave a third empty. A pack is a
value of up to PACK_MAX bytes holding entries back to back: only its last page
is partly empty. Pack numbers grow (meta `next_pack`), so new packs go to the
end of the table and its pages stay full.

An entry is a kind byte (b"C" chunk, b"O" tree object), the u32 length of the
blob as stored, and the blob (codec byte + data). A blob's count row (refs,
orefs) says where it is: pack number, offset of the blob in the pack, length.
Reference counts stay per blob.

Writing: a write transaction collects what it adds (PackWriter) and appends
it to the table's last pack if that is still small (JOIN_MAX: its committed
bytes are read once), starting new packs past PACK_MAX; each pack is written once,
at commit, or as soon as it is full when the root transaction adds (a receive
or gc then holds one pack in memory, not all it adds). Entries added in a
nested transaction go with it when it aborts (env.Store.nested).

Dead space: `packdead` counts the bytes of a pack's entries that no row
points to any more. A pack all dead is deleted in the transaction that drops
its last entry; one more than half dead is rewritten then (its live entries
appended to the open pack, their rows pointed there), so a pack never holds
more dead bytes than live ones for long. gc rewrites every pack with any dead
space (`compact`). An entry is told live by hashing it and asking its row
whether it points there: the pack needs no list of ids.

Compressed packs (store format 4): gc lays tree objects out again in packs
of their own, grouped by inode (densify.py), and keeps such a pack as
Z + a zstd frame of its content when that saves enough. A tree object is
mostly ids, which do not compress alone, but the versions of one folder or
file that snapshots keep share most of their bytes. Everything here reads a
pack's content (`content`, `view`), decompressed once per transaction; rows
say where a blob is in the content. Writers never append to one (they start
a pack of their own), and chunks never go into one.
"""

import os
import struct
import threading
from typing import NamedTuple

import zstandard

from ..errors import StoreDamaged
from . import schema
from .env import Txn

PACK_MAX = 128 * 1024 - 16  # with LMDB's page header, 32 pages exactly
# Blobs larger than this stay values of their own (in chunks / objects): their
# last page is a small part of them, and a read of one copies nothing else.
ENTRY_MAX = 64 * 1024
# A transaction appends to the last pack only while that holds less than this:
# it rewrites (copies and writes again) what the pack held, and a commit per
# fsync of one small write would otherwise write up to PACK_MAX for a few KB
# (measured: 8 KiB writes each fsynced, 400 against 500 a second). Packs fill
# to PACK_MAX within a transaction (a batch of a worker, a snapshot, a receive).
JOIN_MAX = 32 * 1024
# LMDB gives a pack (a value larger than a page) whole pages of its own, the
# first beginning with a page header: a pack that stops short of its last
# page's end leaves the rest of that page empty (~2 KB a pack, 2% of a store
# of small files). So a pack that could not take the next blob stays open for
# smaller ones that fit before its last page's end (FILLING of them at most,
# the oldest written when more are).
PAGE = 4096  # LMDB's page (the store's: env.stat()["psize"])
PAGE_HEAD = 16
FILLING = 2
HEAD = struct.Struct(">cI")
# gc packs larger chunks too, up to what a pack holds (chunks.pack_alone,
# chunks.replace_stored): a chunk of 64-128 KiB alone left 0.2-4 KB of its
# last page empty (19 KB in the evolve bench's 9), and laid out with smaller
# ones (densify.py) its pack fills to the end of its last page. Writers keep
# ENTRY_MAX: a commit would otherwise write a full pack for one such chunk.
GC_ENTRY_MAX = PACK_MAX - HEAD.size
CHUNK, OBJECT = b"C", b"O"
DEAD_SHARE = 0.5  # a pack more dead than this is rewritten when it gets there
ZPACK = b"Z"  # the first byte of a compressed pack (a plain one begins with an entry's kind)
_Z = ZPACK[0]
_local = threading.local()


def is_compressed(value) -> bool:
    """Whether a pack as stored is a compressed one."""
    return len(value) > 0 and value[0] == _Z


def unpacked(value):
    """A pack's content from its value as stored (itself unless compressed)."""
    if not is_compressed(value):
        return value
    d = getattr(_local, "zd", None)
    if d is None:
        d = _local.zd = zstandard.ZstdDecompressor()
    try:
        return d.decompress(memoryview(value)[1:])  # the frame carries its content size
    except zstandard.ZstdError:
        raise StoreDamaged("a compressed pack is damaged") from None


def compressed(content: bytes, level: int) -> bytes | None:
    """A pack's content as a compressed pack, or None when that saves too
    little (as chunks.MIN_SAVING)."""
    z = ZPACK + zstandard.ZstdCompressor(level=level).compress(content)
    return z if len(z) <= len(content) * 7 / 8 else None


def content_size(value) -> int:
    """The length of a pack's content, from its value as stored."""
    if not is_compressed(value):
        return len(value)
    size = zstandard.frame_content_size(memoryview(value)[1:])
    return size if size >= 0 else len(unpacked(value))


class Location(NamedTuple):
    """Where a packed blob is: its pack, its offset there, its stored length."""
    pack: int
    offset: int
    length: int


class PackWriter:
    """What one write transaction does to packs (kept on its root Txn): the
    packs it adds to, and the packs whose entries it let go of."""

    def __init__(self):
        self.open: dict[int, bytearray] = {}   # pack number -> its whole content
        self.committed: dict[int, int] = {}    # bytes each had before this transaction
        self.current: int | None = None        # the pack the next blob goes to
        self.released: set[int] = set()        # packs with entries that died
        self.filling: list[int] = []           # full packs still taking blobs that fit their last page
        self.fill_room = 0                     # the most one of them can take

    def _start(self, txn: Txn) -> None:
        """Append to the table's last pack while it is small, else start one."""
        last = txn.cursor("packs")
        if last.last() and len(last.value()) < JOIN_MAX and not is_compressed(last.value()):
            number = schema.read_u64(last.key())
            if number not in self.open:
                self.open[number] = bytearray(last.value())
                self.committed[number] = len(self.open[number])
            self.current = number
        else:
            self.current = self._new_number(txn)

    def _new_number(self, txn: Txn) -> int:
        number = new_number(txn)
        self.open[number] = bytearray()
        self.committed[number] = 0
        return number

    def add(self, txn: Txn, kind: bytes, payload) -> Location:
        if self.current is None:
            self._start(txn)
        need = HEAD.size + len(payload)
        number = None
        if need <= self.fill_room:
            rooms = [_room(len(self.open[n])) for n in self.filling]
            number = next(n for n, room in zip(self.filling, rooms) if need <= room)
            self.fill_room = max(room - need if n == number else room for n, room in zip(self.filling, rooms))
        if number is None:
            number = self.current
            buf = self.open[number]
            if len(buf) + need > PACK_MAX and len(buf):
                self.filling.append(number)
                if len(self.filling) > FILLING:
                    oldest = self.filling.pop(0)
                    if txn.parent is None:  # nothing to roll back into: write it now
                        self._write(txn, oldest)
                self._fill_room()
                number = self.current = self._new_number(txn)
        buf = self.open[number]
        buf += HEAD.pack(kind, len(payload))
        offset = len(buf)
        buf += payload
        return Location(number, offset, len(payload))

    def add_many(self, txn: Txn, kind: bytes, payloads) -> list[Location]:
        """add() of each blob in turn; those that go at the current pack's
        end (most) appended here without a call each."""
        out = []
        head = HEAD.pack
        for payload in payloads:
            need = HEAD.size + len(payload)
            number = self.current
            if number is not None and need > self.fill_room:
                buf = self.open[number]
                if len(buf) + need <= PACK_MAX:
                    buf += head(kind, len(payload))
                    out.append(Location(number, len(buf), len(payload)))
                    buf += payload
                    continue
            out.append(self.add(txn, kind, payload))
        return out

    def get(self, number: int):
        return self.open.get(number)

    def leave(self, txn: Txn, number: int) -> None:
        """Add no more to pack `number` (it is being rewritten)."""
        if self.current is None:
            self._start(txn)
        if self.current == number:
            self.current = self._new_number(txn)
        if number in self.filling:
            self.filling.remove(number)
            self._fill_room()

    def _fill_room(self) -> None:
        self.fill_room = max((_room(len(self.open[n])) for n in self.filling), default=0)

    def _write(self, txn: Txn, number: int) -> None:
        cache = txn.root().pack_cache
        if cache is not None:
            cache.pop(number, None)  # a copy read before this transaction added to it
        buf = self.open.pop(number)
        if len(buf) > self.committed.pop(number):
            txn.put("packs", schema.u64(number), bytes(buf))

    def finish(self, txn: Txn) -> None:
        """At commit: reclaim the packs that entries died in (now, so that an
        entry dying later in the transaction is not moved first), then write
        every pack this transaction added to."""
        for number in sorted(self.released):
            _reclaim(txn, number)
        self.current = None
        self.filling = []
        self.fill_room = 0
        for number in list(self.open):
            self._write(txn, number)

    # Nested transactions (see env.Store.nested); `released` may keep packs
    # of an aborted child: finish looks at their dead counts again.
    def mark(self):
        return self.current, {n: len(buf) for n, buf in self.open.items()}, list(self.filling)

    def rollback(self, mark) -> None:
        current, lengths, filling = mark
        for number in set(self.open) - set(lengths):
            del self.open[number]
            del self.committed[number]
        for number, length in lengths.items():
            if number in self.open:
                del self.open[number][length:]
        self.current = current
        self.filling = [n for n in filling if n in self.open]
        self._fill_room()


def new_number(txn: Txn) -> int:
    """A pack number no pack had: numbers grow, so new packs go to the end."""
    raw = txn.get("meta", b"next_pack")
    number = schema.read_u64(raw) if raw else 1
    txn.put("meta", b"next_pack", schema.u64(number + 1))
    return number


def _room(size: int) -> int:
    """Bytes a pack of `size` bytes can still take before its last page's end."""
    pages = -(-(PAGE_HEAD + size) // PAGE)
    return min(pages * PAGE - PAGE_HEAD, PACK_MAX) - size


def _writer(txn: Txn) -> PackWriter:
    root = txn.root()
    if root.packs is None:
        root.packs = PackWriter()
    return root.packs


def add(txn: Txn, kind: bytes, payload) -> Location:
    """Pack a blob (its stored form); where it is."""
    return _writer(txn).add(txn, kind, payload)


def add_many(txn: Txn, kind: bytes, payloads) -> list[Location]:
    """Pack blobs (their stored forms), in order; where each is."""
    return _writer(txn).add_many(txn, kind, payloads)


CACHED_PACKS = 4


def _pack(txn: Txn, number: int):
    """A pack's content: this transaction's own, or a view into the map, or
    (in a transaction without buffers, where LMDB copies a value whole, and
    for a compressed pack) a copy kept for the next reads: blobs written
    together are read together."""
    root = txn.root()
    if root.packs is not None:
        buf = root.packs.get(number)
        if buf is not None:
            return buf
    cache = root.pack_cache
    if cache is not None:
        value = cache.get(number)
        if value is not None:
            return value
    value = txn.get("packs", schema.u64(number))
    if value is None:
        return None
    if is_compressed(value):
        value = unpacked(value)
    elif root.buffers:
        return value
    if cache is None:
        cache = root.pack_cache = {}
    if len(cache) >= CACHED_PACKS:
        del cache[next(iter(cache))]
    cache[number] = value
    return value


def content(txn: Txn, number: int):
    """A pack's whole content (as _pack gives it), or None when it is gone."""
    return _pack(txn, number)


def view(txn: Txn, loc: Location):
    """The stored blob at loc, or None when its pack is gone: a view into the
    map or a cached copy (valid while the transaction lasts), or a copy of
    what this transaction added (its buffer still grows)."""
    pack = _pack(txn, loc.pack)
    if pack is None or loc.offset + loc.length > len(pack):
        return None
    if isinstance(pack, bytearray):
        return bytes(pack[loc.offset: loc.offset + loc.length])
    return memoryview(pack)[loc.offset: loc.offset + loc.length]


def release(txn: Txn, loc: Location) -> None:
    """The entry at loc is dead (its row is gone or points elsewhere); its
    pack is looked at when the transaction commits (PackWriter.finish)."""
    key = schema.u64(loc.pack)
    raw = txn.get("packdead", key)
    dead = (schema.read_u64(raw) if raw else 0) + HEAD.size + loc.length
    txn.put("packdead", key, schema.u64(dead))
    _writer(txn).released.add(loc.pack)


def _reclaim(txn: Txn, number: int) -> None:
    """Delete a pack all dead, rewrite one mostly dead."""
    raw = txn.get("packdead", schema.u64(number))
    pack = _pack(txn, number)
    if raw is None or pack is None:
        return
    dead, size = schema.read_u64(raw), len(pack)
    if dead >= size:
        _drop(txn, number)
    elif dead > size * DEAD_SHARE and not _writer_has(txn, number):
        rewrite(txn, number)


def _writer_has(txn: Txn, number: int) -> bool:
    root = txn.root()
    return root.packs is not None and root.packs.get(number) is not None


def _drop(txn: Txn, number: int) -> None:
    """Delete a pack (and its dead count), whatever it holds."""
    root = txn.root()
    if root.pack_cache is not None:
        root.pack_cache.pop(number, None)
    if root.packs is not None and root.packs.get(number) is not None:
        root.packs.open.pop(number)  # an open pack all dead: not written
        root.packs.committed.pop(number)
        if root.packs.current == number:
            root.packs.current = None
        if number in root.packs.filling:
            root.packs.filling.remove(number)
            root.packs._fill_room()
    txn.delete("packs", schema.u64(number))
    txn.delete("packdead", schema.u64(number))


drop = _drop
room = _room


def put(txn: Txn, number: int, value: bytes) -> None:
    """Write pack `number` as a whole, plain or compressed (densify.py lays
    packs out again under the numbers of those it replaces)."""
    root = txn.root()
    if root.pack_cache is not None:
        root.pack_cache.pop(number, None)
    txn.put("packs", schema.u64(number), value)


def entries(pack) -> list[tuple[bytes, int, int]]:
    """(kind, offset, length) of every entry of a pack."""
    out, pos = [], 0
    while pos < len(pack):
        if pos + HEAD.size > len(pack):
            raise StoreDamaged("a pack's entry list is damaged")
        kind, length = HEAD.unpack_from(pack, pos)
        pos += HEAD.size
        if pos + length > len(pack):
            raise StoreDamaged("a pack's entry list is damaged")
        out.append((kind, pos, length))
        pos += length
    return out


def rewrite(txn: Txn, number: int) -> bool:
    """Move a pack's live entries to the open pack and delete it; False (and
    nothing moved) when an entry cannot be told live or dead: it may be a
    damaged live blob, which verify names and which stays where it is."""
    from . import chunks, trees  # they use this module to keep their blobs
    owners = {CHUNK: chunks, OBJECT: trees}
    pack = _pack(txn, number)
    if pack is None or _writer_has(txn, number):
        return False
    pack = bytes(pack)
    try:
        found = entries(pack)
        live = []
        for kind, offset, length in found:
            owner = owners.get(kind)
            if owner is None:
                return False
            loc = Location(number, offset, length)
            bid = owner.identify(pack[offset: offset + length])
            if bid is None:
                return False
            if owner.location(txn, bid) == loc:
                live.append((owner, kind, bid, loc))
    except StoreDamaged:
        return False
    _writer(txn).leave(txn, number)
    for owner, kind, bid, loc in live:
        owner.relocate(txn, bid, add(txn, kind, pack[loc.offset: loc.offset + loc.length]))
    _drop(txn, number)
    return True


def compact(txn: Txn) -> dict:
    """gc's part: count each pack's dead bytes again from the rows that point
    into it, delete the packs nothing points to, rewrite the others that hold
    dead bytes, and pack what an older store kept as values of their own."""
    from . import chunks, trees
    report = {"packs_deleted": 0, "packs_rewritten": 0, "dead_bytes_freed": 0, "blobs_packed": 0}
    live = live_bytes(txn)
    for number in numbers(txn):
        if _writer_has(txn, number):
            continue  # the open pack (written to by this gc already)
        key = schema.u64(number)
        size = len(_pack(txn, number))
        dead = size - live.get(number, 0)
        if dead <= 0:
            txn.delete("packdead", key)
        elif number not in live:
            _drop(txn, number)
            report["packs_deleted"] += 1
            report["dead_bytes_freed"] += size
        elif rewrite(txn, number):
            report["packs_rewritten"] += 1
            report["dead_bytes_freed"] += dead
        else:
            txn.put("packdead", key, schema.u64(dead))
        root = txn.root()
        if root.pack_cache is not None:
            root.pack_cache.pop(number, None)  # read once: keep the memory of one pack
    for owner in (chunks, trees):
        for bid in list(owner.alone(txn)):
            report["blobs_packed"] += owner.pack_alone(txn, bid)
    return report


def live_bytes(txn: Txn) -> dict[int, int]:
    """pack number -> the bytes of the entries rows point to."""
    from . import chunks, trees
    live: dict[int, int] = {}
    for owner in (chunks, trees):
        for _, loc in owner.locations(txn):
            live[loc.pack] = live.get(loc.pack, 0) + HEAD.size + loc.length
    return live


def miscounted(txn: Txn) -> list[tuple[int, int, int]]:
    """(pack, dead bytes counted, dead bytes found) of every pack whose count
    is wrong, or that nothing points to (for verify; gc repairs them)."""
    live, counted = live_bytes(txn), dead_bytes(txn)
    root = txn.root()
    pending = set(root.packs.open) if root.packs is not None else set()
    out = []
    for number in sorted(set(numbers(txn)) | pending):
        found = len(_pack(txn, number)) - live.get(number, 0)
        if counted.get(number, 0) != found or number not in live:
            out.append((number, counted.get(number, 0), found))
    return out


def dead_bytes(txn: Txn) -> dict[int, int]:
    """pack number -> the bytes of its entries no row points to, as counted."""
    return {schema.read_u64(k): schema.read_u64(v) for k, v in txn.scan("packdead", b"")}


def numbers(txn: Txn) -> list[int]:
    """Every pack's number (its content not read)."""
    return [schema.read_u64(k) for k in txn.cursor("packs").iternext(keys=True, values=False)]


def stats(txn: Txn) -> dict:
    """Packs, their bytes and their dead bytes (for df; in a transaction with
    buffers, no pack is read)."""
    count = size = 0
    for _, value in txn.scan("packs", b""):
        count += 1
        size += len(value)
    dead = sum(dead_bytes(txn).values())
    return {"packs": count, "pack_bytes": size, "dead_bytes": dead}


BLOB_TABLES = ("packs", "chunks", "objects")
COUNT_TABLES = ("refs", "orefs", "ocounts", "packdead")


def file_use(txn: Txn) -> dict:
    """Where the store file's bytes go, for df (a transaction with buffers):
    the stored chunks and tree objects, dead entries in packs, the rest of
    the pages that hold blobs (entry heads, the unused end of each pack's
    last page), count rows, pages LMDB holds free for reuse; what is left
    is the volumes' rows (inodes, entries, block maps, ...) and the store's.
    Free pages punched out of the file are `hole_bytes`, not `free_bytes`."""
    from . import chunks, trees
    env = txn.store.env
    psize = env.stat()["psize"]

    def pages(tables) -> int:
        total = 0
        for name in tables:
            st = txn.txn.stat(txn.store.dbs[name])
            total += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return total * psize

    file_bytes = (env.info()["last_pgno"] + 1) * psize
    try:
        disk_bytes = os.stat(os.path.join(txn.store.path, "db", "data.mdb")).st_blocks * 512
    except FileNotFoundError:
        disk_bytes = file_bytes
    # Free pages punched out of the file (freepages.py) take no disk: what
    # the file's size has beyond its blocks on the disk is not paid for.
    holes = max(0, file_bytes - disk_bytes)
    chunk_bytes = chunks.totals(txn)["stored_bytes"]
    object_bytes = trees.stored_total(txn)
    dead = stats(txn)["dead_bytes"]
    # A compressed pack's entries take less than their lengths: its stored
    # bytes are shared out by what its content holds (tree objects, dead ones).
    squeezed = {schema.read_u64(k): (len(v), content_size(v))
                for k, v in txn.scan("packs", b"") if is_compressed(v)}
    if squeezed:
        lengths: dict[int, int] = {}
        for _, loc in trees.locations(txn):
            if loc.pack in squeezed:
                lengths[loc.pack] = lengths.get(loc.pack, 0) + loc.length
        counted = dead_bytes(txn)
        for number, (stored, size) in squeezed.items():
            held, gone = lengths.get(number, 0), counted.get(number, 0)
            object_bytes += stored * held // size - held
            dead += stored * gone // size - gone
    return {"file_bytes": file_bytes,
            "chunk_bytes": chunk_bytes,
            "object_bytes": object_bytes,
            "dead_bytes": dead,
            "slack_bytes": max(0, pages(BLOB_TABLES) - chunk_bytes - object_bytes - dead),
            "count_bytes": pages(COUNT_TABLES),
            "free_bytes": max(0, txn.free_pages_bytes() - holes),
            "hole_bytes": holes}


def read_in_order(txn, located):
    """(id, stored form) of each (id, location) in `located`, pack by pack so
    that each pack is read once; an entry whose pack is gone is left out."""
    by_pack: dict[int, list] = {}
    for key, loc in located:
        by_pack.setdefault(loc.pack, []).append((key, loc))
    for number in sorted(by_pack):
        for key, loc in by_pack.pop(number):
            payload = view(txn, loc)
            if payload is not None:
                yield key, payload
