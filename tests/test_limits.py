"""
Limits and abuse: per-key rate limits, failed authentications per address,
slow and idle clients, a device that stops reading, and the headers every
response carries. Each case has its own dashd with the limit under test.
"""

from __future__ import annotations

import socket
import time

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

from support import (
    SECRETS,
    Client,
    DashdProcess,
    connect_device,
    device_online,
    raw_handshake,
    sleep,
    subscribe,
    within,
)


@pytest.fixture
def limited(tmp_path):
    servers = []

    async def make(config: dict) -> DashdProcess:
        server = DashdProcess(str(tmp_path / str(len(servers))), config)
        servers.append(server)
        await server.start_async()
        return server

    yield make
    for server in servers:
        if server.proc is not None:
            server.stop()
        assert not server.problems(), server.log()[-3000:]


@pytest_twisted.ensureDeferred
async def test_per_key_rate_limit(limited):
    server = await limited({"limits": {"requests_per_second": 5, "burst": 5}})
    admin = Client(server, server.admin_key)
    other = await admin.post("/api/v2/keys", {"name": "other"})
    SECRETS.add(other.body["key"])
    # The burst is 5 and creating the other key took one.
    statuses = [(await admin.get("/api/v2/whoami")).status for _ in range(4)]
    assert statuses == [200] * 4
    limited_reply = await admin.get("/api/v2/devices")
    assert limited_reply.status == 429
    assert "over its limit of 5 requests a second" in limited_reply.error["message"]
    assert int(limited_reply.headers.getRawHeaders("retry-after")[0]) >= 1
    # Another key is not affected. (How the bucket refills, on a Clock:
    # test_limiters.py and test_keys.py.)
    assert (await Client(server, other.body["key"]).get("/api/v2/devices")).status == 200


@pytest_twisted.ensureDeferred
async def test_failed_authentications_per_address(limited):
    """Past the limit an address's failures get 429, at the door where they
    happened only, while valid keys and tokens from it still go in."""
    server = await limited({"limits": {"failed_auth_per_minute": 4}})
    admin = Client(server, server.admin_key)
    device_id, token = await admin.register()
    wrong = Client(server, "k000000000000.nope")
    for _ in range(4):
        assert (await wrong.get("/api/v2/devices")).status == 401
    reply = await wrong.get("/api/v2/devices")
    assert reply.status == 429
    assert "too many failed authentications from 127.0.0.1" in reply.error["message"]
    assert int(reply.headers.getRawHeaders("retry-after")[0]) > 1
    # Valid credentials from the same address go in, at both doors...
    assert (await admin.get("/api/v2/devices")).status == 200
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
    finally:
        await sim.stop()
    # ...and the device channel counts its own failures.
    reply = await raw_handshake(server, headers={"Authorization": "Bearer " + device_id + "-"
                                                 + "0" * 64})
    assert reply.status == 401
    log = server.log()
    assert log.count("REST: failed authentication from 127.0.0.1") == 4
    assert "4 failed authentications from 127.0.0.1 within 60" in log
    assert log.count("device channel: failed authentication from 127.0.0.1") == 1
    # Another address is not counted with this one.
    other = await _get_from(server, "127.0.0.2", "/api/v2/devices", "k000000000000.nope")
    assert other.startswith(b"HTTP/1.1 401"), other[:100]


@pytest_twisted.ensureDeferred
async def test_forwarded_addresses_count_from_trusted_proxies_only(limited):
    server = await limited({"limits": {"failed_auth_per_minute": 2},
                            "http": {"trusted_proxies": ["127.0.0.2/32"]}})
    for _ in range(3):
        answer = await _get_from(server, "127.0.0.2", "/api/v2/devices", "k000000000000.nope",
                                 b"X-Forwarded-For: 198.51.100.7\r\n")
    assert answer.startswith(b"HTTP/1.1 429"), answer[:100]
    assert b"too many failed authentications from 198.51.100.7" in answer
    # The proxy's other clients are not counted with that one.
    answer = await _get_from(server, "127.0.0.2", "/api/v2/devices", "k000000000000.nope",
                             b"X-Forwarded-For: 198.51.100.8\r\n")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
    # A client that is not a trusted proxy cannot pose as another.
    answer = await _get_from(server, "127.0.0.1", "/api/v2/devices", "k000000000000.nope",
                             b"X-Forwarded-For: 198.51.100.9\r\n")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
    log = server.log()
    assert "REST: failed authentication from 198.51.100.7" in log
    assert "from 127.0.0.1: unknown API key" in log
    assert "198.51.100.9" not in log


