"""A disk that can be made to fail: one image file served through FUSE, for a loop device.

This kernel has no device-mapper (no `error` or `flakey` target), so the
failing layer sits below the loop device instead: `disk.img` in this
filesystem passes reads and writes through to a real image file, until
`control` is written:

    ok            every request is served
    fail          every read, write and fsync of disk.img answers EIO
    fail-writes   writes and fsyncs answer EIO, reads are served

The file is opened for direct I/O, so every request of the loop device reaches
this process (no page cache in between that would hide or delay an error).

Run: python faulty_disk.py IMAGE MOUNTPOINT (serves until unmounted).
"""

import errno
import os
import stat
import sys

import pyfuse3
import trio

DISK_INO, CONTROL_INO = pyfuse3.ROOT_INODE + 1, pyfuse3.ROOT_INODE + 2
NAMES = {b"disk.img": DISK_INO, b"control": CONTROL_INO}
MODES = ("ok", "fail", "fail-writes")


class FaultyDisk(pyfuse3.Operations):
    def __init__(self, image: str):
        super().__init__()
        self.fd = os.open(image, os.O_RDWR)
        self.mode = "ok"
        self.failed = {"read": 0, "write": 0, "fsync": 0}  # requests refused, by kind

    def _fails(self, kind: str) -> bool:
        refused = self.mode == "fail" or (self.mode == "fail-writes" and kind != "read")
        if refused:
            self.failed[kind] += 1
        return refused

    def _control_text(self) -> bytes:
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.failed.items()))
        return f"{self.mode} {counts}\n".encode()

    async def getattr(self, inode, ctx=None):
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.entry_timeout = e.attr_timeout = 0
        if inode == pyfuse3.ROOT_INODE:
            e.st_mode, e.st_nlink = stat.S_IFDIR | 0o755, 2
        elif inode == DISK_INO:
            e.st_mode, e.st_nlink = stat.S_IFREG | 0o600, 1
            e.st_size = os.fstat(self.fd).st_size
        elif inode == CONTROL_INO:
            e.st_mode, e.st_nlink = stat.S_IFREG | 0o600, 1
            e.st_size = 4096
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        e.st_blksize = 4096
        return e

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name not in NAMES:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(NAMES[name])

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        for i, (name, ino) in enumerate(sorted(NAMES.items())):
            if i >= start_id and not pyfuse3.readdir_reply(token, name, await self.getattr(ino), i + 1):
                return

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh, off, size):
        if fh == CONTROL_INO:
            return self._control_text()[off:off + size]
        if self._fails("read"):
            raise pyfuse3.FUSEError(errno.EIO)
        return os.pread(self.fd, size, off)

    async def write(self, fh, off, buf):
        if fh == CONTROL_INO:
            mode = bytes(buf).decode().strip()
            if mode not in MODES:
                raise pyfuse3.FUSEError(errno.EINVAL)
            self.mode = mode
            return len(buf)
        if self._fails("write"):
            raise pyfuse3.FUSEError(errno.EIO)
        return os.pwrite(self.fd, buf, off)

    async def fsync(self, fh, datasync):
        if fh == DISK_INO:
            if self._fails("fsync"):
                raise pyfuse3.FUSEError(errno.EIO)
            os.fsync(self.fd)

    async def setattr(self, inode, attr, fields, fh, ctx):
        return await self.getattr(inode)  # the control file is "truncated" by echo >

    async def flush(self, fh):
        pass

    async def release(self, fh):
        pass


def main(image: str, mountpoint: str) -> None:
    pyfuse3.init(FaultyDisk(image), mountpoint, ["fsname=faultydisk", "allow_other"])
    try:
        print("ready", flush=True)
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
