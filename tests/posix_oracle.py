"""Differential POSIX testing: the same operations on a plain directory of the host's
disk (ext4, the oracle) and on a mounted volume, described so that the two compare.

An operation's outcome is ("ok", value) or ("err", errno name). A tree is described
without what legitimately differs between two filesystems: inode numbers (kept as
hardlink groups instead), directory sizes and block counts (layout), atime (fusevol
does not keep it: noatime), ctime (always "now" on both; which calls set it is not
compared), and mtimes other than the fixed ones the tests set (a time after
FIXED_TIMES_END is described as "recent", so a missed update shows as a difference).
"""

import ctypes
import errno
import os
import pickle
import stat
import sys
import traceback
from contextlib import contextmanager

from posix_helpers import _libc, getdents, renameat2  # noqa: F401  (re-exported for the cases)

USER = 1000     # unprivileged users
OTHER = 1001
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
FIXED_TIMES_END = 1_500_000_000 * 10**9  # 2017: the tests set times before this only


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec),
                            ctypes.c_int]


def utimensat(path: str, atime, mtime, follow: bool = True) -> None:
    """utimensat(2) with each time given as ns, or UTIME_NOW / UTIME_OMIT; both None
    passes a NULL times pointer ("now", with its own permission rule)."""
    times = None
    if atime is not None or mtime is not None:
        times = (_Timespec * 2)()
        for ts, t in zip(times, (atime, mtime)):
            if t in (UTIME_NOW, UTIME_OMIT):
                ts.tv_sec, ts.tv_nsec = 0, t
            else:
                ts.tv_sec, ts.tv_nsec = divmod(t, 10**9)
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), times, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno))


def outcome(fn, *args, **kw):
    try:
        return ("ok", normalize(fn(*args, **kw)))
    except OSError as e:
        return ("err", errname(e))


def time_class(ns: int):
    return ns if ns < FIXED_TIMES_END else "recent"


def normalize(value):
    """Plain data that compares across filesystems."""
    if isinstance(value, os.stat_result):
        return describe_stat(value)
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, os.DirEntry):
        return value.name
    return value


def describe_stat(st: os.stat_result) -> dict:
    out = {"type": stat.S_IFMT(st.st_mode), "mode": oct(stat.S_IMODE(st.st_mode)),
           "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid,
           "mtime": time_class(st.st_mtime_ns)}
    if not stat.S_ISDIR(st.st_mode):
        out["size"] = st.st_size  # a directory's size is its layout on disk
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        out["rdev"] = st.st_rdev
    return out


def _xattrs(path: str, st: os.stat_result) -> dict:
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return {}  # user.* exists on files and directories only
    return {name: os.getxattr(path, name, follow_symlinks=False)
            for name in sorted(os.listxattr(path, follow_symlinks=False))
            if name.startswith("user.")}


def describe_tree(root: str) -> dict:
    """Every entry below root: its attributes, content or target, user xattrs,
    its getdents listing (dots included) for directories, and hardlink groups."""
    out, by_ino = {}, {}
    root_st = os.lstat(root)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        entries = getdents(dirpath)
        dir_ino = os.lstat(dirpath).st_ino
        parent_ino = os.lstat(os.path.join(dirpath, "..")).st_ino
        listing = []
        for name, d_ino, d_type in entries:
            if name == b".":
                listing.append((".", d_ino == dir_ino, d_type))
            elif name == b"..":
                listing.append(("..", d_ino == parent_ino, d_type))
            else:
                child = os.lstat(os.path.join(dirpath, os.fsdecode(name)))
                listing.append((os.fsdecode(name), d_ino == child.st_ino, d_type))
        out[rel_dir + "/"] = {"listing": sorted(listing)}
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            entry = describe_stat(st)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    entry["content"] = f.read()
                by_ino.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            entry["xattrs"] = _xattrs(path, st)
            out[rel] = entry
    out["<root>"] = describe_stat(root_st) | {"xattrs": _xattrs(root, root_st)}
    out["<hardlink groups>"] = sorted(sorted(v) for v in by_ino.values() if len(v) > 1)
    return out


@contextmanager
def identity(uid: int, gid: int):
    """Act as uid:gid (no supplementary groups) until the block ends. The real uid
    stays root, so the effective ids can be switched back."""
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


class Probe:
    """What one case did on one filesystem: each step's label and outcome."""

    def __init__(self):
        self.steps: list[tuple[str, tuple]] = []

    def do(self, label: str, fn, *args, **kw):
        result = outcome(fn, *args, **kw)
        self.steps.append((label, result))
        return result

    def record(self, label: str, value) -> None:
        self.steps.append((label, ("ok", normalize(value))))

    def as_user(self, uid: int = USER, gid: int | None = None):
        return identity(uid, uid if gid is None else gid)


def run_case(case, root: str) -> dict:
    """Run case(probe) in a forked child whose cwd is root (entered as root, so
    that the unprivileged parts need no access to the folders above it), then
    describe the tree it left. Returns {"steps": [...], "tree": {...}}."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        status = 0
        try:
            os.close(read_end)
            os.chdir(root)
            os.umask(0o022)
            os.setgroups([])
            probe = Probe()
            try:
                case(probe)
            except Exception:
                probe.steps.append(("<case failed>", ("crash", traceback.format_exc())))
            result = {"steps": probe.steps, "tree": describe_tree(".")}
            with os.fdopen(write_end, "wb") as f:
                pickle.dump(result, f)
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            sys.stdout.flush()
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and data, f"the case's child process failed (status {status})"
    return pickle.loads(data)


def differences(oracle: dict, volume: dict) -> list[str]:
    """Human-readable differences between the oracle's run and the volume's."""
    out = []
    labels = [label for label, _ in oracle["steps"]]
    if labels != [label for label, _ in volume["steps"]]:
        out.append(f"different steps: {labels} vs {[label for label, _ in volume['steps']]}")
    for (label, a), (_, b) in zip(oracle["steps"], volume["steps"]):
        if a != b:
            out.append(f"{label}: ext4 {a!r}, fusevol {b!r}")
    out.extend(tree_differences(oracle["tree"], volume["tree"]))
    return out


def tree_differences(a: dict, b: dict) -> list[str]:
    out = []
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            out.append(f"tree {path}: ext4 {a.get(path)!r}, fusevol {b.get(path)!r}")
    return out