async def _get_from(server: DashdProcess, source: str, path: str, key: str,
                    headers: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                  source_address=(source, 0)) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s"
                  b"Connection: close\r\n\r\n" % (path.encode(), key.encode(), headers))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_slow_request_gets_408_and_idle_connection_is_closed(tmp_path):
    server = DashdProcess(str(tmp_path), {"http": {"request_timeout": 1.0, "idle_timeout": 1.5}})
    server.start()
    try:
        SECRETS.add(server.admin_key)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /api/v2/devices HTTP/1.1\r\nHost: x\r\n")  # never finished
            started = time.monotonic()
            data = s.recv(65536)
            assert data.startswith(b"HTTP/1.1 408 "), data
            assert b"not complete within 1 s" in data
            assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            started = time.monotonic()
            assert s.recv(65536) == b""  # closed by dashd, having sent nothing
            assert time.monotonic() - started < 5
        # The server carries on.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        server.stop()
    assert not server.problems()


@pytest_twisted.ensureDeferred
async def test_security_headers_and_cors(limited):
    server = await limited({"http": {"cors_origins": ["https://tools.example.com"]}})
    admin = Client(server, server.admin_key)
    reply = await admin.get("/api/v2/devices")
    headers = reply.headers
    assert headers.getRawHeaders("x-content-type-options") == ["nosniff"]
    assert headers.getRawHeaders("referrer-policy") == ["no-referrer"]
    csp = headers.getRawHeaders("content-security-policy")[0]
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert headers.getRawHeaders("access-control-allow-origin") is None
    # A configured origin gets CORS headers and its preflight answered.
    reply = await admin.get("/api/v2/devices", headers={"Origin": "https://tools.example.com"})
    assert reply.headers.getRawHeaders("access-control-allow-origin") == [
        "https://tools.example.com"]
    reply = await admin.request("OPTIONS", "/api/v2/devices", key=None, headers={
        "Origin": "https://tools.example.com", "Access-Control-Request-Method": "POST"})
    assert reply.status == 204
    assert "Authorization" in reply.headers.getRawHeaders("access-control-allow-headers")[0]
    # Any other origin gets none.
    reply = await admin.get("/api/v2/devices", headers={"Origin": "https://evil.example"})
    assert reply.headers.getRawHeaders("access-control-allow-origin") is None
    reply = await admin.request("OPTIONS", "/api/v2/devices", key=None,
                                headers={"Origin": "https://evil.example"})
    assert reply.status == 405


