"""`fusevol df`: what the volumes hold and what the store spends on it."""

import os

import click

from .common import emit, human, json_option, open_store
from .group import command


def _smaller(before: int, after: int) -> str:
    return f"{before / after:.2f}x smaller" if after else "nothing"


def _dedup_note(logical: int, unique: int) -> str:
    if unique <= logical:
        return f"after dedup: {_smaller(logical, unique)}"
    return "after dedup; more than the volumes hold: snapshots keep data they no longer do"


def _compression_note(unique: int, stored: int, chunks: int) -> str:
    if stored <= unique:
        return f"after compression: {_smaller(unique, stored)}"
    # Only the header can make a chunk larger: one that does not compress is kept raw.
    return (f"after compression: {human(stored - unique)} more, the 1-byte header of each "
            f"of {chunks} chunk(s), too small to compress")


def _overhead_note(overhead: int, stored: int) -> str:
    if not stored:
        return "no chunks yet"
    return f"{human(overhead)}, {overhead / stored:.1%}, over the stored chunks"


def _file_bytes(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


@command()
@json_option
@click.pass_context
def df(ctx, as_json):
    """Show logical and stored bytes, with dedup and compression ratios."""
    from ..store import chunks, datafiles, packs, volumes

    store = open_store(ctx)
    with store.read() as txn:
        totals = chunks.totals(txn)
        per_volume = {r.name: volumes.stats(txn, r).logical_bytes
                      for r in volumes.list_all(txn, removed=True) if r.vid is not None}
    with store.read(buffers=True) as txn:  # packs are sized, not read
        use = packs.file_use(txn)
        data_dead = datafiles.dead_bytes(txn)
    logical = sum(per_volume.values())
    unique = totals["unique_bytes"]
    stored = totals["stored_bytes"]
    file_bytes = _file_bytes(os.path.join(store.path, "db", "data.mdb"))
    data_bytes = datafiles.disk_bytes(store.path)
    disk = file_bytes + data_bytes
    overhead = disk - stored
    parts = {key: use[key] for key in ("object_bytes", "free_bytes", "dead_bytes", "slack_bytes",
                                       "count_bytes")}
    parts["data_dead_bytes"] = data_dead  # let go of, not punched out of the data files yet
    # What the file takes on the disk: pages punched out of it (gc with the
    # store held open) are not counted, as the disk does not count them; blocks
    # the file has past LMDB's last page in use are (the parts add up to the
    # file's blocks: with the smaller of the two, they missed a page at times).
    parts["other_bytes"] = max(0, disk - stored - sum(parts.values()))
    out = {
        "logical_bytes": logical,
        "unique_bytes": unique,
        "stored_bytes": stored,
        "store_file_bytes": file_bytes,
        # Large chunks a worker wrote beside the store file (store/datafiles.py).
        "data_files_bytes": data_bytes,
        "disk_bytes": disk,
        # Free pages gc punched out of the file: inside its size, not on the disk.
        "store_file_hole_bytes": use["hole_bytes"],
        # The file beyond the stored chunks, and where it goes.
        "overhead": {"bytes": overhead, "ratio": round(overhead / stored, 4) if stored else None,
                     **parts},
        "chunks": totals["chunks"],
        "dedup_ratio": round(logical / unique, 3) if unique else 1.0,
        "compression_ratio": round(unique / stored, 3) if stored else 1.0,
        "volumes": per_volume,
    }
    text = "\n".join([
        f"logical   {human(logical):>12}  (what the volumes hold)",
        f"unique    {human(unique):>12}  ({_dedup_note(logical, unique)})",
        f"stored    {human(stored):>12}  ({_compression_note(unique, stored, totals['chunks'])})",
        f"on disk   {human(disk):>12}  (store file {human(file_bytes)}, data files {human(data_bytes)}; "
        f"{_overhead_note(overhead, stored)})",
        f"          {'':>12}  (tree objects {human(parts['object_bytes'])}, pages free for reuse "
        f"{human(parts['free_bytes'])}, dead in packs {human(parts['dead_bytes'])}, "
        f"ends of packs' pages {human(parts['slack_bytes'])}, count rows {human(parts['count_bytes'])}, "
        f"dead in data files {human(parts['data_dead_bytes'])}, "
        f"volume rows {human(parts['other_bytes'])})",
        f"chunks    {totals['chunks']:>12}",
    ])
    emit(out, as_json, text)
