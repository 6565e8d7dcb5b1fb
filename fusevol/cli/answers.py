"""What `volume ls` and `snapshot create` answer, as data and as text.

The click commands (volumes.py, snapshots.py) and the same commands run
without click (entry.py) print these, so both print the same; this module
imports no click.
"""


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def describe_volume(txn, service, volume) -> dict:
    from ..store import volumes

    st = volumes.stats(txn, volume)
    out = volume.to_dict()
    if not volume.is_view:  # a view has its source's
        out["xattr"] = volume.xattr
    out["logical_bytes"] = st.logical_bytes
    out["inodes"] = st.inodes
    worker = service.serving_worker(volume.family)
    out["served_at"] = worker.mountpoint if worker else None
    return out


def volume_list(service) -> tuple[list, str]:
    """`volume ls`: a row per volume, and the table."""
    from ..store import volumes

    with service.store.read() as txn:
        rows = [describe_volume(txn, service, v) for v in volumes.list_all(txn)]
    lines = [f"{'NAME':<30} {'SIZE':>10} {'CREATED':<21} OPTIONS"]
    for r in rows:
        opts = ",".join(f"{k}={v}" for k, v in sorted(r["options"].items()))
        lines.append(f"{r['name']:<30} {human(r['logical_bytes']):>10} {r['created_at']:<21} {opts}")
    return rows, "\n".join(lines)


def snapshot_made(store_path: str, ref: str, as_json: bool) -> tuple[dict | None, str]:
    """`snapshot create VOLUME[@NAME]` on the store at `store_path`: the
    snapshot made (with `as_json`; else None: its reference is all the text
    says, and a mounted volume's worker takes it with no store opened here),
    and its reference."""
    from ..store.names import parse_ref

    volume, name = parse_ref(ref, need_snapshot=False)
    if not as_json:
        from ..service.snapshotting import take_snapshot

        return None, f"{volume}@{take_snapshot(store_path, volume, name)}"
    from ..service import VolumeService

    snap = VolumeService(store_path).snapshot(volume, name).to_dict()
    snap.pop("hardlinks")
    return snap, f"{volume}@{snap['name']}"
