"""gc fills packs to the end of their last page.

LMDB gives a pack whole pages, so what a pack leaves empty before its last
page's end is lost (packs.py). A writer fills packs as its blobs come, one
transaction at a time: a pack of large chunks that could not take the next
one, the last pack of each commit, and gc's own rewrites (recompress.py, 8
packs to a transaction) end where they end. On Python's standard library
(bench/evolve.py) that was 166 KB in 138 packs, 1% of the chunks' bytes.

gc knows every blob of a run of packs at once, so it lays them out again:
in the order they were stored (a folder's objects stay together, see
trees.py on counts by place), a pack closed when the next blob does not fit
and the rest of it filled with the largest blobs of the run that still fit.
The new packs take the numbers of the packs they replace (so they stay below
recompress.py's watermark: what it compressed again is not compressed again),
and more only when the run needs more. A run is BATCH sparse packs (room of
at least MIN_ROOM before their last page's end) and the last, partly full pack
of the run before it; each transaction writes one run, so the file grows by
a run at most (LMDB reuses a commit's freed pages two commits later).

The packs a call went through that still end short of their last page
(a run's packs are filled only from that run's entries) are then laid out
once more, together, BATCH to a transaction: on bench/evolve.py the page
ends of chunk packs went from 51 to 26 KB.

Only packs below recompress.py's watermark are gone through (their chunks are
in their final form), once: meta `dense_to` is the first pack not gone
through yet (the last partly full pack of a run is gone through again with
the next run). A pack with an entry that cannot be told live or dead is left
as it is (verify names it), as packs.rewrite does.
"""

import bisect

from ..errors import StoreDamaged
from ..progress import NoProgress
from . import chunks, packs, schema, trees
from .env import Store, Txn

MIN_ROOM = 256
BATCH = 32
LEVEL = 9  # as gc compresses chunks (recompress.py)
# The content of a compressed pack of tree objects: a read of one object
# decompresses all of it once per transaction. On bench/evolve.py's objects
# (level 9): 128 KiB packs took 176 KB of pages and 65 us to decompress
# each, 64 KiB 192 KB and 32 us, 32 KiB 213 KB and 18 us (uncompressed: 443 KB).
OBJECTS_MAX = 64 * 1024
WATERMARK = b"dense_to"
RECOMPRESSED = b"recompressed_to"  # recompress.py's watermark


def densify(store: Store, progress: NoProgress | None = None, batch: int | None = None,
            between=None) -> dict:
    """Lay out again the packs gone through by recompress.py since the last
    run that are sparse or hold tree objects; what it did. `batch`: sparse
    packs to a transaction (BATCH); `between()` is called after each
    transaction (the idle upkeep pauses there, or stops by raising: the next
    run goes over what this one laid out quickly, as dense already)."""
    progress = progress or NoProgress()
    batch = batch or BATCH
    report = {"packs_rewritten": 0, "packs_written": 0, "packs_compressed": 0, "pages_freed": 0}
    with store.read() as txn:
        number, end = _meta(txn, WATERMARK), _meta(txn, RECOMPRESSED)
    progress.start("filling packs", max(0, end - number))
    carry: list[int] = []  # the last packs of the previous run, partly full
    laid: list[int] = []  # plain packs this call went through that end short (kept or written)
    while number < end:
        with store.write(durable=False) as txn:
            run, after = _sources(txn, number, end, batch)
            run = [n for n in carry if n not in run and _is_source(txn.get("packs", schema.u64(n)))] + run
            carry = _lay_out(txn, run, report, laid) if run else []
        progress.advance(after - number)
        number = after
        if between is not None:
            between()
    # Once more over the packs this call went through that still end short
    # of their last page (a run's packs are filled only with entries of that
    # run: a run of large chunks leaves 1-4 KB a pack): together they fill
    # each other (on bench/evolve.py 29 such packs gave 6 pages back). Only
    # those of this call, below its watermark, so no pack is read again by
    # a later call.
    sparse = sorted(n for n in set(laid) if n < end)
    for k in range(0, len(sparse) if len(sparse) > 1 else 0, batch):
        with store.write(durable=False) as txn:
            run = [n for n in sparse[k:k + batch] if _is_sparse(txn.get("packs", schema.u64(n)))]
            if len(run) > 1:
                _lay_out(txn, run, report, None, last_fresh=False)
        if between is not None:
            between()
    with store.write() as txn:
        if end > _meta(txn, WATERMARK):
            txn.put("meta", WATERMARK, schema.u64(end))
    return report


