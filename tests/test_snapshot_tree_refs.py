"""A change after a snapshot releases each live row's tree object once: the
snapshot keeps every object it names (found by the crash rounds: a rename
inside a folder deleted the snapshot's object of that folder)."""

import stat

import pytest

from fusevol.store import Inodes, Store, check, snapshots, trees, volumes

FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


def build(txn) -> tuple[Inodes, dict[str, int]]:
    """root/a/{x, h, h2 (hardlink of h), e/ (empty), b/{y}}"""
    record = volumes.create(txn, "vol")
    inodes = Inodes(record.vid, txn.store.block_size)
    ino = {}
    ino["a"], _ = inodes.create(txn, 1, b"a", DIR, 0, 0)
    ino["b"], _ = inodes.create(txn, ino["a"], b"b", DIR, 0, 0)
    ino["e"], _ = inodes.create(txn, ino["a"], b"e", DIR, 0, 0)
    for parent, name in ((ino["a"], b"x"), (ino["a"], b"h"), (ino["b"], b"y")):
        ino[name.decode()], _ = inodes.create(txn, parent, name, FILE, 0, 0)
        inodes.write_blocks(txn, ino[name.decode()], [(0, name * 100)], 100)
    inodes.link(txn, ino["h"], ino["a"], b"h2")
    return inodes, ino


CHANGES = {
    "rename in one folder": lambda t, n, i: n.rename(t, i["a"], b"x", i["a"], b"x2"),
    "rename into a subfolder": lambda t, n, i: n.rename(t, i["a"], b"x", i["b"], b"x"),
    "rename to the parent folder": lambda t, n, i: n.rename(t, i["b"], b"y", i["a"], b"y"),
    "rename over a file": lambda t, n, i: n.rename(t, i["a"], b"x", i["a"], b"h"),
    "rename a folder": lambda t, n, i: n.rename(t, i["a"], b"b", i["a"], b"b2"),
    "exchange": lambda t, n, i: n.rename(t, i["a"], b"x", i["b"], b"y", exchange=True),
    "hardlink in one folder": lambda t, n, i: n.link(t, i["x"], i["a"], b"x-link"),
    "unlink one of two names": lambda t, n, i: n.unlink(t, i["a"], b"h2"),
    "rmdir": lambda t, n, i: n.rmdir(t, i["a"], b"e"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_change_after_snapshot_keeps_the_snapshot_whole(tmp_path, change):
    store = Store.open(str(tmp_path / "store"))
    try:
        with store.write() as txn:
            inodes, ino = build(txn)
        with store.write() as txn:
            root = bytes.fromhex(snapshots.create(txn, "vol", "before").root)
        with store.write() as txn:
            CHANGES[change](txn, inodes, ino)
        with store.write() as txn:
            snapshots.create(txn, "vol", "after")
        with store.read() as txn:
            report = check.verify(txn)
            assert report["ok"], report["problems"]
            names = sorted(path for path, _, _ in trees.walk(txn, root))
        assert names == [b"", b"a", b"a/b", b"a/b/y", b"a/e", b"a/h", b"a/h2", b"a/x"]
    finally:
        Store._instances.pop(store.path, None)
        store.close()
