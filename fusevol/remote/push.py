"""`fusevol push`: a snapshot to a remote, sending only what the remote lacks.

Steps, each safe to stop at: read what the remote holds (its indexes, and the
headers of packs an interrupted push left without an index); walk the
snapshot's tree and pack every chunk and object the remote lacks (a subtree
whose root the remote holds is skipped whole: see upload.py for why that is
safe); upload the packs; write one index for them; write the manifest last,
with a conditional PUT, so a reader never sees a snapshot whose blobs are not
all there and two pushes never overwrite each other's snapshot. A push lock
(locks.py) keeps a prune from deleting what the push counts on meanwhile.
"""

import concurrent.futures
import datetime
import json
import socket
import time

from ..errors import AlreadyExists, RemoteDamaged
from ..progress import NoProgress
from ..records import Snapshot
from ..store import blobs, chunks, snapshots, trees
from ..store.env import Store
from ..store.stream import SENT_FIELDS
from . import catalog, collector, layout
from .locks import PushLock
from .s3 import Bucket
from .upload import Uploader

THREADS = 8
_RAW = bytes([chunks.RAW])


def ensure_config(bucket: Bucket) -> None:
    """Mark the prefix as a fusevol remote (once), and refuse a foreign one."""
    data = bucket.get(layout.CONFIG)
    if data is None:
        bucket.put_new(layout.CONFIG, json.dumps(layout.CONFIG_BODY).encode())
        return
    try:
        config = json.loads(data)
    except ValueError:
        raise RemoteDamaged(f"remote {bucket.name}: its config object is unreadable") from None
    if config.get("format") != "fusevol-remote" or config.get("version") != 1:
        raise RemoteDamaged(f"remote {bucket.name}: {bucket.bucket}/{bucket.prefix} holds "
                            f"something other than a remote in fusevol's format, version 1 "
                            f"({config!r})")


def push(store: Store, remote: dict, volume: str, name: str,
         progress: NoProgress | None = None) -> dict:
    progress = progress or NoProgress()
    started = time.monotonic()
    with store.read() as txn:
        snap = snapshots.get(txn, volume, name)
    root = bytes.fromhex(snap.root)
    bucket = Bucket(remote, max_pool=THREADS)
    manifest_name = layout.manifest_name(volume, name)
    report = {"snapshot": f"{volume}@{name}", "remote": remote["name"], "uploaded_bytes": 0,
              "packs": 0, "chunks": 0, "objects": 0, "reused_packs": 0, "already": False}
    with concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="push") as pool, \
            collector.spared():
        ensure_config(bucket)
        existing = bucket.get(manifest_name)
        if existing is not None:
            _same_or_refuse(remote, manifest_name, existing, snap)
            report["already"] = True
            return report
        with PushLock(bucket):  # no prune deletes what this push counts on
            cat = catalog.load(bucket, pool, recover=True, strict=False)
            progress.start(f"pushing {volume}@{name}")
            uploader = Uploader(bucket, pool, progress)
            try:
                with blobs.BlobReader(store) as reader:
                    counts = _walk(reader, cat, uploader, root)
                uploader.finish()
            finally:
                try:
                    uploader.wait()  # no upload outlives the push, even one that fails
                except BaseException:
                    pass
            packs = {**cat.unindexed, **uploader.packs}
            sent = uploader.sent_bytes
            if packs:
                index_id, index = layout.encode_index(packs)
                bucket.put(layout.index_name(index_id), index)
                sent += len(index)
            record = {k: v for k, v in snap.to_dict().items() if k in SENT_FIELDS}
            record.update(pushed_from=f"{socket.gethostname()}:{volume}@{name}",
                          pushed_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            manifest = layout.encode_manifest(record)
            if not bucket.put_new(manifest_name, manifest):
                _same_or_refuse(remote, manifest_name, bucket.get(manifest_name) or b"", snap)
            sent += len(manifest)
    report.update(uploaded_bytes=sent, packs=len(uploader.packs), reused_packs=len(cat.unindexed),
                  seconds=round(time.monotonic() - started, 3), **counts)
    return report


def _same_or_refuse(remote: dict, manifest_name: str, data: bytes, snap: Snapshot) -> None:
    theirs = layout.decode_manifest(manifest_name, data)
    if theirs["root"] != snap.root:
        raise AlreadyExists(f"remote {remote['name']} already holds a different snapshot "
                            f"{manifest_name.split('/', 1)[1].replace('/', '@')} (pushed from "
                            f"{theirs.get('pushed_from', '?')}); snapshot under another name")


def _walk(reader: blobs.BlobReader, cat: catalog.Catalog, uploader: Uploader,
          root: bytes) -> dict:
    """Children before parents; what the remote holds is skipped, a subtree
    by its root."""
    counts = {"chunks": 0, "objects": 0, "skipped_chunks": 0}
    seen: set[bytes] = set()
    queued_chunks: set[bytes] = set()
    stack: list[tuple[bytes, bytes | None]] = [(root, None)]
    while stack:
        oid, stored = stack.pop()
        if stored is not None:  # a directory whose entries are all queued
            uploader.add(layout.OBJECT, oid, stored)
            counts["objects"] += 1
            continue
        if oid in seen or cat.has(oid):
            continue
        seen.add(oid)
        stored = reader.get(blobs.OBJECT, oid)
        obj = trees.decode(chunks.decode(stored))
        if obj.kind == trees.DIR:
            stack.append((oid, stored))
            stack.extend((child, None) for _, child in obj.entries)
            continue
        for _, cid in obj.blocks:
            if cid in queued_chunks or cat.has(cid):
                counts["skipped_chunks"] += 1
                continue
            queued_chunks.add(cid)
            payload = reader.get(blobs.CHUNK, cid)
            _check(payload, cid)  # pass no damage on
            uploader.add(layout.CHUNK, cid, payload)
            counts["chunks"] += 1
        uploader.add(layout.OBJECT, oid, stored)
        counts["objects"] += 1
    return counts


def _check(payload: bytes, cid: bytes) -> None:
    """Raise StoreDamaged unless the chunk's content hashes to its id. A raw
    chunk is hashed where it lies: decode_checked would copy it (1 GiB of
    copies in a full push of 1 GiB, for nothing)."""
    if payload[:1] == _RAW and chunks.chunk_id(memoryview(payload)[1:]) == cid:
        return
    chunks.decode_checked(payload, cid)  # decodes, or names the damage
