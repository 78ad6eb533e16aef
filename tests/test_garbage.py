"""
Connections, calls and refusals leave no reference cycles behind.

With a fleet connected, a full collection of Python's cycle collector walks
every object dashd holds (0.4-0.9 s with 10,000 devices, during which
nothing else runs; docs/performance.md), and garbage that only the cycle
collector can free is what brings those collections on. So what a device
connection, an RPC call or a refusal leaves behind must be freed by
reference counting alone.

dashd runs here in the test's own process (the twistd plugin's service, on
a real socket, with real devices and subscribers over WebSockets), so that
the collector can be asked: with C{gc.DEBUG_SAVEALL} every unreachable
object it finds is kept in C{gc.garbage} instead of freed. The clients live
in the same process and leave cycles of their own (Autobahn's client
protocols), so only dashd's server-side objects are counted.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Any, Iterator

import pytest_twisted
from twisted.internet import reactor, tcp
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from dashd.domain.errors import DomainError
from dashd.tap import Options, makeService
from dashd.api.site import DashdRequest
from dashd.channel.websocket import DeviceProtocol, NotifyProtocol
from support import (
    Client,
    DashdProcess,
    connect_device,
    device_online,
    eventually,
    raw_handshake,
    subscribe,
)

SERVER_SIDE = (DeviceProtocol, NotifyProtocol, HTTPChannel, DashdRequest, tcp.Server)


def _dashd_garbage(objects: list[Any]) -> list[str]:
    found = []
    for o in objects:
        if isinstance(o, SERVER_SIDE) or (isinstance(o, Failure) and isinstance(o.value, DomainError)):
            found.append(type(o).__qualname__ if not isinstance(o, Failure) else
                         "Failure(%s)" % type(o.value).__name__)
    return sorted(found)


def _server_connections() -> int:
    """How many server sides of connections are open in this process (only
    the in-process dashd accepts any): tcp.Server transports not yet
    disconnected (one that is has told its protocol), whether or not the
    reactor reads them now (a paused one it does not)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, tcp.Server) and not o.disconnected)


@contextmanager
def kept_garbage() -> Iterator[list[str]]:
    """Collects what dashd left as cyclic garbage within the block."""
    gc.collect()  # what was garbage before does not count
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[str] = []
    try:
        yield found
        gc.collect()
        found.extend(_dashd_garbage(gc.garbage))
    finally:
        gc.set_debug(0)
        # Released with the debug flag off, the next collection frees them.
        del gc.garbage[:]


class InProcessDashd(DashdProcess):
    """The dashd of DashdProcess (same configuration), in this process."""

    async def start_here(self) -> None:
        self._thresholds = gc.get_threshold()
        options = Options()
        options.parseOptions(["--config", self.config_path])
        self.service = makeService(options, reactor)
        self.service.startService()
        await eventually(self._up)

    async def stop_here(self) -> None:
        try:
            await self.service.stopService()
        finally:
            gc.set_threshold(*self._thresholds)


@pytest_twisted.ensureDeferred
async def test_connections_calls_and_refusals_leave_no_cycles(tmp_path):
    # Nothing frozen (dashd.ops.gcfreeze) in the test's process: the collector
    # must see everything here.
    server = InProcessDashd(str(tmp_path), {"gc": {"full_collection_interval": 0}})
    await server.start_here()
    try:
        admin = Client(server, server.admin_key)
        registered = [await admin.register() for _ in range(3)]
        # Each kind of connection and answer once first: what is created on
        # first use (caches, module state) is not garbage.
        device = await connect_device(server, registered[0][1])
        await device_online(admin, registered[0][0])
        assert (await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % registered[0][0])).status == 200
        device.stop()
        await device_online(admin, registered[0][0], online=False)

        router = server.service.parts.fleet.router

        # Only the door's requests from here on: Klein's own dispatch leaves
        # cycles of its own (docs/performance.md), so device_online (a GET
        # through Klein) would count them; the router says who is online.
        async def online(device_id: str, state: bool = True) -> None:
            await eventually(lambda: router.is_online(device_id) == state)

        with kept_garbage() as found:
            devices = [await connect_device(server, token) for _, token in registered]
            for device_id, _ in registered:
                await online(device_id)
                reply = await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
                assert reply.status == 200, reply
            subscriber = await subscribe(server, server.admin_key)
            for device in devices:
                device.stop()
            for device_id, _ in registered:
                await online(device_id, False)
            # Refused, each through the error path of the door.
            reply = await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % registered[0][0])
            assert reply.status == 503, reply
            reply = await admin.get("/api/v2/devices/dnosuchdevice/rpc/Sys.GetInfo")
            assert reply.status == 404, reply
            refused = await raw_handshake(
                server, headers={"Authorization": "Bearer " + registered[0][1][:-4] + "AAAA"})
            assert refused.status == 401, refused
            subscriber.close()
            await subscriber.closed
            # Until the server side of every connection has closed: one
            # still open is not garbage yet, and would escape the count.
            await eventually(lambda: _server_connections() == 0)
        assert found == [], "dashd left these in reference cycles: %s" % found
    finally:
        await server.stop_here()
