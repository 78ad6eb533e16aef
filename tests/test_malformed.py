"""
A batch of malformed requests at both doors, as anyone on the internet can
send them: each gets an answer (a status and a JSON message, or a JSON-RPC
error), the devices carry on, and dashd's log holds no traceback and does
not grow with each of them.
"""

from __future__ import annotations

import json
import socket
import time

import pytest_twisted
from twisted.internet.threads import deferToThread

from support import Client, DashdProcess, connect_device, device_online, eventually

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


@pytest_twisted.ensureDeferred
async def test_a_batch_of_malformed_requests_at_both_doors_leaves_no_traceback(
        tmp_path):
    """Malformed requests at the REST door and at the device channel (bad
    paths, headers, bodies, handshakes and frames), then a device and a REST
    client that carry on, and a log without a traceback or a secret."""
    server = DashdProcess(str(tmp_path))
    await server.start_async()
    admin = Client(server, server.admin_key)
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    key = admin.key.encode()
    try:
        await device_online(admin, device_id)
        def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
            return (b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s"
                    b"Content-Length: %d\r\n\r\n%s" % (path, key, extra, len(body), body))

        device = b"/api/v2/devices/" + device_id.encode()
        rest = [
            b"GET /api/v2//devices HTTP/1.1\r\nHost: x\r\n\r\n",
            post(b"/api/v2/devices", b'{"name":['),
            post(b"/api/v2/devices", b"[[[[[[]]]]]]"),
            post(device, b"[" * 1500 + b"]" * 1500),
            post(device, b'{"shadow":{"state":{"desired":{"a":NaN}}}}'),
            post(device, b'{"shadow":{"state":{"reported":{"a":-1e400}}}}'),
            b"GET /api/v2/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Basic Zm9vOmJhcg==\r\n\r\n",
            b"GET /api/v2/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
            b"GET /api/v2/devices?access_token=%FF%FE HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET %s/rpc/%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
            % (device, b"M" * 500, key),
            post(device + b"/rpc/Sim.Echo?timeout=nan", b"{}"),
            post(device + b"/ota", b"xxxxx", b"Content-Type: multipart/form-data\r\n"),
            b"POST /api/v2/logs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" % key,
            b"GET /api/v2/devices HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"BREW /api/v2/devices HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /api/v2/devices HTTP/9.9\r\nHost: x\r\n\r\n",
            b"GET\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64 + b"\r\n\r\n",
            b"GET /api/v2/devices HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
            b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        handshakes = [
            b"GET /api/v2/rpc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
            b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
            b"\r\nAuthorization: Bearer %s\r\n\r\n" % token.encode()[:-2],
            b"GET /api/v2/rpc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
            b"\r\nSec-WebSocket-Version: 99\r\nAuthorization: Bearer junk\r\n\r\n",
            b"GET /api/v2/rpc?access_token=%FF HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n",
            b"GET /api/v2/notify HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
            b"\r\nAuthorization: Bearer %s\r\n\r\n" % token.encode(),
            b"POST /api/v2/rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        ]

        def send_all() -> list[bytes]:
            out = []
            for request in rest + handshakes:
                started = time.monotonic()
                out.append(exchange(server.port, request))
                assert time.monotonic() - started < 5, request[:100]
            return out

        answers = await deferToThread(send_all)
        for request, answer in zip(rest + handshakes, answers):
            assert answer.startswith(b"HTTP/1.1 4"), (request[:80], answer[:200])
        # Frames a device should never send.
        frames = ["[" * 3000 + "]" * 3000, '{"id": 1, "method": "Dash.Log", "params": NaN}',
                  '{"id": 2, "method": "Dash.Shadow.Update", "params": {"state": '
                  '{"reported": {"x": -1e400}}}}', "\x00\x01", '{"id": 3, "result": ' + "[" * 500,
                  '{"id": [], "method": "x"}', '{"jsonrpc": "2.0", "method": "' + "x" * 5000 + '"}']
        for frame in frames:
            sim.send_raw(frame)
        sim.send_raw(b"\xc3\x28", binary=True)
        reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, {"ok": 1})
        assert (reply.status, reply.body) == (200, {"ok": 1})
        assert (await admin.get("/api/v2/devices")).status == 200
    finally:
        await sim.stop()
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log[-5000:]
    assert not server.problems()
