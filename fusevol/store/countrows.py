"""Count rows (refs, orefs, ocounts) in a shorter form at rest (store format 5).

Writers keep count rows in fixed-width forms (chunks.py, trees.py): a count,
lengths, a pack number and an offset, as big-endian u64 and u32 fields, 8 to
28 bytes, though a count is mostly 1, a length and an offset below 2^17 and
a pack number below 2^16. When gc and the idle upkeep write these tables
again in key order (compaction.py, repack.py), each row is written short:
a tag byte (the length of its fixed form) and each field as an unsigned
LEB128 varint, 2 to 13 bytes. On the evolve bench's counts (5,400 rows):
303 KB of pages -> 250 KB.

Every reader of these tables reads a row through `get` or `scan`, which
give the fixed form back, so the code above sees one form; a writer that
changes a row writes it fixed again (until the next repack). The forms are
told apart by the first byte: a fixed form begins with a u64 (a count or a
pack number) below 2^56, so with 0; a short form with its tag, never 0.
"""

import struct

from ..errors import StoreDamaged
from .schema import put_varint, read_varint

TABLES = ("refs", "orefs", "ocounts")

# The fixed forms by length (their first field a u64): orefs alone and
# ocounts (count); refs alone (count, raw length, stored length) and orefs
# format 3 (pack, offset, stored length); orefs format 2 (count, pack,
# offset, stored length); refs packed (count, raw length, stored length,
# pack, offset); refs in a data file (count, raw length, stored length, file,
# offset).
FIXED = {s.size: s for s in (struct.Struct(">Q"), struct.Struct(">QII"), struct.Struct(">QQII"),
                             struct.Struct(">QIIQI"), struct.Struct(">QIIQQ"))}


def compact(raw) -> bytes:
    """A count row's short form (the row as it is when it has one already,
    or when the short form would be no shorter)."""
    raw = bytes(raw)
    form = FIXED.get(len(raw))
    if form is None or raw[0]:
        return raw
    short = bytearray((len(raw),))
    for field in form.unpack(raw):
        put_varint(field, short)
    return bytes(short) if len(short) < len(raw) else raw


def expand(raw) -> bytes:
    """A count row's fixed form from its short form."""
    form = FIXED.get(raw[0])
    if form is None:
        raise StoreDamaged("a count row is damaged")
    data, fields, pos = bytes(raw), [], 1
    try:
        while pos < len(data):
            n, pos = read_varint(data, pos)
            fields.append(n)
        return form.pack(*fields)
    except (IndexError, struct.error):
        raise StoreDamaged("a count row is damaged") from None


def get(txn, table: str, key: bytes):
    """A count row in its fixed form, or None."""
    raw = txn.get(table, key)
    if raw is not None and raw[0]:
        return expand(raw)
    return raw


def scan(txn, table: str, prefix: bytes):
    """(key, row in its fixed form) of every count row under prefix."""
    for key, raw in txn.scan(table, prefix):
        yield key, (expand(raw) if raw[0] else raw)
