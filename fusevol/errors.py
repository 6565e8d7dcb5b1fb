"""One error family for the whole project.

Each error knows the errno the filesystem answers with and the exit code the
CLI ends with; every edge maps it once (FUSE -> FUSEError(errno), plugin ->
{"Err": message}, CLI -> one line on stderr and the exit code).

An error says what is wrong, never what to type about it: the layers below
the edges do not know which edge a user stands at. What a user can do is
carried as data (`reason` and `details`), and each edge words its own advice
(cli/advice.py adds commands and flags, plugin/protocol.py what a Docker user
can do).
"""

import errno


class FusevolError(Exception):
    errno = errno.EIO
    exit_code = 1

    def __init__(self, message: str, *, reason: str | None = None, **details):
        super().__init__(message)
        self.reason = reason  # a short name an edge may advise on, e.g. "has_snapshots"
        self.details = details  # what the advice needs: the volume's name, ...


class InternalError(FusevolError):
    """A bug met by another process of fusevol (a worker), reported to the
    one that started it: its traceback is in that process's log."""

    exit_code = 70  # EX_SOFTWARE, as the CLI's own bugs


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


class InUse(Busy):
    """A volume held by something that a change must not pull the data from
    under: containers counted on it, a worker serving it, a mount at its
    place. `holder` says which ("containers", "worker", "mount"), `action`
    what was refused ("remove", "rollback", "receive", ...)."""

    def __init__(self, message: str, *, volume: str, holder: str, action: str, **details):
        super().__init__(message, reason="in_use", volume=volume, holder=holder, action=action,
                         **details)
        self.volume, self.holder, self.action = volume, holder, action


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
