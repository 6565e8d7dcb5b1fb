"""The driver daemon: the plugin socket, the protocol handlers and the workers, wired.

All state lives in the store and the worker registry, so it is loaded before
the socket answers anything (dockerd forgets volumes a driver does not know
when it starts). Handlers run in threads, so a slow mount never stalls `docker
volume ls`; calls that start, stop or delete are serialised per family by a
trio.Lock. Workers outlive the daemon: stopping it (or killing it) leaves
running containers served, and the next daemon adopts the workers.
"""

import errno
import json
import logging
import os
import signal
import socket
import stat

import trio

from ..errors import Busy, FusevolError, NotFound
from . import http
from .protocol import ENDPOINTS, SERIALISED, Driver, decode_request, error_reply
from ..fs.forkserver import ForkServer
from .supervisor import IDLE_WORKER_TIME, WORKER_START_TIMEOUT, Supervisor

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/docker/plugins/fusevol.sock"
MAX_BODY = 1 << 20           # Docker's requests are a few hundred bytes
# seconds between checks for workers that died
RECONCILE_INTERVAL = float(os.environ.get("FUSEVOL_RECONCILE_INTERVAL", "10"))
IDLE_CHECK_INTERVAL = 0.5    # ...for idle workers whose time is up
_QUIET = {"get", "list", "path", "capabilities", "activate"}  # called often by dockerd


class PluginApp(http.App):
    def __init__(self, driver: Driver):
        self.driver = driver
        self._locks: dict[str, trio.Lock] = {}

    def lock(self, family: str) -> trio.Lock:
        return self._locks.setdefault(family, trio.Lock())

    async def handle(self, method: str, target: str, body: bytes) -> http.Reply:
        name = ENDPOINTS.get(target)
        if name is None:
            return self.refuse(404, f"unknown endpoint {target}; this is a VolumeDriver plugin")
        request = None
        started = trio.current_time()
        try:
            request = decode_request(body)
            reply = await self._call(name, request)
            status = 200
        except Exception as e:  # every failure becomes {"Err": ...}; nothing escapes
            reply, status = error_reply(e), 500
            # dockerd asks Get before every Create: a volume not found there is no news.
            expected = name == "get" and isinstance(e, NotFound)
            log.log(logging.DEBUG if expected else logging.WARNING, "%s %s failed: %s (%.1f ms)",
                    name, _subject(request, body), reply["Err"], _ms_since(started))
        else:
            level = logging.DEBUG if name in _QUIET else logging.INFO
            log.log(level, "%s %s -> %s (%.1f ms)", name, request.get("Name", ""), reply,
                    _ms_since(started))
        return http.Reply(status, json.dumps(reply).encode())

    async def _call(self, name: str, request: dict) -> dict:
        fn = getattr(self.driver, name)
        family = None
        if name in SERIALISED:  # the others need no lock: no thread hop to find one
            family = await trio.to_thread.run_sync(self.driver.lock_key, name, request)
        if family is None:
            return await trio.to_thread.run_sync(fn, request)
        async with self.lock(family):
            return await trio.to_thread.run_sync(fn, request)

    def refuse(self, status: int, message: str) -> http.Reply:
        return http.Reply(status, json.dumps({"Err": message}).encode())

    async def reconcile_all(self) -> None:
        sup = self.driver.sup
        for family in await trio.to_thread.run_sync(sup.families):
            async with self.lock(family):
                try:
                    await trio.to_thread.run_sync(sup.reconcile, family)
                except FusevolError as e:
                    log.warning("restoring the mounts of %s: %s", family, e)
                except Exception:  # keep serving; try again next round
                    log.exception("restoring the mounts of %s", family)

    async def stop_idle(self, force: bool = False) -> None:
        """Stop the workers kept idle whose time is up (all of them with `force`)."""
        sup = self.driver.sup
        for family in sup.idle_families() if force else sup.idle_due():
            async with self.lock(family):
                try:
                    await trio.to_thread.run_sync(sup.stop_idle, family, force)
                except Exception:  # keep serving; try again next round
                    log.exception("stopping the idle worker of %s", family)


