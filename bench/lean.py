"""
Lean load-generator clients: a WebSocket device, a notification subscriber
and a keep-alive HTTP/1.1 client, each a bare Twisted protocol.

``dashd.simulator`` is the device the tests and the README use; it builds a
full Autobahn client per device, which is too heavy to put 10,000-20,000
devices in one load-generator process without the generator becoming the
bottleneck. These clients do only what the benchmark needs:

- the WebSocket handshake is written as one fixed request and the answer is
  only checked for status 101;
- frames to the server are masked with the all-zero key (RFC 6455 wants an
  unpredictable key from browsers; servers unmask whatever key they get, so
  the server's work is the same), so masking costs nothing here;
- server frames are parsed for opcode and length only; pings are answered;
  fragmented messages are not supported (neither server fragments).
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any, Callable

from twisted.internet.protocol import Protocol

# Any 16 bytes, base64: the server only echoes a hash of it.
_WS_KEY = "ZGFzaGQtYmVuY2gtMDAwMA=="
_ZERO_MASK = b"\0\0\0\0"

OP_TEXT = 1
OP_CLOSE = 8
OP_PING = 9
OP_PONG = 10


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked (all-zero key) client frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + _ZERO_MASK + payload


def ws_handshake(host: str, path: str, token: str | None, protocol: str | None) -> bytes:
    lines = [
        "GET %s HTTP/1.1" % path,
        "Host: %s" % host,
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: %s" % _WS_KEY,
        "Sec-WebSocket-Version: 13",
    ]
    if protocol:
        lines.append("Sec-WebSocket-Protocol: %s" % protocol)
    if token:
        lines.append("Authorization: Bearer %s" % token)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class WSClient(Protocol):
    """Handshake, frame parsing, pong; subclasses handle messages."""

    handshake: bytes = b""
    is_open = False
    status: int | None = None

    def connectionMade(self) -> None:
        self._buf = b""
        # No Nagle delay on the load generator's side of the measurement.
        self.transport.setTcpNoDelay(True)
        self.transport.write(self.handshake)

    def dataReceived(self, data: bytes) -> None:
        if not self.is_open:
            buf = self._buf + data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                if len(buf) > 65536:
                    self.transport.abortConnection()
                return
            try:
                self.status = int(buf[: buf.find(b"\r\n")].split(b" ", 2)[1])
            except (ValueError, IndexError):
                self.status = 0
            if self.status != 101:
                self._buf = b""
                self.refused(self.status)
                self.transport.loseConnection()
                return
            self.is_open = True
            self._buf = b""
            self.opened()
            data = buf[end + 4 :]
            if not data:
                return
        self.frames_received(data)

    def frames_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        n = len(buf)
        pos = 0
        while n - pos >= 2:
            b1 = buf[pos]
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > n:
                break
            opcode = b1 & 0x0F
            payload = buf[pos + head : end]
            pos = end
            if opcode == OP_TEXT or opcode == 2 or opcode == 0:
                self.message(payload)
            elif opcode == OP_PING:
                self.transport.write(ws_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                self.transport.write(ws_frame(payload[:2], OP_CLOSE))
                self.transport.loseConnection()
                break
        self._buf = buf[pos:]

    def send_text(self, payload: bytes) -> None:
        self.transport.write(ws_frame(payload))

    def close(self) -> None:
        if self.is_open:
            self.transport.write(ws_frame(struct.pack("!H", 1000), OP_CLOSE))
        self.transport.loseConnection()

    # For subclasses

    def opened(self) -> None:
        pass

    def refused(self, status: int) -> None:
        pass

    def message(self, payload: bytes) -> None:
        pass


INFO = {
    "app": "bench-device",
    "fw_version": "1.0.0",
    "fw_id": "20261125-000000",
    "arch": "esp32",
    "ram_size": 294512,
    "ram_free": 201000,
}
INFO_JSON = json.dumps(INFO, separators=(",", ":"))


class LeanDevice(WSClient):
    """
    A Mongoose OS-like device: sends ``Dash.Heartbeat`` (id 1) when the
    channel opens, answers every call (``Sys.GetInfo`` with its info, anything
    else with its params), and runs the loads the worker asks for. Its frames
    carry ``src`` like Mongoose OS; it leaves out ``dst`` and ``key``.
    """

    def __init__(self, index: int, token: str, owner: Any) -> None:
        self.index = index
        self.device_id = token.split("-", 1)[0]
        self.owner = owner
        self.src = "%s-esp32_%06X" % (self.device_id, index & 0xFFFFFF)
        self._src_json = json.dumps(self.src)
        self.next_id = 1
        self.shadow_running = False
        self.shadow_acked = 0
        self.info_acked = False
        self.slot: Any = None
        # Methods this device answers with an error (a job's failing phase).
        self.fail_methods: frozenset[str] = frozenset()

    def opened(self) -> None:
        self.owner.device_opened(self)
        self.send_text(
            (
                '{"id":1,"method":"Dash.Heartbeat","params":%s,"src":%s}'
                % (INFO_JSON, self._src_json)
            ).encode()
        )

    def refused(self, status: int) -> None:
        self.owner.device_refused(self, status)

    def connectionLost(self, reason: Any = None) -> None:
        was_open = self.is_open
        self.is_open = False
        self.owner.device_lost(self, was_open)

    def message(self, payload: bytes) -> None:
        frame = json.loads(payload)
        method = frame.get("method")
        if method is not None:
            call_id = frame.get("id")
            if call_id is None:
                return
            if method in self.fail_methods:
                self.send_text(
                    ('{"id":%s,"error":{"code":-1,"message":"failed as asked"},"src":%s}'
                     % (json.dumps(call_id), self._src_json)).encode()
                )
                return
            if method == "Sys.GetInfo":
                result = INFO_JSON
            else:
                result = json.dumps(frame.get("params"), separators=(",", ":"))
            self.send_text(
                ('{"id":%s,"result":%s,"src":%s}' % (json.dumps(call_id), result, self._src_json))
                .encode()
            )
            return
        call_id = frame.get("id")
        if call_id == 1:
            if not self.info_acked:
                self.info_acked = True
                self.owner.device_info_acked(self, "error" not in frame)
        elif self.shadow_running or call_id is not None:
            error = "error" in frame and frame["error"] is not None
            self.owner.shadow_reply(self, error)
            if not error and isinstance(call_id, int):
                # The update with this id (its seq) is durable: dashd answers
                # only once it is on disk.
                self.owner.shadow_durable(self, call_id)
            self.shadow_acked += 1
            if self.shadow_running:
                self.send_shadow_update()

    def send_shadow_update(self) -> None:
        self.next_id += 1
        self.send_text(
            (
                '{"id":%d,"method":"Dash.Shadow.Update","params":{"state":{"reported":'
                '{"temp":%d,"seq":%d}}},"src":%s}'
                % (self.next_id, 20 + self.next_id % 10, self.next_id, self._src_json)
            ).encode()
        )

    def send_tick(self, n: int) -> None:
        self.send_text(
            ('{"method":"Bench.Tick","params":{"n":%d},"src":%s}' % (n, self._src_json)).encode()
        )


TICK_MARKER = b'"rpc.out.Bench.Tick"'


class CountingSubscriber(WSClient):
    """
    A notification subscriber that only counts the ``rpc.out.Bench.Tick``
    events in what it receives (a C-speed substring count over the raw
    bytes, carrying the tail of each chunk over to the next), so that a
    hundred of them in one process cost little.
    """

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.count = 0
        self._tail = b""

    def opened(self) -> None:
        self.owner.subscriber_opened(self)

    def refused(self, status: int) -> None:
        self.owner.subscriber_refused(self, status)

    def frames_received(self, data: bytes) -> None:
        chunk = self._tail + data
        found = chunk.count(TICK_MARKER)
        # Shorter than the marker, the tail cannot hold one already counted;
        # it may hold the start of one split between two chunks.
        self._tail = chunk[-(len(TICK_MARKER) - 1) :]
        if found:
            self.count += found
            self.owner.ticks_received(self, found)

    def connectionLost(self, reason: Any = None) -> None:
        self.is_open = False
        self.owner.subscriber_lost(self)


class HttpConnection(Protocol):
    """
    One keep-alive HTTP/1.1 connection: one request at a time; answers with
    a Content-Length or chunked body are read whole and handed to the
    request's callback as (status, body).
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.fresh = True
        self._buf = b""
        self._callback: Callable[[int, bytes], None] | None = None

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.pool.connection_ready(self)

    def request(self, raw: bytes, callback: Callable[[int, bytes], None]) -> None:
        self._callback = callback
        self.transport.write(raw)

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        while self._callback is not None:
            parsed = _parse_response(self._buf)
            if parsed is None:
                return
            status, body, used = parsed
            self._buf = self._buf[used:]
            callback, self._callback = self._callback, None
            callback(status, body)
            self.pool.connection_ready(self)

    def connectionLost(self, reason: Any = None) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback(0, b"")
        self.pool.connection_lost(self)


def _parse_response(buf: bytes) -> tuple[int, bytes, int] | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].split(b"\r\n")
    status = int(head[0].split(b" ", 2)[1])
    length = None
    chunked = False
    for line in head[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    pos = end + 4
    if not chunked:
        length = length or 0
        if len(buf) < pos + length:
            return None
        return status, buf[pos : pos + length], pos + length
    body = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(buf[pos:line_end].split(b";")[0], 16)
        start = line_end + 2
        if size == 0:
            if buf[start : start + 2] != b"\r\n":
                return None  # (no trailers are sent)
            return status, b"".join(body), start + 2
        if len(buf) < start + size + 2:
            return None
        body.append(buf[start : start + size])
        pos = start + size + 2


def http_request(method: str, host: str, path: str, key: str | None, body: bytes | None) -> bytes:
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host]
    if key:
        lines.append("Authorization: Bearer %s" % key)
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append("Content-Length: %d" % len(body))
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return raw + (body or b"")


def now() -> float:
    """CLOCK_MONOTONIC: the same clock in every process of the machine."""
    return time.monotonic()
