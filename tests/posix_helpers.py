"""Helpers shared by the POSIX tests of mounted volumes (tests/test_posix_*.py)."""

import ctypes
import ctypes.util
import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import time

from conftest import run_cli

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

# An unprivileged user for permission tests (the kernel checks modes: default_permissions).
USER = 1000


def renameat2(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old, None, new)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def df(store_path: str) -> dict:
    return json.loads(run_cli(store_path, "df", "--json").stdout)


def wait_for(predicate, what: str, timeout: float = 30.0, step: float = 0.05):
    """Poll until predicate() is true (the kernel forgets inodes asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


def tree_state(root: str) -> dict:
    """Everything a copy must keep: per path its kind, mode, mtime, content hash or
    link target, and which paths share an inode."""
    state = {}
    inode_names: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            entry = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            else:
                entry["mtime_ns"] = st.st_mtime_ns
            if stat.S_ISREG(st.st_mode):
                entry["sha256"] = sha256(path)
                entry["size"] = st.st_size
                entry["nlink"] = st.st_nlink
                inode_names.setdefault(st.st_ino, []).append(rel)
            state[rel] = entry
    state["<hardlink groups>"] = sorted(sorted(v) for v in inode_names.values() if len(v) > 1)
    return state


def as_user(cwd: str, code: str, uid: int = USER, gid: int = USER) -> subprocess.CompletedProcess:
    """Run Python code as an unprivileged user with cwd set (by root) to cwd, so that
    directories above a mountpoint that the user cannot enter do not matter."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
         sys.executable, "-I", "-c", code],
        cwd=cwd, capture_output=True, text=True, timeout=60)


# Run by as_user: try each (name, callable-source) and print the errno name or "ok".
ERRNO_PROBE = """
import errno, json, os, sys
results = {}
for name, source in PROBES:
    try:
        exec(source)
        results[name] = "ok"
    except OSError as e:
        results[name] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(results))
"""


def user_errnos(cwd: str, probes: list[tuple[str, str]], **kw) -> dict:
    """For each (name, python statement) run as the user, 'ok' or the errno name."""
    code = f"PROBES = {probes!r}\n" + ERRNO_PROBE
    proc = as_user(cwd, code, **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


_SYS_getdents64 = 217  # x86_64
_libc.syscall.restype = ctypes.c_long


def getdents(path: str) -> list[tuple[bytes, int, int]]:
    """(name, d_ino, d_type) of every entry getdents64 returns, `.` and `..` included,
    in the order the filesystem gives them (os.listdir drops the dots)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out = []
        buf = ctypes.create_string_buffer(4096)  # small: long listings take several calls
        while True:
            n = _libc.syscall(ctypes.c_long(_SYS_getdents64), ctypes.c_long(fd), buf,
                              ctypes.c_long(len(buf)))
            if n < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
            if n == 0:
                return out
            raw, pos = buf.raw[:n], 0
            while pos < n:
                d_ino, _off, reclen, d_type = struct.unpack_from("<QqHB", raw, pos)
                name = raw[pos + 19: pos + reclen].split(b"\0", 1)[0]
                out.append((name, d_ino, d_type))
                pos += reclen
    finally:
        os.close(fd)
