"""Bind-mount a folder of a mounted volume elsewhere, resolving no path twice.

Whoever can write to a volume (any container given it) can replace one of its
folders by a symlink at any moment, so checking a path and then handing the
same path to mount(8) binds whatever the path names by then: possibly any
folder of the host. Here the folder is opened one component at a time below
an fd of the volume's root, refusing symlinks, ``..`` and other filesystems;
the mount is made from that fd (``/proc/self/fd/N`` leads the kernel straight
to the open file, with no lookup by name) and checked afterwards to show the
very directory the fd holds.
"""

import ctypes
import errno
import os
import stat

_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, what: str, path: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def open_folder(root: str, subpath: str) -> int:
    """An O_PATH fd of folder `subpath` below `root`, reached without following
    any symlink or leaving root's filesystem. OSError: ENOENT if a component is
    missing; ENOTDIR if one is a symlink or not a folder; EXDEV if one is another
    mount; EINVAL for an empty, ``.`` or ``..`` component."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dev = os.fstat(fd).st_dev
        for part in subpath.split("/"):
            if part in ("", ".", ".."):
                raise OSError(errno.EINVAL, f"invalid path component {part!r}", subpath)
            # O_NOFOLLOW with O_PATH would open a symlink itself; O_DIRECTORY refuses it.
            child = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC,
                            dir_fd=fd)
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, "not a folder", subpath)
            if st.st_dev != dev:
                raise OSError(errno.EXDEV, "another filesystem is mounted there", subpath)
        return fd
    except BaseException:
        os.close(fd)
        raise


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


# The new mount API (Linux 5.12): the same numbers on every architecture.
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOEXEC = 0x8
_AT_FDCWD = -100


def _bind_readonly(fd: int, target_b: bytes, target: str, noexec: bool) -> bool:
    """Attach a read-only copy of the folder at `target`, read-only before it is
    attached: a mount that lands in a shared subtree (a managed plugin's propagated
    mount) is copied to its peers with the flags it has then, and a later remount
    would make only this copy read-only. False if the kernel lacks the calls."""
    tree = _libc.syscall(_SYS_OPEN_TREE, fd, b"", _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_EMPTY_PATH)
    if tree < 0:
        if ctypes.get_errno() == errno.ENOSYS:
            return False
        _check(-1, "open_tree", target)
    try:
        attr = _MountAttr(attr_set=_MOUNT_ATTR_RDONLY | (_MOUNT_ATTR_NOEXEC if noexec else 0))
        _check(_libc.syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH, ctypes.byref(attr),
                             ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr", target)
        _check(_libc.syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, target_b,
                             _MOVE_MOUNT_F_EMPTY_PATH), "move_mount", target)
    finally:
        os.close(tree)
    return True


def bind_fd(fd: int, target: str, readonly: bool, noexec: bool = False) -> None:
    """Bind-mount the directory open as `fd` at `target` (optionally read-only,
    or noexec), then check that `target` shows that very directory; undo the
    mount if not. The bind keeps the nosuid, nodev and noexec of the mount the
    folder is on: a remount sets every flag anew, and one that named only
    read-only would give a view of a nosuid, nodev volume setuid and devices."""
    target_b = os.fsencode(target)
    # statvfs's ST_NOSUID, ST_NODEV and ST_NOEXEC are mount(2)'s MS_ flags.
    carried = os.fstatvfs(fd).f_flag & (_MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    if noexec:
        carried |= _MS_NOEXEC
    if not (readonly and _bind_readonly(fd, target_b, target, noexec)):
        _check(_libc.mount(f"/proc/self/fd/{fd}".encode(), target_b, None, _MS_BIND, None),
               "bind mount", target)
    try:
        if readonly or noexec:  # again, on the mount itself: also where the calls above are missing
            _check(_libc.mount(None, target_b, None,
                               _MS_REMOUNT | _MS_BIND | carried | (_MS_RDONLY if readonly else 0),
                               None), "remount", target)
        want, got = os.fstat(fd), os.stat(target)
        if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
            raise OSError(errno.EXDEV, "the mount does not show the folder it was made from",
                          target)
    except BaseException:
        _libc.umount2(target_b, _MNT_DETACH)
        raise
