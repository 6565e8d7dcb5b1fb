"""A large directory's entries as a tree of pieces whose boundaries the names choose.

The sorted entries are cut after every entry whose name hashes to a boundary
(one in TARGET on average); each run is a LEAF piece. The pieces of a level
are listed, by their last name, in the INDEX pieces of the level above, cut
the same way (with another hash per level), until one piece is left: the top.
A boundary depends on one name only, never on what came before it, so the
same entries give the same pieces whatever order they were made in (equal
directories keep equal ids), and one added, removed or changed entry rewrites
the piece that holds it (and its neighbour when a boundary goes) and one piece
per level above: O(1) pieces plus O(log n) index pieces.

`update` applies changes to a tree without reading more of it than the
pieces it rewrites and the index pieces on their way; `changed_entries`
pairs two trees and skips every pair of equal pieces, so diff and send cost
what changed.
"""

import blake3

from ..records import Record
from . import trees
from .env import Txn

# Entries (or index items) per piece, on average. One change rewrites pieces
# of twice that (the piece holding an entry is the larger kind) on each level,
# and each new piece takes a reference on each item: 8 writes 95 count rows
# for one change among 100,000 entries, 16 writes 155, 32 writes 202.
TARGET = 8
# A directory of up to this many entries stays one object: the bytes it always
# had (stores written before pieces keep their ids), and cheaper than pieces.
FLAT_MAX = 256

Items = list[tuple[bytes, bytes]]


def is_boundary(level: int, key: bytes) -> bool:
    # A hash every process and version agrees on (Python's own is salted).
    digest = blake3.blake3(bytes((level,)) + key).digest(length=4)
    return int.from_bytes(digest, "big") % TARGET == 0


def chunk(level: int, items: Items) -> list[Items]:
    """Cut a level's items after each boundary (the last run may end without one)."""
    out, start = [], 0
    head, hasher, number = bytes((level,)), blake3.blake3, int.from_bytes  # is_boundary, inline: a call less per name
    for i, (key, _) in enumerate(items):
        if number(hasher(head + key).digest(length=4), "big") % TARGET == 0:
            out.append(items[start: i + 1])
            start = i + 1
    if start < len(items):
        out.append(items[start:])
    return out


class Built(Record):
    """A tree of pieces, with the pieces made for it that may not be stored
    yet (`new`: id -> (encoding, children))."""

    _FIELDS = ("top", "height", "count", "new")

    def __init__(self, top: bytes, height: int, count: int,
                 new: dict[bytes, tuple[bytes, list[bytes]]] | None = None):
        self.top = top
        self.height = height
        self.count = count
        self.new = {} if new is None else new

    def store(self, txn: Txn, refs: "trees.RefBatch | None" = None) -> None:
        """Store the new pieces the top reaches, held by their parents; the
        directory object that is stored next holds the top."""
        batch = refs if refs is not None else trees.RefBatch(txn)
        reach, stack = set(), [self.top]
        while stack:
            oid = stack.pop()
            if oid in self.new and oid not in reach:
                reach.add(oid)
                data, children = self.new[oid]
                if data[:1] == trees.INDEX:
                    stack.extend(children)
        for oid, (data, children) in self.new.items():  # children first
            if oid in reach:
                batch.add(data, children, [], held=0, oid=oid)
        if refs is None:
            batch.flush()


def _make(level: int, items: Items, new: dict) -> tuple[bytes, bytes]:
    """(last key, id) of a piece made of items."""
    data = trees.encode_piece(level, items)
    oid = trees.object_id(data)
    new[oid] = (data, [cid for _, cid in items])
    return items[-1][0], oid


def _rise(level: int, items: Items, new: dict) -> tuple[bytes, int]:
    """Levels above a level whose pieces are `items`, up to a single top."""
    while len(items) > 1:
        level += 1
        items = [_make(level, run, new) for run in chunk(level, items)]
    return items[0][1], level


def build(entries: Items) -> Built:
    """The tree of pieces of sorted, non-empty entries."""
    new: dict = {}
    tops = [_make(0, run, new) for run in chunk(0, entries)]
    top, height = _rise(0, tops, new)
    return Built(top, height, len(entries), new)


class _Level:
    """The pieces of one level of a stored tree, found from the top down."""

    def __init__(self, load, top: bytes, height: int, level: int):
        self.load, self.top, self.height, self.level = load, top, height, level
        self.path: list[list] = []  # [items of an index piece, position], top first

    def seek(self, key: bytes) -> tuple[bytes, bytes | None]:
        """(id, last key) of the piece whose range holds key: the first whose
        last key is >= key, or the last piece. The top has no key (None)."""
        self.path, oid, last = [], self.top, None
        for _ in range(self.height - self.level):
            items = self.load(oid).entries
            pos = next((i for i, (k, _) in enumerate(items) if k >= key), len(items) - 1)
            self.path.append([items, pos])
            last, oid = items[pos]
        return oid, last

    def next(self) -> tuple[bytes, bytes] | None:
        """The piece after the last one found, or None at the end of the level."""
        depth = len(self.path) - 1
        while depth >= 0 and self.path[depth][1] + 1 >= len(self.path[depth][0]):
            depth -= 1
        if depth < 0:
            return None
        self.path[depth][1] += 1
        del self.path[depth + 1:]
        last, oid = self.path[depth][0][self.path[depth][1]]
        while len(self.path) < self.height - self.level:
            items = self.load(oid).entries
            self.path.append([items, 0])
            last, oid = items[0]
        return oid, last


