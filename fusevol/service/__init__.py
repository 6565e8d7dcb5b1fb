"""The volume service: one place for the rules of a volume's life.

Layering: records and errors (vocabulary) <- store <- fs (workers, registry)
<- service <- plugin, cli. `rules.py` decides (pure functions of typed
records); `volumes.py` gathers the facts and applies them. The CLI and the
plugin call the service, never the registry or the store, for anything a
rule governs: removing a volume, rolling it back, receiving into it, reading
it while a worker may hold unstored data, starting and stopping workers.
"""

__all__ = ["VolumeService"]


def __getattr__(name: str):
    # Loaded when first named: `snapshot create` of a mounted volume needs
    # only snapshotting.py (and the worker).
    if name != "VolumeService":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .volumes import VolumeService

    globals()[name] = VolumeService
    return VolumeService
