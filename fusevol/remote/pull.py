"""`fusevol pull`: a snapshot from a remote, downloading only what the store lacks.

The manifest names the root; the tree is read level by level from tree packs,
stopping at every object the local store holds already (it holds all below
it). The chunks missing here are then downloaded and, with the new objects,
written as a send stream (children first) into `receive`, which checks every
id again, spools, and installs the snapshot in one write transaction: a pull
that fails at any point leaves the store as it was.
"""

import concurrent.futures
import json
import os
import re
import threading
import time

from ..errors import InvalidArgument, StreamDamaged
from ..progress import NoProgress
from ..store import blobs, chunks, snapshots, stream, trees, volumes
from ..store.env import Store
from . import catalog, manifests
from .fetch import Fetcher
from .s3 import Bucket

THREADS = 8
PIPE_SIZE = 1 << 20
# How receive names a chunk that does not match its id (store/stream.py).
_DAMAGED_CHUNK = re.compile(r"chunk ([0-9a-f]{64}) does not match its content")


def pull(store: Store, remote: dict, volume: str, name: str, new_volume: str | None = None, *,
         force: bool = False, mounted: bool = False, opts: dict | None = None,
         progress: NoProgress | None = None) -> dict:
    """Pull VOLUME@NAME into NEW_VOLUME (or VOLUME); opts: driver options of a
    new volume."""
    progress = progress or NoProgress()
    started = time.monotonic()
    target = volumes.check_name(new_volume or volume)
    bucket = Bucket(remote, max_pool=THREADS)
    with concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="pull") as pool:
        manifest = manifests.read(bucket, volume, name)
        base_root = _base_of(store, target)
        cat = catalog.load(bucket, pool)
        fetcher = Fetcher(bucket, cat, pool)
        root = bytes.fromhex(manifest["root"])
        objects, order, missing_chunks = _plan(store, fetcher, root)
        record = {k: manifest[k] for k in stream.SENT_FIELDS}
        record["sent_from"] = f"{remote['name']}:{volume}@{name}"
        report = _receive(store, target, fetcher, base_root, record, objects, order,
                          missing_chunks, force=force, mounted=mounted, opts=opts,
                          progress=progress)
    report.update(remote=remote["name"], downloaded_bytes=fetcher.downloaded_bytes,
                  objects=len(order), chunks=len(missing_chunks),
                  seconds=round(time.monotonic() - started, 3))
    return report


def _base_of(store: Store, target: str) -> bytes | None:
    """None for a new volume; else the root of a snapshot the existing volume
    holds (receive then rolls the volume to the pulled snapshot)."""
    with store.read() as txn:
        if volumes.get(txn, target, missing_ok=True) is None:
            return None
        snaps = snapshots.list_all(txn, target)
    if not snaps:
        raise InvalidArgument(f"volume {target} exists here and has no snapshot: pull into a "
                              "new volume (give NEWVOLUME), or snapshot it first")
    return bytes.fromhex(snaps[-1]["root"])


def _plan(store: Store, fetcher: Fetcher, root: bytes):
    """Download the tree objects the store lacks, level by level. Returns
    ({id: stored}, ids children first, chunk ids the store lacks)."""
    objects: dict[bytes, bytes] = {}
    children: dict[bytes, list[bytes]] = {}
    missing_chunks: dict[bytes, None] = {}  # ordered, for packs read in order
    level = [root]
    while level:
        with store.read() as txn:
            wanted = [oid for oid in dict.fromkeys(level)
                      if oid not in objects and not blobs.has(txn, blobs.OBJECT, oid)]
        got = fetcher.fetch(wanted)
        level = []
        with store.read() as txn:
            for oid in wanted:
                stored = objects[oid] = got[oid]
                obj = trees.decode(chunks.decode(stored))
                kids, chunk_ids = obj.children()
                children[oid] = kids
                level.extend(kids)
                for cid in chunk_ids:
                    if cid not in missing_chunks and not blobs.has(txn, blobs.CHUNK, cid):
                        missing_chunks[cid] = None
    return objects, _children_first(root, objects, children), list(missing_chunks)


def _children_first(root: bytes, objects: dict, children: dict) -> list[bytes]:
    order, done = [], set()
    stack = [(root, False)]
    while stack:
        oid, expanded = stack.pop()
        if expanded:
            order.append(oid)
            continue
        if oid in done or oid not in objects:
            continue  # placed already, or held by the store
        done.add(oid)
        stack.append((oid, True))
        stack.extend((kid, False) for kid in children[oid])
    return order


def _receive(store: Store, target: str, fetcher: Fetcher, base_root: bytes | None, record: dict,
             objects: dict, order: list, missing_chunks: list, *, force: bool, mounted: bool,
             opts: dict | None, progress) -> dict:
    """Write the stream in a thread, into a pipe that receive reads."""
    read_fd, write_fd = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # the default size only costs more switches
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with open(write_fd, "wb", buffering=PIPE_SIZE) as out:
                writer = stream.StreamWriter(out, NoProgress())
                writer.header(base_root)
                writer.record(stream.SNAPSHOT, json.dumps(record).encode())
                # receive checks every chunk (one hash per chunk, not two)
                for batch in fetcher.stream(missing_chunks, check=False):
                    for cid, stored in batch:
                        writer.record(stream.CHUNK, cid, stored)
                for oid in order:
                    writer.record(stream.OBJECT, oid, objects[oid])
                writer.trailer()
        except BaseException as e:
            failure.append(e)

    producer = threading.Thread(target=produce, name="pull-stream")
    producer.start()
    try:
        with open(read_fd, "rb") as src:
            return stream.receive(store, target, src, force=force, mounted=mounted, opts=opts,
                                  progress=progress)
    except StreamDamaged as e:
        producer.join()
        if failure and not isinstance(failure[0], BrokenPipeError):
            raise failure[0] from None  # the cause (the server went away), not its effect
        named = _DAMAGED_CHUNK.search(str(e))
        if named and fetcher.cat.where(bytes.fromhex(named.group(1))) is not None:
            raise fetcher.damaged(bytes.fromhex(named.group(1))) from None
        raise
    finally:
        producer.join()
