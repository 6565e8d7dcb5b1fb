"""Run probes as a process that sees one directory as its whole filesystem,
the way a container sees a volume: its own mount and pid namespaces, the
directory made the root by pivot_root (the old root detached, so no chroot
escape leads back), /proc of its own pid namespace mounted if the directory
has a `proc` folder, Docker's default capabilities only, and optionally
another uid. Or, with --no-jail, only the uid change.

    python jail.py [--root DIR | --no-jail] [--uid UID]  < probes.json  > results.json

Probes are [kind, args...]; each result is a value or the name of the errno
the probe failed with:
    ["read", path]            first 200 bytes, decoded (latin-1)
    ["listdir", path]         sorted names
    ["stat", path]            [st_dev, st_ino]
    ["open_dotdot", path, n]  names in the directory `..` n times above an fd
    ["proc_fd_dotdot", path, n]  the same through /proc/self/fd/FD/../..
    ["mknod_read", path, dev] create a block device node and read from it
    ["chroot_escape", probe]  the classic mkdir+chroot+chdir(..) escape, then
                              whether `probe` exists
    ["connect", path]         connect to a unix socket
    ["find", root, tokens]    walk root (following symlinks, leaving out /proc),
                              reading every file: which tokens are in which paths
"""

import ctypes
import errno
import json
import os
import socket
import stat
import sys

CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000
MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x4000, 1 << 18, 2, 4, 8
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155  # x86_64
PR_CAPBSET_DROP = 24
# Docker's default capabilities (moby's oci/caps/defaults.go).
DOCKER_CAPS = {0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31}  # CHOWN DAC_OVERRIDE FOWNER
# FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP
LAST_CAP = 40

libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags) -> None:
    _check(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                      ctypes.c_ulong(flags), None), f"mount {target}")


def _enter(root: str) -> None:
    """Make `root` this process's whole filesystem (run as pid 1 of a new pid namespace)."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    os.chdir(root)
    _check(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    if os.path.isdir("/proc"):
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _keep_caps(keep: set[int]) -> None:
    for cap in range(LAST_CAP + 1):
        if cap not in keep:
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the kernel's last: fine
    mask = sum(1 << c for c in keep)
    data = (_CapData * 2)((mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0), (mask >> 32, mask >> 32, 0))
    _check(libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), data), "capset")


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno))


def probe(kind: str, *args):
    if kind == "read":
        with open(args[0], "rb") as f:
            return f.read(200).decode("latin-1")
    if kind == "listdir":
        return sorted(os.listdir(args[0]))
    if kind == "stat":
        st = os.stat(args[0])
        return [st.st_dev, st.st_ino]
    if kind == "open_dotdot":
        fd = os.open(args[0], os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(args[1]):
                up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = up
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)
    if kind == "proc_fd_dotdot":
        fd = os.open(args[0], os.O_RDONLY | os.O_DIRECTORY)
        try:
            return sorted(os.listdir(f"/proc/self/fd/{fd}" + "/.." * args[1]))
        finally:
            os.close(fd)
    if kind == "mknod_read":
        os.mknod(args[0], stat.S_IFBLK | 0o600, args[1])
        try:
            with open(args[0], "rb") as f:
                return f.read(16).hex()
        finally:
            os.unlink(args[0])
    if kind == "chroot_escape":
        os.makedirs("/.escape", exist_ok=True)
        os.chroot("/.escape")
        for _ in range(64):
            os.chdir("..")
        os.chroot(".")
        return os.path.exists(args[0])
    if kind == "connect":
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(args[0])
        return "connected"
    if kind == "find":
        return _find(args[0], args[1])
    raise ValueError(f"unknown probe {kind}")


def _find(root: str, tokens: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    seen = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(top)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        if top == "/proc":  # files there block, or are the kernel's; probed by name instead
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(top, name)
            try:
                with open(path, "rb") as f:
                    data = f.read(1 << 20)
            except OSError:
                continue
            for token in tokens:
                if token.encode() in data:
                    found.setdefault(token, []).append(path)
    return found


def run_probes(probes: list) -> list:
    results = []
    for p in probes:
        try:
            results.append(probe(*p))
        except OSError as e:
            results.append(_errname(e))
    return results


def main(argv: list[str]) -> None:
    root = None if "--no-jail" in argv else argv[argv.index("--root") + 1]
    uid = int(argv[argv.index("--uid") + 1]) if "--uid" in argv else None
    probes = json.load(sys.stdin)
    if root is not None:
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID), "unshare")
        pid = os.fork()  # the child is pid 1 of the new pid namespace
        if pid:
            _, status = os.waitpid(pid, 0)
            sys.exit(os.waitstatus_to_exitcode(status))
        _enter(root)
        _keep_caps(DOCKER_CAPS)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    json.dump(run_probes(probes), sys.stdout)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
