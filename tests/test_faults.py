"""
Faults: a full disk under the store, and devices or subscribers that
misbehave at the worst moment. dashd answers clearly, stays up, and
recovers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
import pytest_twisted

from support import (
    Client,
    DashdProcess,
    connect_device,
    device_online,
    eventually,
    sleep,
    subscribe,
    within,
)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (this needs root, as CI and the dev machines have)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    yield str(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: str) -> str:
    path = os.path.join(directory, "filler")
    # Unbuffered: a write the disk takes only part of leaves nothing behind
    # for close() to fail on.
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return path


@pytest_twisted.ensureDeferred
async def test_full_disk_gives_503_and_recovers(tmp_path, small_disk):
    server = DashdProcess(str(tmp_path / "run"), {"data_dir": os.path.join(small_disk, "data")})
    await server.start_async()
    try:
        admin = Client(server, server.admin_key)
        device_id, token = await admin.register()
        sim = await connect_device(server, token)
        await device_online(admin, device_id)
        await admin.post("/api/v2/devices/" + device_id, {"shadow": {"tags": {"n": 0}}})

        filler = _fill(small_disk)
        big = {"shadow": {"tags": {"blob": "z" * 12000}}}
        failures = []
        for i in range(30):  # the WAL may absorb a few before the disk says no
            reply = await admin.post("/api/v2/devices/" + device_id, {
                "shadow": {"tags": {"n": i + 1, "blob": big["shadow"]["tags"]["blob"] + str(i)}}})
            if reply.status != 200:
                failures.append(reply)
                break
        assert failures, "the full disk was never noticed"
        reply = failures[0]
        assert reply.status == 503
        assert "the store cannot write" in reply.error["message"]
        assert "full" in reply.error["message"]
        assert reply.headers.getRawHeaders("retry-after")
        # The device's own write fails with an error reply, and dashd stays up:
        # reads and calls still work.
        try:
            await within(sim.call("Dash.Shadow.Update", {"state": {"reported": {"x": "y" * 3000}}}))
            raise AssertionError("a write on a full disk was acknowledged")
        except Exception as e:
            assert getattr(e, "code", None) == 503, e
        assert (await admin.get("/api/v2/devices/" + device_id)).status == 200
        echo = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, 7)
        assert (echo.status, echo.body) == (200, 7)

        # Space returns: writes work again, without a restart.
        os.remove(filler)

        async def writable() -> bool:
            r = await admin.post("/api/v2/devices/" + device_id,
                                 {"shadow": {"tags": {"after": True}}})
            return r.status == 200

        await eventually(writable)
        view = await admin.device(device_id)
        assert view["shadow"]["tags"]["after"] is True
        await sim.stop()
    finally:
        server.stop()
    assert not server.problems()


@pytest_twisted.ensureDeferred
async def test_device_misbehaving_around_calls(server, admin: Client):
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        # A device that answers twice: the first answer counts, the second is dropped.
        sim.handlers["Twice"] = lambda params: "first"
        original = sim._answer

        def answer_twice(frame, result=None, error=None):
            original(frame, result=result, error=error)
            if frame.get("method") == "Twice":
                original(frame, result="second")

        sim._answer = answer_twice
        reply = await admin.get("/api/v2/devices/%s/rpc/Twice" % device_id)
        assert (reply.status, reply.body) == (200, "first")
        # A response before any request, with an id dashd never used.
        sim.send_raw(json.dumps({"id": 999999, "result": "unasked"}))
        sim.send_raw(json.dumps({"id": "x", "error": {"code": 1, "message": "?"}}))
        reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, "still here")
        assert (reply.status, reply.body) == (200, "still here")
    finally:
        await sim.stop()


def test_half_sent_handshakes_and_requests_do_not_hurt(server, admin):
    """Clients that vanish mid-handshake or mid-request: nothing breaks."""
    token_less = (
        b"GET /api/v2/rpc HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    )
    for data in (token_less, b"POST /api/v2/devices HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
                 b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(data)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


@pytest_twisted.ensureDeferred
async def test_subscriber_vanishing_mid_stream(server, admin: Client):
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    steady = await subscribe(server, admin.key)
    leaving = await subscribe(server, admin.key)
    try:
        await device_online(admin, device_id)
        for i in range(200):
            sim.notify("Burst", {"i": i, "pad": "q" * 3000})
            if i == 50:
                leaving.proto.transport.abortConnection()
        last = await steady.next(lambda e: e["name"] == "rpc.out.Burst" and e["data"]["i"] == 199,
                                 seconds=30)
        assert last["id"] == device_id
        await within(leaving.closed)
        await sleep(0.2)
        reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, 1)
        assert reply.status == 200
    finally:
        steady.close()
        await sim.stop()
