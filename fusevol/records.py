"""The records every layer passes to the next: a volume, a snapshot, a worker.

The store keeps volumes and snapshots as JSON objects and the worker registry
keeps workers as JSON files; these dataclasses are what crosses a layer
boundary instead of those dicts (the service layer, the plugin, the CLI, the
worker). Like errors.py, this module imports nothing of the project, so any
layer may use it.

`from_dict` takes a stored object as it is (an old record lacks newer keys;
keys this version does not know are kept in `extra`), and `to_dict` gives back
the same object, so a record read and written again loses nothing and the
CLI's JSON output stays what it was.
"""

import dataclasses
from dataclasses import dataclass, field


def _split(cls, data: dict) -> tuple[dict, dict]:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    return known, {k: v for k, v in data.items() if k not in names}


class _Stored:
    """from_dict and to_dict of a record kept as a JSON object, keys it does
    not know included (in `extra`); `_OPTIONAL` fields are written only when
    they differ from their default."""

    _OPTIONAL: tuple = ()

    @classmethod
    def from_dict(cls, data: dict):
        known, extra = _split(cls, data)
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and (f.name not in self._OPTIONAL
                                         or getattr(self, f.name) != _default(f))}
        out.update(self.extra)
        return out


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass
class Volume(_Stored):
    """A volume's record. A *view* (`source` + `subpath`) has no rows of its
    own (`vid` None): it shows one folder of its source, a data volume."""

    name: str
    vid: int | None = None
    created_at: str = ""
    options: dict = field(default_factory=dict)  # the driver options as given
    readonly: bool = False
    source: str | None = None
    subpath: str | None = None
    quota: int | None = None
    compression: str = "zstd"
    atime: str | None = None
    suid: bool = False
    dev: bool = False
    xattr: bool = True  # off: the worker answers no xattr request (fs/operations.py)
    mounts: dict[str, int] = field(default_factory=dict)  # Docker's mount ID -> count
    removed: bool = False  # a source removed while views still show it
    received_from: str | None = None
    extra: dict = field(default_factory=dict)

    # Written only when set, as the store has always written them (xattr: when off).
    _OPTIONAL = ("mounts", "removed", "received_from", "xattr")

    @classmethod
    def from_dict(cls, data: dict) -> "Volume":
        data = dict(data)
        data["mounts"] = dict(data.get("mounts") or {})
        data["options"] = dict(data.get("options") or {})
        return super().from_dict(data)

    @property
    def is_view(self) -> bool:
        return self.source is not None

    @property
    def family(self) -> str:
        """The data volume whose worker serves this volume (itself, or a view's source)."""
        return self.source or self.name

    @property
    def mount_count(self) -> int:
        """Mounts Docker counts on this volume (every ID, each as often as it mounted)."""
        return sum(self.mounts.values())


@dataclass
class Snapshot(_Stored):
    """A snapshot's record: an immutable tree (`root`) of a volume."""

    volume: str
    name: str
    root: str  # the tree's object id, hex
    created_at: str = ""
    created_ns: int = 0
    logical_bytes: int = 0
    inodes: int = 0
    next_ino: int = 0
    hardlinks: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # received_from, pushed_from, ...

    @property
    def ref(self) -> str:
        return f"{self.volume}@{self.name}"


@dataclass
class Worker(_Stored):
    """A running worker as it registers itself (fs/registry.py)."""

    _OPTIONAL = ("pidns", "takes_snapshots")

    pid: int
    volume: str  # the data volume it serves
    mountpoint: str
    mounted_as: str | None = None  # the name it was mounted by (a view's, or the volume's)
    readonly: bool = False
    subpath: str | None = None
    options: str | None = None  # mount(8)-style, as fs/mountopts.py writes them
    pidns: int | None = None  # the pid namespace `pid` belongs to (its inode number)
    takes_snapshots: bool = False  # answers registry.SNAPSHOT_XATTR (older workers: a flush only)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MountSpec:
    """What mounting a volume serves, resolved once (store/volumes.mount_spec):
    the data volume whose rows are served, the folder of it shown (a view's,
    and a subpath asked for on top), and whether the mount is read-only."""

    name: str  # the volume as mounted (a view's name, or the data volume's)
    data: Volume
    subpath: str | None
    readonly: bool

    def to_dict(self) -> dict:
        """As JSON, for a worker's start request (fs/worker.py)."""
        return {"name": self.name, "data": self.data.to_dict(), "subpath": self.subpath,
                "readonly": self.readonly}

    @classmethod
    def from_dict(cls, data: dict) -> "MountSpec":
        return cls(name=data["name"], data=Volume.from_dict(data["data"]),
                   subpath=data.get("subpath"), readonly=bool(data.get("readonly")))
