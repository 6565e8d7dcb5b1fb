"""Taking a snapshot where it costs least: by the worker serving the volume,
in the commit that stores what it holds (registry.snapshot_by_worker), else
here, after that worker's flush (VolumeService.snapshot_here).

Apart from volumes.py so that `fusevol snapshot create` of a mounted volume
loads neither the records nor the store: the worker does all of it."""

from ..fs import registry


def take_snapshot(store_path: str, volume: str, name: str | None = None) -> str:
    """Snapshot `volume` of the store at `store_path` (named `name`, or after
    the time); its name. It holds what was written before this call."""
    made = registry.snapshot_by_worker(store_path, volume, name)
    if made is not None:
        return made
    from .volumes import VolumeService

    return VolumeService(store_path).snapshot_here(volume, name).name
