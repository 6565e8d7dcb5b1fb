"""The records every layer passes to the next: a volume, a snapshot, a worker.

The store keeps volumes and snapshots as JSON objects and the worker registry
keeps workers as JSON files; these records are what crosses a layer
boundary instead of those dicts (the service layer, the plugin, the CLI, the
worker). Like errors.py, this module imports nothing of the project, so any
layer may use it.

`from_dict` takes a stored object as it is (an old record lacks newer keys;
keys this version does not know are kept in `extra`), and `to_dict` gives back
the same object, so a record read and written again loses nothing and the
CLI's JSON output stays what it was.
"""


class Record:
    """What the dataclass decorator would give these records (construction by
    keyword or position, repr, equality by value, a copy with changes), written
    out: the dataclasses module imports inspect and compiles each class's methods
    at import, which was half of a short CLI command's start. `_FIELDS`: the
    fields, in order."""

    _FIELDS: tuple = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    def replace(self, **changes):
        """A copy with `changes` (as dataclasses.replace)."""
        for name in changes:
            if name not in self._FIELDS:
                raise TypeError(f"{type(self).__qualname__} has no field {name!r}")
        return type(self)(**{**{name: getattr(self, name) for name in self._FIELDS}, **changes})


class _Stored(Record):
    """from_dict and to_dict of a record kept as a JSON object, keys it does
    not know included (in `extra`); `_OPTIONAL` fields are written only when
    they differ from their default (in `_DEFAULTS`)."""

    _OPTIONAL: tuple = ()
    _DEFAULTS: dict = {}

    @classmethod
    def from_dict(cls, data: dict):
        names = cls._FIELDS
        known = {k: v for k, v in data.items() if k in names and k != "extra"}
        extra = {k: v for k, v in data.items() if k not in names or k == "extra"}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict:
        out = {name: getattr(self, name) for name in self._FIELDS
               if name != "extra" and (name not in self._OPTIONAL
                                       or getattr(self, name) != self._DEFAULTS[name])}
        out.update(self.extra)
        return out


class Volume(_Stored):
    """A volume's record. A *view* (`source` + `subpath`) has no rows of its
    own (`vid` None): it shows one folder of its source, a data volume.

    `options`: the driver options as given. `xattr` off: the worker answers no
    xattr request (fs/operations.py). `mounts`: Docker's mount ID -> count.
    `removed`: a source removed while views still show it."""

    _FIELDS = ("name", "vid", "created_at", "options", "readonly", "source", "subpath", "quota",
               "compression", "atime", "suid", "dev", "xattr", "mounts", "removed",
               "received_from", "extra")
    # Written only when set, as the store has always written them (xattr: when off).
    _OPTIONAL = ("mounts", "removed", "received_from", "xattr")
    _DEFAULTS = {"mounts": {}, "removed": False, "received_from": None, "xattr": True}

    def __init__(self, name: str, vid: int | None = None, created_at: str = "",
                 options: dict | None = None, readonly: bool = False, source: str | None = None,
                 subpath: str | None = None, quota: int | None = None, compression: str = "zstd",
                 atime: str | None = None, suid: bool = False, dev: bool = False,
                 xattr: bool = True, mounts: dict | None = None, removed: bool = False,
                 received_from: str | None = None, extra: dict | None = None):
        self.name = name
        self.vid = vid
        self.created_at = created_at
        self.options = {} if options is None else options
        self.readonly = readonly
        self.source = source
        self.subpath = subpath
        self.quota = quota
        self.compression = compression
        self.atime = atime
        self.suid = suid
        self.dev = dev
        self.xattr = xattr
        self.mounts = {} if mounts is None else mounts
        self.removed = removed
        self.received_from = received_from
        self.extra = {} if extra is None else extra

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


class Snapshot(_Stored):
    """A snapshot's record: an immutable tree (`root`, the tree's object id in
    hex) of a volume. `extra`: received_from, pushed_from, ..."""

    _FIELDS = ("volume", "name", "root", "created_at", "created_ns", "logical_bytes", "inodes",
               "next_ino", "hardlinks", "extra")

    def __init__(self, volume: str, name: str, root: str, created_at: str = "", created_ns: int = 0,
                 logical_bytes: int = 0, inodes: int = 0, next_ino: int = 0,
                 hardlinks: list | None = None, extra: dict | None = None):
        self.volume = volume
        self.name = name
        self.root = root
        self.created_at = created_at
        self.created_ns = created_ns
        self.logical_bytes = logical_bytes
        self.inodes = inodes
        self.next_ino = next_ino
        self.hardlinks = [] if hardlinks is None else hardlinks
        self.extra = {} if extra is None else extra

    @property
    def ref(self) -> str:
        return f"{self.volume}@{self.name}"


class Worker(_Stored):
    """A running worker as it registers itself (fs/registry.py).

    `volume`: the data volume it serves. `mounted_as`: the name it was mounted
    by (a view's, or the volume's). `options`: mount(8)-style, as
    fs/mountopts.py writes them. `pidns`: the pid namespace `pid` belongs to
    (its inode number). `takes_snapshots`: it answers registry.SNAPSHOT_XATTR
    (older workers: a flush only)."""

    _FIELDS = ("pid", "volume", "mountpoint", "mounted_as", "readonly", "subpath", "options",
               "pidns", "takes_snapshots", "extra")
    _OPTIONAL = ("pidns", "takes_snapshots")
    _DEFAULTS = {"pidns": None, "takes_snapshots": False}

    def __init__(self, pid: int, volume: str, mountpoint: str, mounted_as: str | None = None,
                 readonly: bool = False, subpath: str | None = None, options: str | None = None,
                 pidns: int | None = None, takes_snapshots: bool = False, extra: dict | None = None):
        self.pid = pid
        self.volume = volume
        self.mountpoint = mountpoint
        self.mounted_as = mounted_as
        self.readonly = readonly
        self.subpath = subpath
        self.options = options
        self.pidns = pidns
        self.takes_snapshots = takes_snapshots
        self.extra = {} if extra is None else extra


class FrozenRecord(Record):
    """A Record whose fields are set once, by its __init__ (`_set`), and is
    hashed by value (as dataclass(frozen=True))."""

    def _set(self, *values) -> None:
        for name, value in zip(self._FIELDS, values):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"cannot delete field {name!r}")

    def __hash__(self) -> int:
        return hash(self._values())


class MountSpec(FrozenRecord):
    """What mounting a volume serves, resolved once (store/volumes.mount_spec):
    the data volume whose rows are served, the folder of it shown (a view's,
    and a subpath asked for on top), and whether the mount is read-only.
    `name`: the volume as mounted (a view's name, or the data volume's)."""

    _FIELDS = ("name", "data", "subpath", "readonly")

    def __init__(self, name: str, data: Volume, subpath: str | None, readonly: bool):
        self._set(name, data, subpath, readonly)

    def to_dict(self) -> dict:
        """As JSON, for a worker's start request (fs/worker.py)."""
        return {"name": self.name, "data": self.data.to_dict(), "subpath": self.subpath,
                "readonly": self.readonly}

    @classmethod
    def from_dict(cls, data: dict) -> "MountSpec":
        return cls(name=data["name"], data=Volume.from_dict(data["data"]),
                   subpath=data.get("subpath"), readonly=bool(data.get("readonly")))
