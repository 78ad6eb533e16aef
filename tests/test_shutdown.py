"""
Graceful stop on SIGTERM: dashd stops accepting, lets the REST calls in
flight finish (up to shutdown.grace_period), closes device connections and
notification streams with 1001, and leaves the store consistent.
"""

from __future__ import annotations

import signal
import socket

import pytest_twisted
from twisted.internet.defer import Deferred

from support import (
    Client,
    DashdProcess,
    connect_device,
    device_online,
    eventually,
    subscribe,
    within,
)


def refuses_connections(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest_twisted.ensureDeferred
async def test_a_call_in_flight_during_sigterm_gets_its_answer(tmp_path):
    server = DashdProcess(str(tmp_path), config={"shutdown": {"grace_period": 10.0}})
    await server.start_async()
    admin = Client(server, server.admin_key)
    device_id, token = await admin.register("slow")
    sim = await connect_device(server, token, reconnect=False)
    sub = await subscribe(server, server.admin_key)
    try:
        await device_online(admin, device_id)
        changed = await admin.post("/api/v2/devices/" + device_id,
                                   {"shadow": {"tags": {"kept": True}}})
        assert changed.status == 200

        asked = sim.wait_frame(lambda f: f.get("method") == "Sim.Sleep")
        call = Deferred.fromCoroutine(
            admin.post("/api/v2/devices/%s/rpc/Sim.Sleep" % device_id, {"seconds": 1.5})
        )
        await within(asked, 10)  # the call is with the device now
        closed = sim.wait_closed()
        server.proc.send_signal(signal.SIGTERM)

        await eventually(lambda: refuses_connections(server.port), 5)
        reply = await within(call, 15)
        assert (reply.status, reply.body) == (200, {"slept": 1.5})
        await within(closed, 10)
        assert sim.close_code == 1001
        await within(sub.closed, 10)
        assert sub.close_code == 1001
        await eventually(lambda: server.proc.poll() is not None, 20)
        assert server.proc.returncode == -signal.SIGTERM  # twistd re-raises it
        server.proc = None
    finally:
        await sim.stop()
        if server.proc is not None:
            server.stop()
    log = server.log()
    assert "waiting up to 10.0s for 1 request(s) in flight" in log
    assert "the requests in flight are answered" in log
    # The log says what the device received, not the code it echoed back.
    assert "closing 1 device connection(s) with 1001 (going away)" in log
    assert "device %s offline: server shutting down" % device_id in log
    assert "closed with code 1000" not in log

    await server.start_async()  # the store is consistent and complete
    try:
        view = await admin.device(device_id)
        assert view["shadow"]["tags"] == {"kept": True}
        assert view["last_seen"] is not None
    finally:
        server.stop()
    assert not server.problems()


@pytest_twisted.ensureDeferred
async def test_calls_beyond_the_grace_period_fail_fast(tmp_path):
    server = DashdProcess(str(tmp_path), config={"shutdown": {"grace_period": 0.5}})
    await server.start_async()
    admin = Client(server, server.admin_key)
    device_id, token = await admin.register("slower")
    sim = await connect_device(server, token, reconnect=False)
    try:
        await device_online(admin, device_id)
        asked = sim.wait_frame(lambda f: f.get("method") == "Sim.Sleep")
        call = Deferred.fromCoroutine(
            admin.post("/api/v2/devices/%s/rpc/Sim.Sleep?timeout=20" % device_id,
                       {"seconds": 10})
        )
        await within(asked, 10)
        server.proc.send_signal(signal.SIGTERM)
        reply = await within(call, 5)  # not the 10 s the device would take
        assert reply.status == 503
        assert "server shutting down" in reply.error["message"]
        await eventually(lambda: server.proc.poll() is not None, 10)
        server.proc = None
    finally:
        await sim.stop()
        if server.proc is not None:
            server.stop()
    assert "still in flight after 0.5s" in server.log()
    assert not server.problems()


@pytest_twisted.ensureDeferred
async def test_requests_on_a_kept_alive_connection_get_503_while_draining(tmp_path):
    """A client that keeps its connection open cannot start new work while
    dashd drains: it is told to come back, and the connection closes."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    server = DashdProcess(str(tmp_path), config={"shutdown": {"grace_period": 5.0}})
    await server.start_async()
    admin = Client(server, server.admin_key)
    device_id, token = await admin.register()
    sim = await connect_device(server, token, reconnect=False)

    class Raw(Protocol):
        def __init__(self) -> None:
            self.data = b""
            self.lost: Deferred[None] = Deferred()

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason: object) -> None:
            self.lost.callback(None)

    try:
        await device_online(admin, device_id)
        raw, probe = Raw(), Raw()
        for protocol in (raw, probe):
            await within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port),
                                         protocol))
        asked = sim.wait_frame(lambda f: f.get("method") == "Sim.Sleep")
        call = Deferred.fromCoroutine(
            admin.post("/api/v2/devices/%s/rpc/Sim.Sleep" % device_id, {"seconds": 2})
        )
        await within(asked, 10)
        server.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: refuses_connections(server.port), 5)
        raw.transport.write(b"GET /api/v2/devices HTTP/1.1\r\nHost: x\r\n"
                            b"Authorization: Bearer " + server.admin_key.encode() + b"\r\n\r\n")
        await within(raw.lost, 5)
        assert raw.data.startswith(b"HTTP/1.1 503 ")
        assert b"shutting down" in raw.data and b"Retry-After: 5" in raw.data
        # A load balancer's readiness probe on a connection it kept open
        # is told the same (new connections are refused).
        probe.transport.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        await within(probe.lost, 5)
        assert probe.data.startswith(b"HTTP/1.1 503 ")
        assert b"dashd is shutting down; retry shortly" in probe.data
        assert b"Retry-After: 5" in probe.data
        assert (await within(call, 10)).status == 200
        await eventually(lambda: server.proc.poll() is not None, 10)
        server.proc = None
    finally:
        await sim.stop()
        if server.proc is not None:
            server.stop()
    assert not server.problems()


@pytest_twisted.ensureDeferred
async def test_sighup_is_logged_and_changes_nothing(tmp_path):
    """SIGHUP's default action would end dashd at once (no drain, no
    STOPPING=1): dashd catches it, says so, and goes on serving: the call in
    flight is answered, the device stays connected, no offline event."""
    server = DashdProcess(str(tmp_path))
    await server.start_async()
    admin = Client(server, server.admin_key)
    device_id, token = await admin.register("hup")
    sim = await connect_device(server, token, reconnect=False)
    sub = await subscribe(server, server.admin_key)
    try:
        await device_online(admin, device_id)
        asked = sim.wait_frame(lambda f: f.get("method") == "Sim.Sleep")
        call = Deferred.fromCoroutine(
            admin.post("/api/v2/devices/%s/rpc/Sim.Sleep" % device_id, {"seconds": 1.0}))
        await within(asked, 10)
        server.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "SIGHUP received: ignored" in server.log(), 10)
        server.proc.send_signal(signal.SIGHUP)  # and again: still handled
        await eventually(lambda: server.log().count("SIGHUP received") == 2, 10)
        reply = await within(call, 10)
        assert (reply.status, reply.body) == (200, {"slept": 1.0})
        assert server.proc.poll() is None
        assert sim.close_code is None
        again = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, {"x": 1})
        assert again.status == 200
        await sub.next(lambda e: e["name"] == "rpc.in.Sim.Echo")
        sub.never(lambda e: e["name"] == "offline", "the device went offline")
    finally:
        await sim.stop()
        code = server.stop()
    assert code == -signal.SIGTERM  # the graceful stop is unchanged
    assert not server.problems()