@pytest_twisted.ensureDeferred
async def test_device_that_stops_reading_is_dropped(limited):
    # Pings off: a device that stops reading also stops answering pings, and
    # the ping timeout would catch it first; here the write stall must.
    server = await limited({
        "device": {"write_stall_timeout": 1.0, "max_calls_in_flight": 1000,
                   "ping_interval": 0},
        "http": {"max_body_bytes": 1 << 20},
    })
    admin = Client(server, server.admin_key)
    device_id, token = await admin.register()
    bystander_id, bystander_token = await admin.register()
    sim = await connect_device(server, token, reconnect=False)
    bystander = await connect_device(server, bystander_token)
    await device_online(admin, device_id)
    closed = sim.wait_closed()
    sim._proto.transport.pauseProducing()  # the device stops reading
    payload = {"pad": "x" * 60000}  # under the 64 KB message limit
    path = "/api/v2/devices/%s/rpc/Sim.Echo?timeout=30" % device_id
    # Keep calling: the device's socket buffers fill (a few MB on loopback);
    # from then on calls are refused at once, and after write_stall_timeout
    # of full buffers the device is dropped.
    pending: list[Deferred] = []
    dropped = False
    for _ in range(300):
        pending += [Deferred.fromCoroutine(admin.post(path, payload)) for _ in range(10)]
        await sleep(0.05)
        if "device %s dropped: it did not read for 1.0 s" % device_id in server.log():
            dropped = True
            break
    assert dropped, "the device was never dropped"
    # Read again at once, to get what dashd wrote up to its close frame
    # before it gives up on the closing handshake and drops the connection.
    sim._proto.transport.resumeProducing()
    await within(closed, 10)
    assert (sim.close_code, sim.close_reason) == (4008, "not reading: dropped")
    await device_online(admin, device_id, online=False)
    # The calls it left unanswered failed when it was dropped, not at their
    # 30 s timeout; those made while its buffers were full were refused.
    results = await within(DeferredList(pending, consumeErrors=True), 30)
    replies = [r for ok, r in results if ok]
    messages = {r.error["message"] for r in replies if r.status == 503}
    assert {r.status for r in replies} <= {200, 503}
    assert "device %s is not reading its connection; try again later" % device_id in messages
    assert any("disconnected before answering Sim.Echo (not reading: dropped)" in m
               for m in messages), messages
    # Others carry on.
    reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % bystander_id, 1)
    assert (reply.status, reply.body) == (200, 1)
    await bystander.stop()
    sim.drop()


@pytest.mark.parametrize("bound", [
    {"max_backlog": 300},
    # The count far beyond the flood: only the bytes (about 300 events) bound it.
    {"max_backlog": 1_000_000, "max_backlog_bytes": 300 * 3600},
], ids=["max_backlog", "max_backlog_bytes"])
@pytest_twisted.ensureDeferred
async def test_subscriber_that_stops_reading_is_dropped(limited, bound):
    """A subscriber that does not read gets at most notify.max_backlog events
    (or notify.max_backlog_bytes of them) queued, beyond what the sockets
    hold, then is closed with 1008; one that reads gets everything; and
    dashd's memory does not grow with what the one that does not read
    misses."""
    from support import rss_bytes

    # (The device floods far beyond its own frame limit, which is not what
    # this is about.)
    server = await limited({"notify": bound, "device": {"frames_per_second": 0}})
    admin = Client(server, server.admin_key)
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    slow = await subscribe(server, admin.key)
    fast = await subscribe(server, admin.key)
    try:
        await device_online(admin, device_id)
        slow.proto.transport.pauseProducing()  # stop reading from the socket
        before = peak = rss_bytes(server)
        payload = "p" * 3500
        count = 6000  # about 21 MB of events: far more than the sockets hold
        reading_again = False
        for i in range(count):
            sim.notify("Flood", {"i": i, "pad": payload})
            if i % 50 == 49:
                # Paced by the subscriber that reads, which gets every event.
                last = await fast.next(
                    lambda e: e["name"] == "rpc.out.Flood" and e["data"]["i"] == i, seconds=30)
                assert last["id"] == device_id
                peak = max(peak, rss_bytes(server))
                if not reading_again and "dropped: not reading" in server.log():
                    # Read again at once, to see the close frame before dashd
                    # gives up on the closing handshake and drops the connection.
                    slow.proto.transport.resumeProducing()
                    reading_again = True
        assert reading_again, "the subscriber that did not read was never dropped"
        peak = max(peak, rss_bytes(server))
        # With an unbounded backlog dashd grows by about the flood's size
        # (19 MiB measured); bounded, by a megabyte or two.
        print("dashd RSS %.1f MiB, peak growth %.1f MiB during a %.0f MB flood"
              % (before / 2**20, (peak - before) / 2**20, count * 3.5 / 1000))
        assert peak - before < 8 * 2**20
        await within(slow.closed, 20)
        assert (slow.close_code, slow.close_reason) == (
            1008, "notification backlog exceeded; read faster")
        assert fast.close_code is None
    finally:
        fast.close()
        await sim.stop()
