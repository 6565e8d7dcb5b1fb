"""A worker's entry point: serve one volume, already resolved, and say how it went.

Whoever starts a worker resolves what it serves first (the volume service,
store/volumes.mount_spec: views, read-only) and hands it a `WorkerRequest`;
the worker never looks a volume up by name. Three ways in, one way through
(`serve_reporting`):

- `fusevol mount` in the foreground: the CLI's process becomes the worker;
- `python -m fusevol.fs.worker READY_FD`, the request as JSON on stdin
  (registry.start_worker, when no forkserver is at hand);
- `run` in a process the daemon's forkserver forked (forkserver.py).

The worker reports on the ready pipe once (startup.py): ready, or the error
it met (class, errno, message, data), so the starter raises that very error
and the exit code is the same with and without `--background`. A worker run
as a process exits with that error's exit code, 70 for a bug (its traceback
in its log).
"""

import json
import logging
import os
import sys

from . import mount as mounting
from . import mountopts
from . import startup
from .startup import WorkerRequest  # noqa: F401  (what the entry point takes)

log = logging.getLogger("fusevol")

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
INTERNAL_ERROR = 70


class _FirstLines(logging.Formatter):
    """A record as a terminal shows it: no traceback, only where it went."""

    def __init__(self, where: str):
        super().__init__(LOG_FORMAT)
        self.where = where

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None
        try:
            text = super().format(record)
        finally:
            record.exc_info, record.exc_text = saved
        return f"{text} (traceback in {self.where})" if saved[0] else text


def log_in_foreground(log_path: str) -> None:
    """A worker serving in the foreground (`fusevol mount`) logs to the terminal
    as it runs, without a traceback (never one on a user's terminal), and to
    the volume's log in full, as a worker in the background does."""
    os.makedirs(os.path.dirname(log_path), mode=0o700, exist_ok=True)
    root = logging.getLogger()
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(_FirstLines(log_path))
    in_full = logging.FileHandler(log_path)
    in_full.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(in_full)


def serve_reporting(request: WorkerRequest, ready_fd: int | None = None) -> None:
    """Serve until unmounted. The outcome before serving goes to `ready_fd`
    (if any); a failure is then raised as the error the report names."""

    def report(message: dict) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            fd, ready_fd = ready_fd, None
            try:
                os.write(fd, startup.encode(message))
            finally:
                os.close(fd)

    def on_ready() -> None:
        report(startup.READY)
        log.info("volume %s serves at %s", request.spec.name,
                 os.path.abspath(request.mountpoint))

    try:
        mounting.serve(request.store, request.spec, request.mountpoint,
                       options=mountopts.parse(request.options), fsname=request.fsname,
                       on_ready=on_ready)
    except BaseException as e:
        report(startup.failure(e, request.mountpoint))  # no-op once ready was reported
        error = startup.as_error(e, request.mountpoint)
        if error is None or error is e:
            raise
        raise error from None


def run(request: WorkerRequest, ready_fd: int) -> int:
    """Serve as a process of its own (logging set up); its exit code."""
    try:
        serve_reporting(request, ready_fd)
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        error = startup.as_error(e, request.mountpoint)
        if error is None:
            log.exception("worker failed")
            return INTERNAL_ERROR
        log.error("%s", error)
        return error.exit_code
    finally:
        logging.shutdown()


def main(argv: list[str]) -> int:
    """`python -m fusevol.fs.worker READY_FD`, the request on stdin (registry.start_worker)."""
    ready_fd = int(argv[1])
    request = WorkerRequest.from_dict(json.loads(sys.stdin.buffer.read()))
    null = os.open(os.devnull, os.O_RDONLY)  # the request pipe is read: nothing more to come
    os.dup2(null, 0)
    os.close(null)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return run(request, ready_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
