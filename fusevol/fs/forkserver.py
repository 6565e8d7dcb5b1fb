"""Workers forked from a process that has imported them already.

A worker started as a new Python process spends most of its start importing
pyfuse3, trio and the store's libraries, on every first Mount of a volume.
The daemon keeps one forkserver instead: a child process that imports the
worker's code once, then forks a worker per request. The worker skips the
imports, and the pages of that code stay shared between all workers (the
garbage collector is kept off them with gc.freeze), so an idle worker costs
little memory of its own. What CPython copies all the same (it writes the
reference counts of the objects it uses) is alike in every worker; the
forkserver offers it to the kernel's page merging (pagemerge.py).

Before and between its first forks it lives a worker's life on a scratch
volume (rehearsal.py), so that the code workers run is specialised in its
pages, not in every worker's. The forkserver holds no store, no threads and
no FUSE session when it forks: each worker opens the store itself (LMDB
environments must not cross a fork). It leaves a worker its own session, its log as stdout and stderr, and
the ready pipe the daemon handed over; the worker reports on that pipe as
every worker does (worker.py, startup.py). Workers
outlive the forkserver and the daemon, as before.

Protocol, over a socketpair: the daemon sends one JSON request with the
ready pipe's write end attached (SCM_RIGHTS); the forkserver answers with
the worker's pid as one JSON line.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 16


class ForkServer:
    """The daemon's side: starts the forkserver and asks it for workers."""

    def __init__(self):
        self._lock = threading.Lock()  # one request at a time on the socket
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "fusevol.fs.forkserver", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours

    def spawn(self, request: dict, ready_fd: int) -> int:
        """Fork a worker for `request` (a WorkerRequest as a dict); return its pid."""
        with self._lock:
            for attempt in (1, 2):  # a forkserver that died is started again once
                if self._sock is None:
                    self.start()
                try:
                    socket.send_fds(self._sock, [json.dumps(request).encode()], [ready_fd])
                    answer = self._sock.recv(MAX_REQUEST)
                    if answer:
                        return json.loads(answer)["pid"]
                except OSError:
                    if attempt == 2:
                        raise
                log.warning("forkserver gone; starting it again")
                self.close()
            raise OSError("the forkserver does not answer")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        """Stop the forkserver (its workers keep serving)."""
        if self._sock is not None:
            self._sock.close()  # it exits at end of file
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


# -- the forkserver process -----------------------------------------------------

def main(fd: int) -> None:
    import gc
    import signal

    # Keep the collector from touching (and so copying) pages the workers share.
    gc.disable()
    from . import worker  # noqa: F401  (everything a worker imports)
    from . import heap, pagemerge, rehearsal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon's Ctrl-C is the daemon's
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    sock = socket.socket(fileno=fd)
    # What the workers inherit, offered to the kernel's page merging
    # (pagemerge.py); again after each fork and after the rehearsal, off the
    # Mount's path, for what the forkserver mapped meanwhile.
    merge = pagemerge.enabled()
    if merge:
        pagemerge.offer()
    # A worker's life rehearsed (rehearsal.py) one life at a time while no
    # request waits: a Mount that comes meanwhile waits one life at most.
    lives = rehearsal.lives_lived()
    while True:
        if lives is not None and not _request_waiting(sock):
            try:
                next(lives)
                continue
            except StopIteration:
                pass
            except Exception as e:  # only more memory: never a reason to fail
                log.warning("forkserver: rehearsing a worker's life failed: %s", e)
                lives.close()
            lives = None
            heap.give_back()  # the heap's pages the rehearsal and the imports freed
            heap.fill_free_blocks()  # a worker's own small objects kept off the shared pages
            if merge:
                pagemerge.offer()
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 1)
        except InterruptedError:
            continue
        if not data:
            if lives is not None:
                lives.close()  # its scratch folder goes
            return  # the daemon is gone
        if lives is not None:  # what the lives so far freed: not for the worker to copy
            heap.give_back()
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            sock.close()
            os._exit(_run_worker(json.loads(data), fds[0]))
        for extra in fds:
            os.close(extra)
        sock.send(json.dumps({"pid": pid}).encode())
        if merge:
            pagemerge.offer()


def _request_waiting(sock: socket.socket) -> bool:
    import select  # the forkserver's own (the daemon's side imports none)

    return bool(select.select([sock], [], [], 0)[0])


def _run_worker(request: dict, ready_fd: int) -> int:
    """In the forked child: a process of its own, then the worker's entry point."""
    import gc
    import signal

    from . import worker

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    gc.enable()
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    logf = os.open(request["log_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(logf, 1)
    os.dup2(logf, 2)
    os.close(logf)
    logging.basicConfig(level=logging.INFO, format=worker.LOG_FORMAT, force=True)
    return worker.run(worker.WorkerRequest.from_dict(request), ready_fd)


if __name__ == "__main__":
    main(int(sys.argv[1]))
