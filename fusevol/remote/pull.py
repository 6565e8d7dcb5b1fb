"""`fusevol pull`: a snapshot from a remote, downloading only what the store lacks.

The manifest names the root; the tree is read level by level from tree packs,
stopping at every object the local store holds already (it holds all below
it). The chunks missing here are then downloaded, checked and stored as they
arrive, each with a reference of the pull's own (staging.py). The new tree
objects, children first, are then written as a send stream into `receive`,
which checks every id again and installs the snapshot in one write
transaction; the pull's own references are dropped at the end, so a pull that
fails at any point leaves the store as it was.
"""

import concurrent.futures
import json
import logging
import os
import re
import threading
import time

from ..errors import AlreadyExists, Busy, FusevolError, InvalidArgument, StreamDamaged
from ..progress import NoProgress
from ..store import blobs, chunks, snapshots, stream, trees, volumes
from ..store.env import Store
from . import catalog, collector, heap, manifests
from .fetch import Fetcher, PackMissing
from .s3 import Bucket
from .staging import Staging

log = logging.getLogger(__name__)
THREADS = 8
PIPE_SIZE = 1 << 20
# How receive names a chunk the store lost meanwhile (store/stream.py).
_LOST_CHUNK = re.compile(r"refers to chunk ([0-9a-f]{64}), which neither")


class Stopped(FusevolError):
    """The pull was asked to stop (its `stop` event was set)."""


def pull(store: Store, remote: dict, volume: str, name: str, new_volume: str | None = None, *,
         force: bool = False, mounted: bool = False, opts: dict | None = None,
         progress: NoProgress | None = None, stop: threading.Event | None = None) -> dict:
    """Pull VOLUME@NAME into NEW_VOLUME (or VOLUME); opts: driver options of a
    new volume. Setting `stop` ends the pull (Stopped) before the next range
    is stored, the store left as it was."""
    progress = progress or NoProgress()
    started = time.monotonic()
    target = volumes.check_name(new_volume or volume)
    bucket = Bucket(remote, max_pool=THREADS)
    downloaded = 0
    with concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="pull") as pool, \
            Staging(store) as staging, collector.spared(), heap.kept():
        manifest = manifests.read(bucket, volume, name)
        base_root = _base_of(store, target)
        root = bytes.fromhex(manifest["root"])
        record = {k: manifest[k] for k in stream.SENT_FIELDS}
        record["sent_from"] = f"{remote['name']}:{volume}@{name}"
        _refuse_early(store, target, base_root, record, mounted=mounted)
        for attempt in range(2):
            fetcher = Fetcher(bucket, catalog.load(bucket, pool), pool)
            try:
                objects, order, missing_chunks = _plan(store, fetcher, root)
                progress.start(f"pulling {volume}@{name}",
                               sum(fetcher.cat.where(cid)[3] for cid in missing_chunks))
                staging.store_batches(_until(stop, fetcher.stream(missing_chunks)), progress)
                break
            except PackMissing:
                if attempt:
                    raise
                # A prune may have rewritten it since the indexes were read:
                # read them again; what is stored already is not fetched again.
                log.info("a pack is gone since the indexes were read: reading them again")
            finally:
                downloaded += fetcher.downloaded_bytes
        if stop is not None and stop.is_set():
            raise Stopped(f"pull of {volume}@{name} stopped")
        report = _receive(store, target, base_root, record, objects, order, set(staging.held),
                          force=force, mounted=mounted, opts=opts)
        report["new_chunks"] = staging.new_chunks
        chunk_count = len(staging.held)
    report.update(remote=remote["name"], downloaded_bytes=downloaded,
                  objects=len(order), chunks=chunk_count,
                  seconds=round(time.monotonic() - started, 3))
    return report


def _until(stop: threading.Event | None, batches):
    for batch in batches:
        if stop is not None and stop.is_set():
            raise Stopped("pull stopped")
        yield batch


def _base_of(store: Store, target: str) -> bytes | None:
    """None for a new volume; else the root of a snapshot the existing volume
    holds (receive then rolls the volume to the pulled snapshot)."""
    with store.read() as txn:
        if volumes.get(txn, target, missing_ok=True) is None:
            return None
        snaps = snapshots.list_all(txn, target)
    if not snaps:
        raise InvalidArgument(f"volume {target} exists here and has no snapshot to pull onto",
                              reason="no_snapshot_to_pull_onto", volume=target)
    return bytes.fromhex(snaps[-1].root)


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


def _refuse_early(store: Store, target: str, base_root: bytes | None, record: dict, *,
                  mounted: bool) -> None:
    """Refusals of receive that need no data, said before downloading any
    (receive checks everything again in its transaction)."""
    if base_root is None:
        return  # a new volume
    with store.read() as txn:
        if any(s.name == record["name"] for s in snapshots.list_all(txn, target)):
            raise AlreadyExists(f"snapshot {target}@{record['name']} already exists")
    if mounted:
        raise Busy(f"volume {target} is mounted", reason="in_use", volume=target,
                   holder="mount", action="pull")


def _receive(store: Store, target: str, base_root: bytes | None, record: dict, objects: dict,
             order: list, staged: set, *, force: bool, mounted: bool, opts: dict | None) -> dict:
    """The new tree objects as a stream, written in a thread into a pipe
    that receive reads (its chunks are in the store already)."""
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
                for oid in order:
                    writer.record(stream.OBJECT, oid, objects[oid])
                writer.trailer()
        except BaseException as e:
            failure.append(e)

    producer = threading.Thread(target=produce, name="pull-stream")
    producer.start()
    try:
        with open(read_fd, "rb") as src:
            return stream.receive(store, target, src, force=force, mounted=mounted, opts=opts)
    except StreamDamaged as e:
        producer.join()
        if failure and not isinstance(failure[0], BrokenPipeError):
            raise failure[0] from None
        lost = _LOST_CHUNK.search(str(e))
        if lost and bytes.fromhex(lost.group(1)) in staged:
            raise FusevolError("chunks this pull had stored were freed meanwhile (did a gc run?)",
                               reason="pull_raced_gc") from None
        raise
    finally:
        producer.join()