def _ms_since(started: float) -> float:
    """How long a call took, for the log: what dockerd waited for each answer."""
    return (trio.current_time() - started) * 1000


def _subject(request: dict | None, body: bytes) -> str:
    """What a failed call was about, on one line: the volume's name, or the start of
    a body that did not decode (as a repr: no newline or control character of it
    reaches the log)."""
    if request is not None and isinstance(request.get("Name"), str):
        return repr(request["Name"]) if not request["Name"].isprintable() else request["Name"]
    return repr(body[:200])


def bind_socket(path: str) -> socket.socket:
    """A root-only unix socket at `path`; a stale one left by a killed daemon is replaced."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FusevolError(f"{path} exists and is not a socket; remove it or choose another --socket")
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            raise Busy(f"another daemon already serves {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise FusevolError(f"cannot listen on {path}: {e.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    # dockerd connects without waiting: a full backlog makes its call fail at once (EAGAIN).
    sock.listen(socket.SOMAXCONN)
    return sock


def serve(store_path: str, socket_path: str = DEFAULT_SOCKET,
          worker_start_timeout: float = WORKER_START_TIMEOUT,
          metrics_address: str | None = None, idle_worker_time: float = IDLE_WORKER_TIME) -> None:
    """Serve the VolumeDriver protocol on `socket_path` until SIGTERM or SIGINT,
    and Prometheus metrics on `metrics_address` if given (plugin/metrics.py). A worker
    no container uses any more is kept `idle_worker_time` seconds for the next Mount."""
    metrics_app = None
    if metrics_address:
        from . import metrics

        metrics.parse_address(metrics_address)  # a bad address fails before anything starts
    forkserver = None
    if os.environ.get("FUSEVOL_FORKSERVER", "1") != "0":
        forkserver = ForkServer()
        forkserver.start()  # it imports while the daemon opens the store
    # Opens the store: state is loaded now.
    driver = Driver(Supervisor(store_path, worker_start_timeout, forkserver, idle_worker_time))
    if metrics_address:
        metrics_app = metrics.MetricsApp(driver.sup)
    sock = bind_socket(socket_path)
    ident = os.stat(socket_path).st_ino
    log.info("serving store %s on %s", driver.sup.store_path, socket_path)
    try:
        trio.run(_main, PluginApp(driver), sock, metrics_address, metrics_app)
    finally:
        try:
            if os.stat(socket_path).st_ino == ident:
                os.unlink(socket_path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        if forkserver is not None:
            forkserver.close()
        log.info("stopped; workers keep serving mounted volumes")


async def _main(app: PluginApp, sock: socket.socket, metrics_address: str | None,
                metrics_app) -> None:
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_on_signal, nursery.cancel_scope)
        nursery.start_soon(http.serve_listener, listener, app, MAX_BODY, nursery)
        if metrics_app is not None:
            from .metrics import serve_metrics

            await serve_metrics(metrics_address, metrics_app, nursery, bind_socket)
        nursery.start_soon(_reconcile_forever, app)
        nursery.start_soon(_stop_idle_forever, app)
    # Workers no container uses go with the daemon (those in use keep serving).
    with trio.CancelScope(shield=True):
        await app.stop_idle(force=True)


async def _reconcile_forever(app: PluginApp) -> None:
    # The socket already answers: restoring mounts must not delay dockerd's calls.
    while True:
        await app.reconcile_all()
        await trio.sleep(RECONCILE_INTERVAL)


async def _stop_idle_forever(app: PluginApp) -> None:
    every = min(IDLE_CHECK_INTERVAL, app.driver.sup.idle_time or IDLE_CHECK_INTERVAL)
    while True:
        await trio.sleep(every)
        await app.stop_idle()


async def _cancel_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal %d: stopping", signum)
            scope.cancel()
            return