def _meta(txn: Txn, key: bytes) -> int:
    raw = txn.get("meta", key)
    return schema.read_u64(raw) if raw else 0


def _holds_objects(value) -> bool:
    pos, size = 0, len(value)
    while pos + packs.HEAD.size <= size:
        kind, length = packs.HEAD.unpack_from(value, pos)
        if kind == packs.OBJECT:
            return True
        pos += packs.HEAD.size + length
    return False


def _is_source(value) -> bool:
    """Whether a pack as stored is one to lay out again: sparse, or holding
    tree objects not compressed yet, or a compressed one less than half full."""
    if value is None:
        return False
    if packs.is_compressed(value):
        return packs.content_size(value) < OBJECTS_MAX // 2
    return packs.room(len(value)) >= MIN_ROOM or _holds_objects(value)


def _is_sparse(value) -> bool:
    """Whether a pack as stored is a plain one whose last page has room."""
    return value is not None and not packs.is_compressed(value) and packs.room(len(value)) >= MIN_ROOM


def _sources(txn: Txn, start: int, end: int, most: int) -> tuple[list[int], int]:
    """Up to `most` packs to lay out again from start on, below end; and where
    the next look begins."""
    out = []
    cur = txn.cursor("packs")
    if not cur.set_range(schema.u64(start)):
        return out, end
    for key, value in cur.iternext():
        number = schema.read_u64(key)
        if number >= end:
            return out, end
        if len(out) == most:
            return out, number
        if _is_source(value):
            out.append(number)
    return out, end


def _live(txn: Txn, number: int):
    """(owner, kind, id, stored form) of the live entries of a pack, in their
    order; None when one cannot be told live or dead."""
    owners = {packs.CHUNK: chunks, packs.OBJECT: trees}
    pack = packs.content(txn, number)
    if pack is None:
        return None
    pack = bytes(pack)
    out = []
    try:
        for kind, offset, length in packs.entries(pack):
            owner = owners.get(kind)
            blob = pack[offset: offset + length]
            bid = owner.identify(blob) if owner is not None else None
            if bid is None:
                return None
            if owner.location(txn, bid) == packs.Location(number, offset, length):
                out.append((owner, kind, bid, blob))
    except StoreDamaged:
        return None
    return out


def plan(sizes: list[int]) -> list[list[int]]:
    """Entries (each `sizes[i]` bytes with its head) laid out in packs of
    at most PACK_MAX bytes: in their order, each pack closed when the next
    does not fit, after taking the largest later entries that still do."""
    left = sorted((size, i) for i, size in enumerate(sizes))  # not yet placed
    placed = [False] * len(sizes)
    out: list[list[int]] = []
    current: list[int] = []
    used = 0

    def place(i: int) -> None:
        nonlocal used
        placed[i] = True
        del left[bisect.bisect_left(left, (sizes[i], i))]
        current.append(i)
        used += sizes[i]

    for i, size in enumerate(sizes):
        if placed[i]:
            continue
        if current and used + size > packs.PACK_MAX:
            while True:  # the rest of the pack: the largest that fit
                at = bisect.bisect_right(left, (packs.PACK_MAX - used, len(sizes))) - 1
                if at < 0:
                    break
                place(left[at][1])
            out.append(current)
            current, used = [], 0
        place(i)
    if current:
        out.append(current)
    return out


def _by_inode(objects: list) -> list:
    """Tree objects in the order of the inodes they are (stable): the
    versions of a file or folder side by side; a piece of a folder stays
    after the object stored before it (its folder's, or a sibling piece)."""
    keyed, ino = [], 0
    for k, entry in enumerate(objects):
        data = entry[4]
        if data[:1] not in (trees.LEAF, trees.INDEX):
            ino = int.from_bytes(data[1:9], "big")
        keyed.append((ino, k))
    return [objects[k] for _, k in sorted(keyed)]


