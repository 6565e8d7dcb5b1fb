"""Fixtures of the fast tests: a store on a temporary LMDB environment, a volume
in it, and a TxnRunner serving that volume (no FUSE, no root, no Docker).

Every test under tests/unit/ is marked `unit`: `pytest -m unit` or
`pytest tests/unit` runs them alone, in seconds."""

import pathlib
import stat

import pytest

from fusevol.fs.runner import TxnRunner
from fusevol.fs.space import SpaceBudget
from fusevol.store import Inodes, Store, volumes

HERE = pathlib.Path(__file__).parent
FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
BS = 128 * 1024


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.unit)
            # Stricter than the suite (see pyproject.toml): these tests leave nothing behind.
            item.add_marker(pytest.mark.filterwarnings("error::ResourceWarning"))


@pytest.fixture
def store(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    yield store
    Store._instances.pop(store.path, None)
    store.close()


@pytest.fixture
def inodes(store) -> Inodes:
    """The Inodes of a fresh volume `vol` (zstd compression)."""
    with store.write() as txn:
        record = volumes.create(txn, "vol")
    return Inodes(record.vid, store.block_size, record.compression)


@pytest.fixture
async def runner(store):
    """A TxnRunner on the store, stopped (everything committed) after the test."""
    runner = TxnRunner(store)
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture
def space(store, runner) -> SpaceBudget:
    return SpaceBudget(store, None, 0, pending=lambda: runner.unstored_bytes)
