"""Snapshot manifests on a remote: read one, list them."""

import concurrent.futures

from ..errors import NotFound
from . import layout
from .s3 import Bucket


def read(bucket: Bucket, volume: str, name: str) -> dict:
    manifest_name = layout.manifest_name(volume, name)
    data = bucket.get(manifest_name)
    if data is None:
        raise NotFound(f"remote {bucket.name} has no snapshot {volume}@{name}",
                       reason="no_remote_snapshot", remote=bucket.name, volume=volume)
    return layout.decode_manifest(manifest_name, data)


def list_all(bucket: Bucket, pool: concurrent.futures.Executor,
             volume: str | None = None) -> list[dict]:
    """Every manifest (of VOLUME), oldest first, each with `volume` and `name`."""
    names = [n for n, _, _ in bucket.list_objects(f"snapshots/{volume}/" if volume else "snapshots/")]
    out = []
    for manifest_name, data in zip(names, pool.map(bucket.get, names)):
        if data is None:
            continue  # removed since the listing
        parts = manifest_name.split("/")
        if len(parts) != 3:
            continue
        record = layout.decode_manifest(manifest_name, data)
        record["volume"], record["name"] = parts[1], parts[2]
        out.append(record)
    out.sort(key=lambda r: (r["volume"], r.get("created_ns", 0), r["name"]))
    return out
