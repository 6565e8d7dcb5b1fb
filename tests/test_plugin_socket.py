"""`fusevol serve` on a real unix socket, fed what dockerd sends and what it never should."""

import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

from plugin_daemon import PluginDaemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    base = tmp_path_factory.mktemp("plugin")
    d = PluginDaemon(str(base / "store"), str(base / "run" / "fv-test.sock"), str(base / "serve.log"))
    d.start()
    yield d
    d.cleanup()


def still_serving(daemon: PluginDaemon) -> bool:
    status, reply = daemon.call("/VolumeDriver.List", {})
    return status == 200 and "Volumes" in reply


def raw_exchange(path: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_socket_is_root_only(daemon):
    st = os.stat(daemon.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(daemon.socket)).st_mode) == 0o700


def test_activate_and_capabilities(daemon):
    assert daemon.call("/Plugin.Activate") == (200, {"Implements": ["VolumeDriver"]})
    assert daemon.call("/VolumeDriver.Capabilities", {}) == (200, {"Capabilities": {"Scope": "local"}})


def test_lifecycle_over_the_socket(daemon):
    assert daemon.call("/VolumeDriver.Create", {"Name": "sockvol", "Opts": None}) == (200, {})
    status, reply = daemon.call("/VolumeDriver.Get", {"Name": "sockvol"})
    assert status == 200 and reply["Volume"]["CreatedAt"] and "Status" in reply["Volume"]
    assert "sockvol" in [v["Name"] for v in daemon.call("/VolumeDriver.List", {})[1]["Volumes"]]
    assert daemon.call("/VolumeDriver.Remove", {"Name": "sockvol"}) == (200, {})
    status, reply = daemon.call("/VolumeDriver.Get", {"Name": "sockvol"})
    assert status == 500 and reply == {"Err": "no such volume: sockvol"}


@pytest.mark.parametrize("endpoint, body, message", [
    ("/VolumeDriver.Create", b"{not json", "request body is not valid JSON"),
    ("/VolumeDriver.Create", b'["Name"]', "request body must be a JSON object"),
    ("/VolumeDriver.Create", {"Opts": {}}, "missing volume Name"),
    ("/VolumeDriver.Mount", {"Name": "x1", "ID": "i1"}, "no such volume: x1"),
    ("/VolumeDriver.Mount", {"Name": "x1"}, "ID must be a non-empty string"),
    ("/VolumeDriver.Create", {"Name": "a/b"}, "invalid volume name 'a/b'"),
    ("/VolumeDriver.Create", {"Name": ".."}, "invalid volume name '..'"),
    ("/VolumeDriver.Get", {"Name": "../../etc"}, "invalid volume name '../../etc'"),
    ("/VolumeDriver.Create", {"Name": "v1", "Opts": {"colour": "red"}}, "unknown option colour: allowed are"),
    ("/VolumeDriver.Create", {"Name": "v1", "Opts": {"size": "-5"}}, "invalid size '-5'"),
    ("/VolumeDriver.Nope", {}, "unknown endpoint /VolumeDriver.Nope"),
])
def test_bad_requests_get_a_clear_err(daemon, endpoint, body, message):
    status, reply = daemon.call(endpoint, body)
    assert status in (404, 500)
    assert list(reply) == ["Err"] and message in reply["Err"]
    assert still_serving(daemon)


def test_malformed_http(daemon):
    reply = raw_exchange(daemon.socket, b"NOT HTTP AT ALL\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") and b'"Err": "malformed HTTP request' in reply
    cut = raw_exchange(daemon.socket, b"POST /VolumeDriver.List HTTP/1.1\r\nHost: x\r\nContent-Le")
    assert cut.startswith(b"HTTP/1.1 400") and b'"Err": "malformed HTTP request' in cut
    assert still_serving(daemon)


def test_keep_alive(daemon):
    request = b"POST /VolumeDriver.List HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    reply = raw_exchange(daemon.socket, request * 3)
    assert reply.count(b"HTTP/1.1 200 OK") == 3


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def test_huge_body_is_refused_early(daemon):
    size = 100 << 20
    # Announced: refused before a byte of the body is read.
    head = (b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n" % size)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket)
        s.sendall(head)
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413")
    assert b'{"Err": "request body of 104857600 bytes is over the limit' in reply

    # Streamed without a length: cut off once past the limit, while the client still sends.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.socket)
        s.sendall(b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = [0]

        def pour():
            chunk = b"%x\r\n%s\r\n" % (1 << 16, b"{" * (1 << 16))
            try:
                while sent[0] < size:
                    s.sendall(chunk)
                    sent[0] += 1 << 16
            except OSError:
                pass

        pourer = threading.Thread(target=pour)
        pourer.start()
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass  # the daemon closed with our unread body queued: the reply came first
        pourer.join()
    assert reply.startswith(b"HTTP/1.1 413") and b"over the limit" in reply
    assert sent[0] < size  # the daemon hung up long before the end
    assert _peak_rss_kib(daemon.proc.pid) < 100 * 1024
    assert still_serving(daemon)


def test_second_daemon_on_the_same_socket_is_refused(daemon, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fusevol", "serve", "--store", str(tmp_path / "s"),
                           "--socket", daemon.socket], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert f"another daemon already serves {daemon.socket}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert still_serving(daemon)


def test_volume_create_as_dockerd_does_logs_no_warning(daemon):
    """dockerd asks Get (which fails) before Create: no WARNING, one line per event."""
    before = len(daemon.log().splitlines())
    status, _ = daemon.call("/VolumeDriver.Get", b'{\n  "Name": "logged"\n}')
    assert status == 500
    assert daemon.call("/VolumeDriver.Create", {"Name": "logged", "Opts": None})[0] == 200
    status, _ = daemon.call("/VolumeDriver.Remove", b'{"Name": "nosuch",\n "x": 1}')
    assert status == 500
    new = daemon.log().splitlines()[before:]
    assert not [line for line in new if " WARNING " in line and "logged" in line]
    # The failure worth a warning is one line, naming the volume, not the raw body.
    warnings = [line for line in new if " WARNING " in line]
    assert len(warnings) == 1 and "remove nosuch failed: no such volume: nosuch" in warnings[0]
    assert all(line[:4].isdigit() for line in new)  # each line starts with its timestamp
    daemon.call("/VolumeDriver.Remove", {"Name": "logged"})
