"""One error family for the whole project.

Each error knows the errno the filesystem answers with and the exit code the
CLI ends with; every edge maps it once (FUSE -> FUSEError(errno), plugin ->
{"Err": str(error)}, CLI -> one line on stderr and the exit code).
"""

import errno


class FusevolError(Exception):
    errno = errno.EIO
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)


class NotFound(FusevolError):
    errno = errno.ENOENT
    exit_code = 2


class AlreadyExists(FusevolError):
    errno = errno.EEXIST
    exit_code = 3


class InvalidArgument(FusevolError):
    errno = errno.EINVAL
    exit_code = 4


class Busy(FusevolError):
    errno = errno.EBUSY
    exit_code = 5


class NoSpace(FusevolError):
    errno = errno.ENOSPC
    exit_code = 6


class ReadOnly(FusevolError):
    errno = errno.EROFS
    exit_code = 7


class StoreDamaged(FusevolError):
    """The store holds something that does not check out (bad hash, missing reference)."""

    errno = errno.EIO
    exit_code = 8


class FsError(FusevolError):
    """A POSIX error from a filesystem operation, carrying its own errno."""

    def __init__(self, err: int, message: str = ""):
        super().__init__(message or errno.errorcode.get(err, str(err)))
        self.errno = err


class BadArchive(FusevolError):
    """A tar archive that cannot be read to its end (truncated, damaged, not a tar)."""

    errno = errno.EIO
    exit_code = 9


class StreamDamaged(FusevolError):
    """A send stream that is truncated, altered or does not fit the receiving store."""

    errno = errno.EIO
    exit_code = 9


class RemoteError(FusevolError):
    """A remote (S3-compatible object storage) that cannot be reached, refuses
    the credentials, lacks its bucket or fails a request."""

    errno = errno.EIO
    exit_code = 10


class RemoteDamaged(FusevolError):
    """An object in a remote's bucket that does not match its hash, or is missing."""

    errno = errno.EIO
    exit_code = 8
