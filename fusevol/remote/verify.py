"""`fusevol remote verify`: is every snapshot of a remote whole?

Reads every index (a damaged one is named), checks that every pack an index
lists exists with the size the index implies, walks every snapshot's tree
(tree objects downloaded and checked by hash) and names each blob a snapshot
needs that no index lists. With read_data, every chunk the snapshots reach is
downloaded and checked by its hash too, and damage is named by pack.
"""

import concurrent.futures

from ..errors import RemoteDamaged
from ..store import chunks, trees
from . import catalog, layout, manifests
from .fetch import Fetcher
from .s3 import Bucket

THREADS = 8
MAX_NAMED = 20  # problems listed in the report; the count says how many there are


def verify(remote: dict, *, read_data: bool = False) -> dict:
    bucket = Bucket(remote, max_pool=THREADS)
    problems: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="verify") as pool:
        cat = catalog.load(bucket, pool, list_packs=True, strict=False)
        problems += [f"index {name} is damaged (its content does not match its name)"
                     for name in cat.damaged]
        for name, packs in cat.indexes.items():
            for pid, entries in packs.items():
                if pid not in cat.packs:
                    problems.append(f"pack {layout.pack_name(pid)} is missing (index {name} lists it)")
                elif entries and max(e[2] + e[3] for e in entries) > cat.packs[pid]:
                    problems.append(f"pack {layout.pack_name(pid)} is shorter than index {name} says")
        fetcher = Fetcher(bucket, cat, pool)
        snaps = manifests.list_all(bucket, pool)
        reached_chunks: dict[bytes, str] = {}
        for snap in snaps:
            ref = f"{snap['volume']}@{snap['name']}"
            problems += _walk(fetcher, cat, bytes.fromhex(snap["root"]), ref, reached_chunks)
        if read_data:
            present = [cid for cid in reached_chunks if cat.has(cid)]
            for start in range(0, len(present), 256):
                try:
                    for _ in fetcher.stream(present[start:start + 256]):
                        pass
                except RemoteDamaged as e:
                    problems.append(str(e).split(": ", 1)[1])
    return {"remote": remote["name"], "snapshots": len(snaps), "packs": len(cat.packs),
            "indexes": len(cat.indexes) + len(cat.damaged), "chunks_reached": len(reached_chunks),
            "data_read": read_data, "problems": len(problems), "named": problems[:MAX_NAMED]}


def _walk(fetcher: Fetcher, cat: catalog.Catalog, root: bytes, ref: str,
          reached_chunks: dict[bytes, str]) -> list[str]:
    problems, seen = [], set()
    level = [root]
    while level:
        wanted = [oid for oid in dict.fromkeys(level) if oid not in seen]
        seen.update(wanted)
        missing = [oid for oid in wanted if not cat.has(oid)]
        problems += [f"snapshot {ref}: tree object {oid.hex()} is in no index" for oid in missing]
        try:
            got = fetcher.fetch([oid for oid in wanted if cat.has(oid)])
        except RemoteDamaged as e:
            return problems + [f"snapshot {ref}: {str(e).split(': ', 1)[1]}"]
        level = []
        for oid, stored in got.items():
            obj = trees.decode(chunks.decode(stored))
            kids, chunk_ids = obj.children()
            level.extend(kids)
            for cid in chunk_ids:
                if cid not in reached_chunks:
                    reached_chunks[cid] = ref
                    if not cat.has(cid):
                        problems.append(f"snapshot {ref}: chunk {cid.hex()} is in no index")
    return problems
