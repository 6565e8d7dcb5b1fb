"""Mount options in mount(8)'s form ("ro,relatime,subpath=www"), as `fusevol mount -o`
and the mount(8) helper take them, and what they ask of a worker and of the kernel.

No pyfuse3 or trio here: the CLI and the helper parse options before any worker runs.
"""

import dataclasses

from ..errors import InvalidArgument
from ..store.volumes import ATIME_MODES

DEFAULT_ATIME = "noatime"

# Options mount(8), fstab and systemd use for their own ends; they ask nothing of a volume.
_IGNORED = {"defaults", "auto", "noauto", "_netdev", "nofail", "user", "nouser", "users",
            "owner", "group", "async", "nodev", "nosuid", "exec", "atime", "nodiratime",
            "diratime", "norelatime", "nostrictatime", "lazytime", "nolazytime", "loud",
            "silent"}
_IGNORED_PREFIXES = ("x-", "comment=", "_")


@dataclasses.dataclass
class MountOptions:
    readonly: bool = False
    subpath: str | None = None
    store: str | None = None
    # None: the volume's own setting (volume create -o atime=..., suid=..., dev=...)
    atime: str | None = None
    dev: bool | None = None       # device nodes on the volume work (root only)
    suid: bool | None = None      # setuid and setgid bits take effect (root only)
    noexec: bool = False

    def to_text(self) -> str:
        """The same options as text, for a worker's command line."""
        parts = ["ro" if self.readonly else "rw"]
        if self.atime:
            parts.append(self.atime)
        parts += [f"{flag}={str(getattr(self, flag)).lower()}" for flag in ("dev", "suid")
                  if getattr(self, flag) is not None]
        if self.noexec:
            parts.append("noexec")
        if self.subpath:
            parts.append(f"subpath={self.subpath}")
        if self.store:
            parts.append(f"store={self.store}")
        return ",".join(parts)


def parse(text: str | None, *, sloppy: bool = False) -> MountOptions:
    """mount(8)'s comma-separated options; unknown ones are an error unless `sloppy`
    (mount -s). The last of contradicting options wins, as for mount(8)."""
    opts = MountOptions()
    for item in (text or "").split(","):
        key, eq, value = item.strip().partition("=")
        if not key:
            continue
        if eq and key in ("subpath", "store"):
            if not value:
                raise InvalidArgument(f"mount option {key}= needs a value")
            setattr(opts, key, value)
        elif not eq and key in ("ro", "rw"):
            opts.readonly = key == "ro"
        elif not eq and key in ATIME_MODES:
            opts.atime = key
        elif not eq and key in ("dev", "suid", "noexec"):
            setattr(opts, key, True)
        elif eq and key in ("dev", "suid"):
            # mount(8) hands its helpers no plain dev or suid (they are its defaults).
            setattr(opts, key, _flag(key, value))
        elif not eq and key in _IGNORED:
            if key in ("nodev", "nosuid", "exec"):
                setattr(opts, {"nodev": "dev", "nosuid": "suid", "exec": "noexec"}[key], False)
            if key == "atime":
                opts.atime = "relatime"  # the kernel's default, as mount(8) says
        elif item.strip().startswith(_IGNORED_PREFIXES) or sloppy:
            continue
        else:
            raise InvalidArgument(
                f"unknown mount option {item.strip()!r}: fusevol takes ro, rw, noatime, "
                "relatime, strictatime, dev[=true], suid[=true], noexec, subpath=DIR and store=DIR (and "
                "ignores defaults, _netdev, nofail, auto, noauto, x-*)")
    return opts


def _flag(key: str, value: str) -> bool:
    if value.lower() in ("true", "yes", "1", "on"):
        return True
    if value.lower() in ("false", "no", "0", "off"):
        return False
    raise InvalidArgument(f"mount option {key}={value!r}: use true or false")


def kernel_options(opts: MountOptions) -> set[str]:
    """libfuse's options for these choices (libfuse itself mounts nosuid,nodev
    unless told suid, dev). The kernel leaves atime of FUSE inodes to the
    worker; the flag only shows in /proc/mounts."""
    options = set()
    if (opts.atime or DEFAULT_ATIME) == "noatime":
        options.add("noatime")
    for flag in ("dev", "suid", "noexec"):
        if getattr(opts, flag):
            options.add(flag)
    if opts.readonly:
        options.add("ro")
    return options
