"""A small HTTP/1.1 server on trio streams, with h11 doing all the parsing.

It knows nothing of what it serves: an application gets (method, target, body)
and returns a ``Reply``; errors of the transport itself (malformed HTTP, a body
over the limit) are answered through the application's ``refuse`` so that every
reply speaks its format. Bodies are bounded: a request announcing more than
``max_body`` bytes is refused before its body is read, and one that sends more
is cut off once it passes the limit, so memory stays bounded.
"""

import http
import logging
from dataclasses import dataclass
import h11
import trio

log = logging.getLogger(__name__)

RECEIVE_SIZE = 64 << 10
MAX_HEADER_BYTES = 64 << 10
_KNOWN = {s.value for s in http.HTTPStatus}


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


class App:
    """What the server calls. Subclass and override."""

    async def handle(self, method: str, target: str, body: bytes) -> Reply:
        raise NotImplementedError

    def refuse(self, status: int, message: str) -> Reply:
        return Reply(status, message.encode(), "text/plain")


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def serve_connection(stream: trio.abc.Stream, app: App, max_body: int) -> None:
    """Serve requests on one connection until the client closes it (keep-alive)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    try:
        while True:
            try:
                request = await _next(stream, conn)
                if request is None:
                    return
                body = await _read_body(stream, conn, request, max_body)
            except _Refused as e:
                await _send(stream, conn, app.refuse(e.status, str(e)), close=True)
                return
            except h11.RemoteProtocolError as e:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _send(stream, conn, app.refuse(e.error_status_hint,
                                                         f"malformed HTTP request: {e}"), close=True)
                return
            reply = await app.handle(request.method.decode("ascii", "replace"),
                                     request.target.decode("ascii", "replace"), body)
            await _send(stream, conn, reply)
            if conn.our_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        await trio.aclose_forcefully(stream)


async def _next(stream, conn: h11.Connection):
    """The next event from the client, reading as needed; None when the client is done."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_SIZE)
            conn.receive_data(data)  # b"" marks the end of the stream
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None
        return event


async def _read_body(stream, conn: h11.Connection, request: h11.Request, max_body: int) -> bytes:
    length = dict(request.headers).get(b"content-length")
    if length is not None and int(length) > max_body:
        raise _Refused(413, f"request body of {int(length)} bytes is over the limit of {max_body} bytes")
    body = bytearray()
    while True:
        event = await _next(stream, conn)
        if event is None:
            raise trio.BrokenResourceError("client closed mid-request")
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise _Refused(413, f"request body is over the limit of {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)


async def _send(stream, conn: h11.Connection, reply: Reply, close: bool = False) -> None:
    headers = [("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body)))]
    if close:
        headers.append(("Connection", "close"))
    reason = http.HTTPStatus(reply.status).phrase if reply.status in _KNOWN else ""
    data = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=reason))
    data += conn.send(h11.Data(data=reply.body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


async def serve_listener(listener: trio.abc.Listener, app: App, max_body: int,
                         nursery: trio.Nursery) -> None:
    """Accept connections forever, each served in its own task of `nursery`."""
    async with listener:
        while True:
            stream = await listener.accept()
            nursery.start_soon(serve_connection, stream, app, max_body)