def _merge(items: Items, changes: list[tuple[bytes, bytes | None]]) -> tuple[Items, int]:
    """Sorted items with sorted changes applied (None removes); and the change in count."""
    out, i, delta = [], 0, 0
    for key, value in changes:
        while i < len(items) and items[i][0] < key:
            out.append(items[i])
            i += 1
        present = i < len(items) and items[i][0] == key
        if present:
            i += 1
        if value is not None:
            out.append((key, value))
        delta += (value is not None) - present
    out.extend(items[i:])
    return out, delta


def _apply_level(level: _Level, changes: list[tuple[bytes, bytes | None]], new: dict) -> tuple[list, int, Items]:
    """Rewrite the pieces of one level that changes fall in: a run of pieces
    from the one a change falls in until a rewritten piece ends on a boundary.
    Returns the changes for the level above (last key -> new piece id, None
    for a piece gone; pieces remade equal left out), the change in the
    number of items, and the pieces made, as (last key, id)."""
    above: dict[bytes, bytes | None] = {}
    was: dict[bytes, bytes] = {}
    made: Items = []
    delta, i = 0, 0
    while i < len(changes):
        oid, last = level.seek(changes[i][0])
        run: Items = []
        while True:
            items = level.load(oid).entries
            if last is not None:
                was[last] = oid
                above.setdefault(last, None)  # the old piece goes, unless remade
            nxt = level.next() if last is not None else None
            end = i
            while end < len(changes) and (nxt is None or changes[end][0] <= last):
                end += 1
            merged, d = _merge(items, changes[i:end])
            run.extend(merged)
            delta += d
            i = end
            if nxt is None or (run and is_boundary(level.level, run[-1][0])):
                break
            oid, last = nxt  # the run ends inside the next piece: that one joins it
        for key, piece in (_make(level.level, r, new) for r in chunk(level.level, run)):
            made.append((key, piece))
            above[key] = piece
    up = [(k, v) for k, v in sorted(above.items()) if was.get(k) != v]
    return up, delta, made


def update(txn: Txn, top: bytes, height: int, count: int,
           changes: list[tuple[bytes, bytes | None]]) -> Built:
    """The tree of pieces of a stored tree with sorted changes applied
    (name -> object id, or None to remove): what build() would make of the
    changed entries, reading only the pieces that change and those above."""
    cache: dict[bytes, trees.TreeObject] = {}

    def load(oid: bytes) -> trees.TreeObject:
        obj = cache.get(oid)
        if obj is None:
            obj = cache[oid] = trees.get(txn, oid)
        return obj

    new: dict = {}
    made: Items = []
    for lv in range(height + 1):
        if not changes:
            return Built(top, height, count, new)  # nothing changed from this level up
        changes, delta, made = _apply_level(_Level(load, top, height, lv), changes, new)
        if lv == 0:
            count += delta
    if not made:
        return Built(b"", 0, 0, new)  # no entries left
    # The top level was rewritten: more than one piece needs levels above it;
    # a top with a single item is no top (the level below has one piece).
    new_top, new_height = _rise(height, made, new)
    while new_height > 0:
        made_now = new.get(new_top)
        children = made_now[1] if made_now is not None else [cid for _, cid in load(new_top).entries]
        if len(children) != 1:
            break
        new_top, new_height = children[0], new_height - 1
    return Built(new_top, new_height, count, new)


def changed_entries(txn: Txn, old: trees.TreeObject | None, new: trees.TreeObject,
                    new_pieces: list | None = None):
    """Yield (name, old id or None, new id or None) for each entry that differs
    between two directories (either form; old None: every entry of new),
    in name order, skipping every pair of equal pieces. The pieces of new
    that were opened go to new_pieces, children before parents."""
    def start(obj):
        if obj is None:
            return []
        if obj.pieces is None:
            return [(-1, name, cid) for name, cid in reversed(obj.entries)]
        return [(obj.level, None, obj.pieces)]

    a, b = start(old), start(new)
    opened: list[bytes] = []

    def open_front(side: list, record: bool) -> None:
        _, _, oid = side.pop()
        piece = trees.get(txn, oid)
        if record:
            opened.append(oid)
        if piece.kind == trees.LEAF:
            side.extend((-1, name, cid) for name, cid in reversed(piece.entries))
        else:
            side.extend((piece.level - 1, None, cid) for _, cid in reversed(piece.entries))

    while a or b:
        x = a[-1] if a else None
        y = b[-1] if b else None
        if x and y and x[0] >= 0 and x[0] == y[0] and x[2] == y[2]:
            a.pop()
            b.pop()  # equal pieces: nothing in them differs
        elif x and x[0] >= 0 and (y is None or x[0] >= y[0]):
            open_front(a, False)
        elif y and y[0] >= 0:
            open_front(b, True)
        elif y is None or (x is not None and x[1] < y[1]):
            a.pop()
            yield x[1], x[2], None
        elif x is None or y[1] < x[1]:
            b.pop()
            yield y[1], None, y[2]
        else:
            a.pop()
            b.pop()
            if x[2] != y[2]:
                yield x[1], x[2], y[2]
    if new_pieces is not None:
        new_pieces.extend(reversed(opened))
