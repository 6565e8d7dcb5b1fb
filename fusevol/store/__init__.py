"""The store: one LMDB environment per host holding every volume.

Layering: schema (keys, records) <- env (the environment, transactions) <-
chunks (content-addressed data) <- inodes, volumes (filesystem metadata and
volume records). Only this package imports lmdb.
"""

from .env import DEFAULT_STORE, Store, Txn, resolve_path
from .inodes import Inodes
from .schema import BLOCK_SIZE, ROOT_INO, Inode

__all__ = ["DEFAULT_STORE", "Store", "Txn", "resolve_path", "Inodes", "Inode", "BLOCK_SIZE", "ROOT_INO"]
