"""Damage a store's files the way a failing disk would: a byte flipped in place.

LMDB keeps no checksums, so a flipped byte inside a chunk's payload is found
only by re-hashing the chunk. The payload is located by content: the test
writes a block of random bytes (stored raw, as it does not compress) and
searches the file for it, with no worker or command holding the store.
"""

import os

NEEDLE_LEN = 64


def flip_byte(db_file: str, block: bytes, at: int = 1000) -> int:
    """Flip one byte of every stored copy of `block` (at offset `at` into it);
    return how many copies were found."""
    needle = block[:NEEDLE_LEN]
    with open(db_file, "r+b") as f:
        content = f.read()
        found = 0
        start = content.find(needle)
        while start != -1:
            if content[start:start + len(block)] == block:
                f.seek(start + at)
                f.write(bytes((content[start + at] ^ 0xFF,)))
                found += 1
            start = content.find(needle, start + 1)
        f.flush()
        os.fsync(f.fileno())
    return found


def data_file(store: str) -> str:
    return os.path.join(store, "db", "data.mdb")


def store_files(store: str) -> list[str]:
    """The LMDB file and the data files (a worker's large chunks)."""
    folder = os.path.join(store, "data")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [data_file(store)] + [os.path.join(folder, n) for n in names]


def rewrite_stored(txn, owner, bid: bytes, fn) -> None:
    """Change a chunk's or an object's stored form in place, wherever the store
    keeps it (owner: fusevol.store.chunks or .trees): fn(bytearray) edits it,
    keeping its length. For damage a test makes through a write transaction."""
    from fusevol.store import chunks, packs
    loc = owner.location(txn, bid)
    if loc is None:  # a value of its own
        table = "chunks" if owner is chunks else "objects"
        payload = bytearray(txn.get(table, bid))
        fn(payload)
        txn.put(table, bid, bytes(payload))
        return
    key = loc.pack.to_bytes(8, "big")
    pack = bytearray(packs.unpacked(txn.get("packs", key)))  # (a compressed one is written back plain)
    payload = pack[loc.offset: loc.offset + loc.length]
    fn(payload)
    assert len(payload) == loc.length
    pack[loc.offset: loc.offset + loc.length] = payload
    txn.put("packs", key, bytes(pack))