def _object_packs(objects: list) -> list[tuple[bytes, list]]:
    """Tree objects, (.., stored form, encoding) each, in packs of up to
    OBJECTS_MAX bytes of content, in order: (value to store, [(entry, offset,
    length)]). A pack is compressed whole when that pays, its objects kept
    raw inside it (alone, each compressed little); else it is plain, each
    object in the form it had."""
    out, run, size = [], [], 0
    for entry in objects + [None]:
        need = packs.HEAD.size + 1 + len(entry[4]) if entry is not None else 0
        if run and (entry is None or size + need > OBJECTS_MAX):
            out.append(_object_pack(run))
            run, size = [], 0
        if entry is not None:
            run.append(entry)
            size += need
    return out


def _layout(items) -> tuple[bytes, list]:
    buf, where = bytearray(), []
    for entry, kind, blob in items:
        buf += packs.HEAD.pack(kind, len(blob))
        where.append((entry, len(buf), len(blob)))
        buf += blob
    return bytes(buf), where


def _object_pack(run: list) -> tuple[bytes, list]:
    raw = bytes((chunks.RAW,))
    content, where = _layout((e, packs.OBJECT, raw + e[4]) for e in run)
    value = packs.compressed(content, LEVEL)
    if value is not None:
        return value, where
    return _layout((e, packs.OBJECT, e[3]) for e in run)


def _pages(size: int) -> int:
    return -(-(packs.PAGE_HEAD + size) // packs.PAGE)


def _lay_out(txn: Txn, run: list[int], report: dict, laid: list[int] | None = None,
             last_fresh: bool = True) -> list[int]:
    """Write the live entries of the packs of `run` again: chunks as plan()
    lays them out, tree objects by inode in packs of their own (compressed);
    under the same numbers but for the last pack of each kind, partly full,
    which gets a new number (the next run, or the next gc, takes it in;
    with last_fresh False it keeps an old one too while there is one).
    Returns the numbers of those last packs ([]: nothing written); the
    numbers of plain packs left or written with room in their last page
    go to `laid`."""
    entries, sources, before = [], [], 0
    for number in run:
        live = _live(txn, number)
        if live is None:
            continue  # left where verify finds it
        sources.append(number)
        before += _pages(len(txn.get("packs", schema.u64(number))))
        entries.extend(live)
    if not sources:
        return []
    head = packs.HEAD.size
    blobs = [e for e in entries if e[0] is chunks]
    layout = plan([head + len(blob) for _, _, _, blob in blobs])
    chunk_packs = [_layout((blobs[i], packs.CHUNK, blobs[i][3]) for i in group) for group in layout]
    objects = [e + (chunks.decode(e[3]),) for e in entries if e[0] is trees]
    object_packs = _object_packs(_by_inode(objects))
    after = sum(_pages(len(value)) for value, _ in chunk_packs + object_packs)
    if after >= before:
        if laid is not None:  # as they are, for the pass over them together (densify)
            laid.extend(n for n in sources if _is_sparse(txn.get("packs", schema.u64(n))))
        return []  # as dense already
    # Counts kept by place (trees.py) leave their places first: a new pack
    # may take the number, and an offset, of an old one.
    counts = {e[2]: trees.lift_count(txn, e[2]) for e in objects}
    for number in sources:
        packs.drop(txn, number)
    reuse = sorted(sources, reverse=True)
    lasts = {id(p) for p in chunk_packs[-1:] + object_packs[-1:]} if last_fresh else set()
    carry = []
    for pack in chunk_packs + object_packs:
        value, where = pack
        fresh = id(pack) in lasts or not reuse
        number = packs.new_number(txn) if fresh else reuse.pop()
        if fresh:
            carry.append(number)
        for entry, offset, length in where:
            loc = packs.Location(number, offset, length)
            if entry[0] is trees:
                trees.place(txn, entry[2], loc, counts[entry[2]])
            else:
                chunks.relocate(txn, entry[2], loc)
        packs.put(txn, number, value)
        if laid is not None and not fresh and _is_sparse(value):
            laid.append(number)
        report["packs_compressed"] += packs.is_compressed(value)
    report["packs_rewritten"] += len(sources)
    report["packs_written"] += len(chunk_packs) + len(object_packs)
    report["pages_freed"] += before - after
    return carry
