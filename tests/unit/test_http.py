"""The plugin's HTTP layer over in-memory streams (trio.testing.memory_stream_pair):
the daemon's app on a temporary store, fed good requests, malformed ones and
big bodies. Every reply is JSON with a readable Err, never a traceback."""

import json

import h11
import pytest
import trio
import trio.testing

from fusevol.errors import InvalidArgument, NotFound
from fusevol.plugin import http
from fusevol.plugin.daemon import PluginApp
from fusevol.plugin.protocol import Driver, decode_request, error_reply
from fusevol.plugin.supervisor import Supervisor

MAX_BODY = 4096


@pytest.fixture
def app(store) -> PluginApp:
    return PluginApp(Driver(Supervisor(store.path)))


class Client:
    """One connection to serve_connection, read back with h11."""

    def __init__(self, stream):
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, target: str, body: bytes | dict | None = None, headers=()) -> None:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        body = body or b""
        hdrs = [("Host", "plugin"), ("Content-Length", str(len(body))), *headers]
        data = self.conn.send(h11.Request(method="POST", target=target, headers=hdrs))
        data += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        await self.send_raw(data)

    async def reply(self) -> tuple[int, dict, dict]:
        """(status, headers, JSON body) of the next reply."""
        response, body = None, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                with trio.fail_after(5):  # a server that never answers fails, not hangs
                    self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                pass  # the server closes: no next cycle
        headers = {k.decode().lower(): v.decode() for k, v in response.headers}
        assert headers["content-type"] == "application/json", body
        return response.status_code, headers, json.loads(body)

    async def call(self, target: str, body=None) -> tuple[int, dict]:
        await self.request(target, body)
        status, _, reply = await self.reply()
        return status, reply

    async def closed(self) -> bool:
        """Whether the server closed the connection (after its last reply)."""
        with trio.fail_after(5):
            return await self.stream.receive_some(1) == b""


@pytest.fixture
async def client(app, nursery):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(http.serve_connection, server_stream, app, MAX_BODY)
    return Client(client_stream)


def readable(err: str) -> bool:
    return bool(err) and "Traceback" not in err and len(err) < 2000


async def test_a_docker_session_on_one_connection(client):
    assert await client.call("/Plugin.Activate") == (200, {"Implements": ["VolumeDriver"]})
    assert await client.call("/VolumeDriver.Capabilities", {}) == (
        200, {"Capabilities": {"Scope": "local"}})
    assert await client.call("/VolumeDriver.Create", {"Name": "data", "Opts": {"size": "1G"}}) == (200, {})
    status, reply = await client.call("/VolumeDriver.Get", {"Name": "data"})
    assert status == 200 and reply["Volume"]["Name"] == "data"
    assert reply["Volume"]["Status"]["quota_bytes"] == 1 << 30
    status, reply = await client.call("/VolumeDriver.List", {})
    assert [v["Name"] for v in reply["Volumes"]] == ["data"]
    assert await client.call("/VolumeDriver.Path", {"Name": "data"}) == (200, {})  # not mounted
    assert await client.call("/VolumeDriver.Remove", {"Name": "data"}) == (200, {})
    assert (await client.call("/VolumeDriver.List", {}))[1] == {"Volumes": []}


@pytest.mark.parametrize("target, body, words", [
    ("/VolumeDriver.Get", {"Name": "nope"}, "no such volume: nope"),
    ("/VolumeDriver.Create", {}, "missing volume Name"),
    ("/VolumeDriver.Create", {"Name": "a b"}, "invalid volume name"),
    ("/VolumeDriver.Create", {"Name": "v1", "Opts": {"colour": "red"}}, "unknown option colour"),
    ("/VolumeDriver.Create", {"Name": "v1", "Opts": ["size"]}, "options must be a map"),
    ("/VolumeDriver.Mount", {"Name": "nope", "ID": "x"}, "no such volume"),
    ("/VolumeDriver.Create", b"{not json", "request body is not valid JSON"),
    ("/VolumeDriver.Create", b"[1, 2]", "request body must be a JSON object"),
    ("/VolumeDriver.Create", "é".encode("latin-1"), "not valid JSON"),
    ("/Nope", {}, "unknown endpoint /Nope"),
])
async def test_bad_requests_get_a_readable_err(client, target, body, words):
    status, reply = await client.call(target, body)
    assert status in (404, 500)
    assert words in reply["Err"] and readable(reply["Err"])
    # The connection serves on.
    assert await client.call("/Plugin.Activate") == (200, {"Implements": ["VolumeDriver"]})


async def test_deep_json_within_the_limit_is_refused_readably(store):
    app = PluginApp(Driver(Supervisor(store.path)))
    client_stream, server_stream = trio.testing.memory_stream_pair()
    body = b"[" * 200000 + b"]" * 200000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(http.serve_connection, server_stream, app, len(body))
        client = Client(client_stream)
        status, reply = await client.call("/VolumeDriver.Create", body)
        assert status == 500 and "nested too deeply" in reply["Err"]
        await client_stream.aclose()


async def test_a_body_over_the_limit_is_refused_before_it_is_read(client):
    await client.send_raw(b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 1000000000\r\n\r\n")
    status, headers, reply = await client.reply()
    assert status == 413 and headers["connection"] == "close"
    assert "1000000000 bytes is over the limit of 4096 bytes" in reply["Err"]
    assert await client.closed()


async def test_a_chunked_body_is_cut_off_once_over_the_limit(client):
    await client.send_raw(b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        await client.send_raw(b"800\r\n" + b"x" * 0x800 + b"\r\n")  # 2 KiB each, never ending
    status, _, reply = await client.reply()
    assert status == 413 and "over the limit of 4096 bytes" in reply["Err"]
    assert await client.closed()


async def test_a_body_just_under_the_limit_is_served(client):
    opts = {"size": "1G", "compression": "none"}
    body = {"Name": "big", "Opts": opts, "Padding": ""}
    body["Padding"] = "p" * (MAX_BODY - len(json.dumps(body)))
    raw = json.dumps(body).encode()
    assert len(raw) == MAX_BODY
    assert await client.call("/VolumeDriver.Create", raw) == (200, {})


@pytest.mark.parametrize("raw, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nX-Long: " + b"h" * (200 << 10) + b"\r\n\r\n", 431),
    (b"POST /x HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 needs a Host
    (b"POST /x HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400),
])
async def test_malformed_http_gets_a_readable_err_and_a_close(client, raw, status):
    await client.send_raw(raw)
    got, headers, reply = await client.reply()
    assert got == status and headers["connection"] == "close"
    assert reply["Err"].startswith("malformed HTTP request") and readable(reply["Err"])
    assert await client.closed()


async def test_a_client_that_leaves_mid_request_ends_the_connection_quietly(app):
    client_stream, server_stream = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(http.serve_connection, server_stream, app, MAX_BODY)
            await client_stream.send_all(b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\n"
                                         b"Content-Length: 10\r\n\r\nabc")
            await client_stream.aclose()


def test_decode_request_and_error_reply(caplog):
    assert decode_request(b"") == {} and decode_request(b"  \n") == {}
    assert decode_request(b'{"Name": "v"}') == {"Name": "v"}
    with pytest.raises(InvalidArgument):
        decode_request(b'"just a string"')
    assert error_reply(NotFound("no such volume: v")) == {"Err": "no such volume: v"}
    reply = error_reply(KeyError("Name"))  # a bug: named, logged, still one line
    assert reply == {"Err": "internal error: KeyError: 'Name'"}
    assert "unexpected error" in caplog.text
