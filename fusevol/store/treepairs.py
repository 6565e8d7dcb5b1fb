"""Two trees walked side by side, by path: the one walk diff and send share.

A pair is what two trees hold at one path: an object of the old tree, of the
new one, or of both. Where both ids are equal nothing below can differ, and
the walk does not go there; a folder's entries are paired by name with
pieces.changed_entries, which skips every pair of equal pieces of large
folders whole. Only pairs that differ are visited, so a walk costs the
difference, not the trees.

Each pair is yielded on the way down (ENTER), where the caller decides whether
to go below it, and, if it did, again on the way up (LEAVE), after everything
below it; a pair of equal ids is yielded once (SAME, no objects read): `diff` reads pairs on the way down; `send` writes objects on the way
up, children before their parents, as a stream must carry them.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import pieces, trees
from .env import Txn

ENTER, LEAVE, SAME = "enter", "leave", "same"


@dataclass
class Pair:
    path: bytes
    old_id: bytes | None
    new_id: bytes | None
    old: trees.TreeObject | None
    new: trees.TreeObject | None
    # Pieces of the new folder opened to pair its entries (leaves before index pieces).
    opened: list[bytes] = field(default_factory=list)

    @property
    def same_kind(self) -> bool:
        return self.old is not None and self.new is not None and self.old.kind == self.new.kind


def _join(path: bytes, name: bytes) -> bytes:
    return path + b"/" + name if path else name


def walk(txn_of: Callable[[], Txn], get: Callable[[bytes], trees.TreeObject],
         old_root: bytes | None, new_root: bytes | None, *, old_alone: bool = True,
         go_below: Callable[[Pair], bool] = lambda pair: True) -> Iterator[tuple[str, Pair]]:
    """Yield (ENTER or LEAVE, Pair) for each path where the trees differ, in
    name order. `get` reads an object, `txn_of()` the transaction pieces are
    read in (a sender renews its reader between objects). `old_alone`: also
    walk below what only the old tree holds (diff names what was removed;
    send has nothing to send there). `go_below(pair)` is asked on the way down."""
    stack: list = [(b"", old_root, new_root)]
    while stack:
        item = stack.pop()
        if isinstance(item, Pair):
            yield LEAVE, item
            continue
        path, old_id, new_id = item
        if old_id == new_id:  # equal subtrees: nothing below can differ
            yield SAME, Pair(path, old_id, new_id, None, None)
            continue
        if new_id is None and not old_alone:
            continue
        pair = Pair(path, old_id, new_id, get(old_id) if old_id is not None else None,
                    get(new_id) if new_id is not None else None)
        yield ENTER, pair
        if not go_below(pair):
            continue
        stack.append(pair)
        old_dir = pair.old is not None and pair.old.kind == trees.DIR
        new_dir = pair.new is not None and pair.new.kind == trees.DIR
        below = []
        if new_dir:  # paired with the old folder's entries if both are folders
            below = [(name, old if old_dir else None, new) for name, old, new in
                     pieces.changed_entries(txn_of(), pair.old if old_dir else None, pair.new,
                                            pair.opened)]
        if old_dir and not new_dir and old_alone:  # a folder replaced: all of it went
            below = [(name, old, None) for name, _, old in
                     pieces.changed_entries(txn_of(), None, pair.old)]
        if old_dir and new_dir and not old_alone:
            below = [entry for entry in below if entry[2] is not None]
        stack.extend((_join(path, name), old, new) for name, old, new in reversed(below))
