"""
A batch of malformed requests at both doors, as anyone on the internet can
send them: each gets an answer (a status and a JSON message, or a JSON-RPC
error), the devices carry on, and dashd's log holds no traceback and does
not grow with each of them.
"""

from __future__ import annotations

import json
import socket

import pytest_twisted
from twisted.internet.threads import deferToThread

from support import Client, DashdProcess, eventually

# Path shapes no route has: empty segments, dot segments, bytes that are
# not UTF-8 once percent-decoded, raw bytes, absolute and asterisk forms.
ODD_PATHS = [
    b"/api/v2//devices", b"/api/v2/devices//x", b"//api/v2/devices", b"//",
    b"/api/v2/devices/x//rpc/Sys.GetInfo", b"/ui//js/api.js", b"/api/v2/devices/",
    b"/./api/v2/devices", b"/api/v2/../v2/devices", b"/%2e%2e/", b"/api/v2/devices/%ZZ",
    b"/api/v2/devices/%C3%28", b"/api/v2/devices/x/rpc/%FF", b"/api/v2/devices/\xff",
    b"/api/v2/devices/%00", b"*", b"http://evil.example/api/v2/devices",
    b"/api/v2/devices?x=%ZZ&y", b"/ui/../../etc/passwd", b"/api/v2/firmware/%FF",
]
METHODS = [b"GET", b"POST", b"HEAD", b"DELETE", b"PUT", b"OPTIONS"]


def exchange(port: int, request: bytes) -> bytes:
    """Send C{request} (asking to close the connection after it, if it has a
    request line) and return all that comes back."""
    line, sep, rest = request.partition(b"\r\n")
    if sep and line.endswith(b"HTTP/1.1") and b"Connection:" not in request:
        request = line + b"\r\nConnection: close" + sep + rest
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(request)
        except OSError:
            pass  # refused before it was all sent: read the answer
        data = b""
        while not _complete(data):
            try:
                part = s.recv(65536)
            except OSError:
                break
            if not part:
                break
            data += part
        return data


def _complete(data: bytes) -> bool:
    """A whole response with a Content-Length is in (the connection may be
    kept open after it)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
        if name.strip().lower() == b"transfer-encoding":
            return body.endswith(b"0\r\n\r\n")
    return False


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        out = b""
        while body:
            size, _, rest = body.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out += rest[:n]
            body = rest[n + 2:]
        return out
    return body


@pytest_twisted.ensureDeferred
async def test_odd_paths_get_json_answers_without_tracebacks(server: DashdProcess,
                                                            admin: Client):
    """A "//" in a path raised an unhandled redirect: a 500 and a critical
    traceback per request, from anyone (500 requests, 326 KB of log)."""
    auth = b"Authorization: Bearer %s\r\n" % admin.key.encode()

    def batch() -> list[tuple[bytes, bytes, bytes]]:
        out = []
        for path in ODD_PATHS:
            for method in METHODS:
                response = exchange(server.port, b"%s %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: 0"
                                    b"\r\nConnection: close\r\n\r\n" % (method, path, auth))
                out.append((method, path, response))
        return out

    before = len(server.log())
    for method, path, response in await deferToThread(batch):
        assert response.startswith(b"HTTP/1.1 "), (method, path, response[:100])
        status = status_of(response)
        assert status < 500, (method, path, response[:300])
        if method != b"HEAD" and status >= 400:
            try:
                error = json.loads(body_of(response))["error"]
            except ValueError:
                raise AssertionError((method, path, response[:300]))
            assert error["code"] == status and error["message"], (method, path, error)
    answers = {path: status_of(r) for m, path, r in await deferToThread(batch) if m == b"GET"}
    assert answers[b"/api/v2//devices"] == 404
    assert answers[b"//api/v2/devices"] == 404
    assert answers[b"/api/v2/devices/%C3%28"] == 400
    await eventually(lambda: "Traceback" not in server.log()[before:])
    log = server.log()[before:]
    assert "Traceback" not in log and "critical" not in log
    # The access log has a line each (on in the tests); nothing else grows
    # with the requests.
    other = [line for line in log.splitlines() if "dashd.access" not in line
             and line.startswith("20") and "HTTP/1.1" not in line]
    assert len(other) < 10, other[:20]
