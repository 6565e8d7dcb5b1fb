"""Volume records and driver options on a temporary store (no FUSE)."""

import pytest

from fusevol.errors import AlreadyExists, Busy, InvalidArgument, NotFound
from fusevol.store import Inodes, chunks, snapshots, volumes
from fusevol.store.schema import ROOT_INO

from .conftest import DIR, FILE


def test_create_get_list(store):
    with store.write() as txn:
        a = volumes.create(txn, "alpha", {"size": "10M", "compression": "none"})
        b = volumes.create(txn, "beta")
    assert (a.quota, a.compression, a.readonly) == (10 << 20, "none", False)
    assert a.vid != b.vid and a.created_at.endswith("Z")
    with store.read() as txn:
        assert volumes.get(txn, "alpha") == a
        assert [v.name for v in volumes.list_all(txn)] == ["alpha", "beta"]
        assert volumes.get(txn, "gamma", missing_ok=True) is None
        with pytest.raises(NotFound, match="no such volume: gamma"):
            volumes.get(txn, "gamma")
        st = volumes.stats(txn, b)
        assert (st.logical_bytes, st.inodes) == (0, 1)  # its root


def test_create_twice_is_refused(store):
    with store.write() as txn:
        volumes.create(txn, "v1")
        with pytest.raises(AlreadyExists):
            volumes.create(txn, "v1")


@pytest.mark.parametrize("name", ["", "a", "-x", "a b", "a/b", "é1", "x" * 256, None, 5])
def test_bad_names(store, name):
    with store.write() as txn, pytest.raises(InvalidArgument, match="invalid volume name"):
        volumes.create(txn, name)


@pytest.mark.parametrize("text, size", [("1", 1), ("4k", 4096), ("1M", 1 << 20), ("2GiB", 2 << 30),
                                        ("007T", 7 << 40), (" 3G ", 3 << 30)])
def test_sizes(text, size):
    assert volumes.parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "-1", "1.5G", "1P", "", "9" * 5000, "8E"])
def test_bad_sizes(text):
    with pytest.raises(InvalidArgument):
        volumes.parse_size(text)


@pytest.mark.parametrize("opts, words", [
    ({"colour": "red"}, "unknown option colour: allowed are"),
    ({"readonly": "maybe"}, "use true or false"),
    ({"compression": "lz4"}, "use zstd or none"),
    ({"xattr": "sa"}, "xattr='sa': use on or off"),
    ({"source": "data", "subpath": "x", "xattr": "off"}, "source's atime, suid, dev and xattr"),
    ({"subpath": "x"}, "needs source"),
    ({"source": "data"}, "needs subpath"),
    ({"source": "data", "subpath": "x", "size": "1G"}, "takes only subpath and readonly"),
    ({"source": "data", "subpath": "../x"}, "'..' is not allowed"),
    ({"source": "data", "subpath": "/etc"}, "an absolute path"),
    ({"source": "data", "subpath": "a\nb"}, "control characters"),
    ({"from-snapshot": "nosnap"}, "VOLUME@SNAPSHOT"),
    ({"size": 5}, "needs a string value"),
    ("readonly", "must be a map"),
])
def test_options_errors_say_what_is_wrong(opts, words):
    with pytest.raises(InvalidArgument, match=words.replace(".", r"\.").replace("(", r"\(")):
        volumes.parse_options(opts)


def test_xattr_is_on_unless_created_off_and_kept_in_the_record(store):
    with store.write() as txn:
        plain = volumes.create(txn, "plain")
        bare = volumes.create(txn, "bare", {"xattr": "off"})
        volumes.create(txn, "full", {"xattr": "ON"})
    with store.read() as txn:
        assert [volumes.get(txn, n).xattr for n in ("plain", "bare", "full")] == [True, False, True]
    # Written only when off: the records of other volumes keep their shape.
    assert "xattr" not in plain.to_dict() and bare.to_dict()["xattr"] is False


def test_subpaths_are_normalized():
    assert volumes.normalize_subpath("a//b/./c/") == "a/b/c"


def test_views_have_no_rows_and_hold_their_source(store):
    with store.write() as txn:
        volumes.create(txn, "data")
        view = volumes.create(txn, "site", {"source": "data", "subpath": "public", "readonly": "true"})
        assert view.vid is None and view.readonly is True
        assert volumes.views_of(txn, "data") == ["site"]
        with pytest.raises(InvalidArgument, match="itself a view"):
            volumes.create(txn, "sub", {"source": "site", "subpath": "x"})
        # A view may come before its source (compose creates volumes in any order).
        early = volumes.create(txn, "early", {"source": "later", "subpath": "x"})
        assert early.source == "later" and volumes.views_of(txn, "later") == ["early"]
        volumes.remove(txn, "early")
        # A source removed while it has views is only marked, and goes with its last view.
        assert volumes.remove(txn, "data") == []
        with pytest.raises(NotFound):
            volumes.get(txn, "data")
        assert volumes.remove(txn, "site") == ["site", "data"]
        assert volumes.list_all(txn) == []


def test_remove_refuses_mounted_volumes_and_volumes_with_snapshots(store):
    with store.write() as txn:
        record = volumes.create(txn, "v1")
        snapshots.create(txn, "v1", "s")
        with pytest.raises(Busy, match="1 snapshot"):
            volumes.remove(txn, "v1")
        snapshots.remove(txn, "v1", "s")
        record.mounts = {"id1": 1}
        volumes.put(txn, record)
        with pytest.raises(Busy, match="mounted"):
            volumes.remove(txn, "v1")


def test_remove_gives_back_every_row_and_chunk(store):
    with store.write() as txn:
        keep = volumes.create(txn, "keep")
        gone = volumes.create(txn, "gone")
        for record in (keep, gone):
            inodes = Inodes(record.vid, store.block_size)
            d, _ = inodes.create(txn, ROOT_INO, b"d", DIR, 0, 0)
            f, _ = inodes.create(txn, d, b"f", FILE, 0, 0)
            inodes.write_blocks(txn, f, [(0, record.name.encode() * 1000)], 4000)
        inodes.setxattr(txn, f, b"user.x", b"1")
    with store.write() as txn:
        volumes.remove(txn, "gone")
    with store.read() as txn:
        assert chunks.totals(txn)["chunks"] == 1
        prefix = gone.vid.to_bytes(8, "big")
        for table in ("inodes", "dirents", "parents", "blocks", "xattrs"):
            assert next(txn.scan(table, prefix), None) is None, table
        st = txn.vstats(gone.vid)
        assert (st.logical_bytes, st.inodes) == (0, 0)
        assert volumes.stats(txn, keep).inodes == 3
