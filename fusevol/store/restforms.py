"""The forms rows take at rest (store format 5).

When gc and the idle upkeep write a table again in key order (compaction.py,
repack.py), the rows of some tables are written in a shorter form than the
fixed one writers use: count rows (countrows.py) and inode records
(schema.short_row). Their readers take either form; a writer that changes
such a row writes it fixed again, until the next time.
"""

from . import countrows, schema

SHORTER = {"refs": countrows.compact, "orefs": countrows.compact, "ocounts": countrows.compact,
           "inodes": schema.short_row}


def short(table: str, rows):
    """(key, value) rows of a table as they are written at rest."""
    form = SHORTER.get(table)
    if form is None:
        return rows
    return ((key, form(value)) for key, value in rows)
