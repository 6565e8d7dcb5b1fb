"""What changed between two trees, walking only where their object ids differ
(treepairs.py: the walk send shares)."""

import stat
from dataclasses import dataclass

import blake3

from . import treepairs, trees
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
    for event, pair in treepairs.walk(lambda: txn, lambda oid: trees.get(txn, oid),
                                      old_root, new_root):
        if event != treepairs.ENTER:
            continue
        a, b, path = pair.old, pair.new, pair.path
        if a is None:
            added.append((path, b))
        elif b is None:
            removed.append((path, a))
        elif a.kind == trees.DIR and b.kind == trees.DIR:
            if path and _attrs_differ(a, b):
                changes.append(Change("M", path + b"/"))
        elif a.kind == trees.DIR or b.kind == trees.DIR \
                or stat.S_IFMT(a.inode.mode) != stat.S_IFMT(b.inode.mode):
            removed.append((path, a))  # a kind change: the old one went, the new one came
            added.append((path, b))
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
