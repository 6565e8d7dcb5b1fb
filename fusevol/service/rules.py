"""The rules of a volume's life, as pure functions of typed records.

Each rule is decided here and nowhere else; `service.volumes` gathers the
facts (the store's records, the worker registry, the mount table) and applies
them, for the CLI and the plugin alike. A refusal is an `InUse` error that
says what holds the volume; the edges add what their user can do about it.
Nothing here does I/O, so the rules are tested without a store or root.
"""

from ..errors import InUse
from ..records import FrozenRecord, Volume, Worker


# Mount IDs of views mounted on the host (the CLI, mount(8)), counted beside Docker's.
HOST_MOUNT = "host:"


def host_places(volume: Volume) -> list[str]:
    """Where views of `volume` mounted on the host are (their counts' IDs)."""
    return sorted(mid[len(HOST_MOUNT):] for mid in volume.mounts if mid.startswith(HOST_MOUNT))


class Holders(FrozenRecord):
    """What holds a volume now.

    `family_mounts`: mounts Docker counts on the volume's family (the data
    volume and its views), by volume name, those with any only. `worker`:
    the worker serving the family's data, wherever it is mounted.
    `mounted_at_driver`: something is mounted at the volume's place in the
    driver's mount folder (a worker, a view's bind mount, or what is left of
    one)."""

    _FIELDS = ("volume", "family_mounts", "worker", "mounted_at_driver")

    def __init__(self, volume: Volume, family_mounts: dict[str, int] | None = None,
                 worker: Worker | None = None, mounted_at_driver: str | None = None):
        self._set(volume, {} if family_mounts is None else family_mounts, worker, mounted_at_driver)


def flush_target(volume: Volume | None, name: str) -> str:
    """Whose worker must store what it holds before volume `name` is read
    (snapshot, export, diff against the live volume): the family's."""
    return volume.family if volume is not None else name


def check_remove(h: Holders) -> None:
    """A volume is removed only when nothing holds it: no container counts a
    mount of it, no worker serves its data (a view's source may: the view has
    no data of its own), nothing is mounted at its place."""
    v = h.volume
    places = host_places(v)
    if places and len(places) == len(v.mounts):
        raise InUse(f"volume {v.name} is mounted at {', '.join(places)}", volume=v.name,
                    holder="mount", action="remove", mountpoint=places[0])
    if v.mount_count:
        raise InUse(f"volume {v.name} is mounted ({v.mount_count} mount(s))",
                    volume=v.name, holder="containers", action="remove", count=v.mount_count)
    if h.worker is not None and not v.is_view:
        raise InUse(f"volume {v.name} is mounted at {h.worker.mountpoint} (pid {h.worker.pid})",
                    volume=v.name, holder="worker", action="remove",
                    mountpoint=h.worker.mountpoint, pid=h.worker.pid)
    if h.mounted_at_driver:
        raise InUse(f"volume {v.name} is still mounted at {h.mounted_at_driver}",
                    volume=v.name, holder="mount", action="remove", mountpoint=h.mounted_at_driver)


def check_rollback(h: Holders, force: bool) -> Worker | None:
    """A volume is rolled back only when no container counts a mount of it or
    of its views; a worker serving it is stopped and started again around the
    rollback if `force` says so. Returns that worker (None: none to stop)."""
    v = h.volume
    if h.family_mounts:
        users = ", ".join(sorted(h.family_mounts))
        raise InUse(f"volume {v.name} is in use by containers (through {users})",
                    volume=v.name, holder="containers", action="rollback", through=users)
    if h.worker is not None and not force:
        raise InUse(f"volume {v.name} is mounted at {h.worker.mountpoint}",
                    volume=v.name, holder="worker", action="rollback",
                    mountpoint=h.worker.mountpoint, pid=h.worker.pid, force_helps=True)
    return h.worker


def receive_blocked(worker: Worker | None) -> bool:
    """A stream (or a pull) is not received into a volume a worker serves:
    its kernel caches would show the old tree. The store refuses it (the
    check sits in its transaction); this says whether to ask it to."""
    return worker is not None


def check_adoptable(name: str, worker: Worker, driver_path: str) -> None:
    """The driver serves a data volume through a worker at its own mountpoint
    only; one mounted elsewhere (`fusevol mount`, mount(8)) keeps it."""
    if worker.mountpoint != driver_path or worker.subpath:
        raise InUse(f"volume {name} is mounted at {worker.mountpoint} outside Docker "
                    f"(pid {worker.pid})", volume=name, holder="worker", action="mount",
                    mountpoint=worker.mountpoint, pid=worker.pid)


def served_vids(volumes: list[Volume], workers: list[Worker]) -> set[int]:
    """The volumes whose rows a worker owns right now (gc leaves their orphan
    files to them: an open file may still need its inode)."""
    served = {w.volume for w in workers}
    return {v.vid for v in volumes if v.name in served and v.vid is not None}
