"""The store: one LMDB environment per host holding every volume.

Layering: schema (keys, records) <- env (the environment, transactions) <-
chunks (content-addressed data) <- inoderows, namespace, blockmap, xattrs,
treerows (a volume's filesystem metadata, one module per job, gathered by
inodes.Inodes), volumes (volume records). Only this package imports lmdb.

The names below load their module on first use: a command that needs only
volume records (`fusevol volume ls`) does not pay for the filesystem's.
"""

import importlib

_HOMES = {
    "DEFAULT_STORE": "names", "Store": "env", "Txn": "env", "resolve_path": "names",
    "Inodes": "inodes",
    "Inode": "schema", "BLOCK_SIZE": "schema", "ROOT_INO": "schema", "INODE_CODEC": "schema",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
