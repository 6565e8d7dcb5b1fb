"""`fusevol df`: what the volumes hold and what the store spends on it."""

import os

import click

from .common import emit, human, json_option, open_store
from .group import command


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
    from ..store import chunks, volumes

    store = open_store(ctx)
    with store.read() as txn:
        totals = chunks.totals(txn)
        per_volume = {r["name"]: volumes.stats(txn, r).logical_bytes
                      for r in volumes.list_all(txn, removed=True) if r["vid"] is not None}
    logical = sum(per_volume.values())
    unique = totals["unique_bytes"]
    stored = totals["stored_bytes"]
    out = {
        "logical_bytes": logical,
        "unique_bytes": unique,
        "stored_bytes": stored,
        "store_file_bytes": _file_bytes(os.path.join(store.path, "db", "data.mdb")),
        "chunks": totals["chunks"],
        "dedup_ratio": round(logical / unique, 3) if unique else 1.0,
        "compression_ratio": round(unique / stored, 3) if stored else 1.0,
        "volumes": per_volume,
    }
    text = "\n".join([
        f"logical   {human(logical):>12}  (what the volumes hold)",
        f"unique    {human(unique):>12}  (after dedup, ratio {out['dedup_ratio']:.2f}x)",
        f"stored    {human(stored):>12}  (after compression, ratio {out['compression_ratio']:.2f}x)",
        f"on disk   {human(out['store_file_bytes']):>12}  (store file)",
        f"chunks    {totals['chunks']:>12}",
    ])
    emit(out, as_json, text)
