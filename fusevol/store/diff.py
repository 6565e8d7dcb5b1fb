"""What changed between two trees, walking only where their object ids differ."""

import stat
from dataclasses import dataclass

import blake3

from . import pieces, trees
from .env import Txn


@dataclass
class Change:
    status: str          # A added, D deleted, M modified, R renamed (same content)
    path: bytes
    new_path: bytes | None = None

    def line(self) -> str:
        path = self.path.decode(errors="surrogateescape")
        if self.new_path is None:
            return f"{self.status}\t{path}"
        return f"{self.status}\t{path}\t{self.new_path.decode(errors='surrogateescape')}"


def _join(path: bytes, name: bytes) -> bytes:
    return path + b"/" + name if path else name


def _content_key(obj: trees.TreeObject) -> bytes:
    h = blake3.blake3(stat.S_IFMT(obj.inode.mode).to_bytes(4, "big") + obj.inode.size.to_bytes(8, "big"))
    h.update(obj.inode.target)
    for index, cid in obj.blocks:
        h.update(index.to_bytes(8, "big") + cid)
    return h.digest()


def _attrs_differ(a: trees.TreeObject, b: trees.TreeObject) -> bool:
    x, y = a.inode, b.inode
    return (x.mode, x.uid, x.gid, a.xattrs) != (y.mode, y.uid, y.gid, b.xattrs)


def diff(txn: Txn, old_root: bytes, new_root: bytes) -> list[Change]:
    added: list[tuple[bytes, trees.TreeObject]] = []
    removed: list[tuple[bytes, trees.TreeObject]] = []
    changes: list[Change] = []

    def whole(path: bytes, oid: bytes, into: list) -> None:
        for sub, _, obj in trees.walk(txn, oid, path):
            into.append((sub, obj))

    stack = [(b"", old_root, new_root)]
    while stack:
        path, a_id, b_id = stack.pop()
        if a_id == b_id:
            continue  # equal subtrees: nothing below can differ
        a, b = trees.get(txn, a_id), trees.get(txn, b_id)
        a_dir, b_dir = a.kind == trees.DIR, b.kind == trees.DIR
        if a_dir and b_dir:
            if path and _attrs_differ(a, b):
                changes.append(Change("M", path + b"/"))
            # Only the entries that differ: equal pieces of big folders are skipped whole.
            for name, old, new in reversed(list(pieces.changed_entries(txn, a, b))):
                sub = _join(path, name)
                if new is None:
                    whole(sub, old, removed)
                elif old is None:
                    whole(sub, new, added)
                else:
                    stack.append((sub, old, new))
        elif a_dir != b_dir or stat.S_IFMT(a.inode.mode) != stat.S_IFMT(b.inode.mode):
            whole(path, a_id, removed)  # a kind change: the old one went, the new one came
            whole(path, b_id, added)
        elif _content_key(a) != _content_key(b) or _attrs_differ(a, b):
            changes.append(Change("M", path))
        # Equal content and attributes, other times or ino only: not a change worth naming.

    # A removed file whose content reappears under a new name was renamed.
    by_content: dict[bytes, list[bytes]] = {}
    for path, obj in removed:
        if obj.kind == trees.FILE:
            by_content.setdefault(_content_key(obj), []).append(path)
    renamed_from = set()
    for path, obj in added:
        key = _content_key(obj) if obj.kind == trees.FILE else None
        sources = by_content.get(key) if key else None
        if sources:
            old_path = sources.pop(0)
            renamed_from.add(old_path)
            changes.append(Change("R", old_path, path))
        else:
            changes.append(Change("A", path + (b"/" if obj.kind == trees.DIR else b"")))
    for path, obj in removed:
        if path not in renamed_from:
            changes.append(Change("D", path + (b"/" if obj.kind == trees.DIR else b"")))
    return sorted(changes, key=lambda c: (c.path, c.status))
