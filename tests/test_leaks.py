"""
Nothing leaks: after devices that time out, vanish mid-call, get replaced,
and subscribers that come and go, dashd holds no pending call, no session,
no subscriber and no timer more than it did before. Read from /metrics.
"""

from __future__ import annotations

import re

import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

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


async def _metrics(client: Client) -> dict[str, float]:
    reply = await client.get("/metrics")
    assert reply.status == 200
    values = {}
    for line in reply.raw.decode().splitlines():
        m = re.match(r"^(dashd_[a-z_]+) ([0-9.e+-]+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


@pytest_twisted.ensureDeferred
async def test_churn_leaves_nothing_behind(tmp_path):
    server = DashdProcess(str(tmp_path), {"device": {"ping_interval": 0}})
    await server.start_async()
    try:
        admin = Client(server, server.admin_key)
        # A device online, called and gone first, so that whatever the first
        # connection and call create for good (module state, Autobahn's
        # shared timers) is in the baseline; then none is connected.
        warm_id, warm_token = await admin.register()
        warm = await connect_device(server, warm_token, reconnect=False)
        await device_online(admin, warm_id)
        reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % warm_id, {})
        assert reply.status == 200, reply
        await warm.stop()
        await device_online(admin, warm_id, online=False)
        baseline = await _metrics(admin)
        assert baseline["dashd_devices_connected"] == 0
        assert baseline["dashd_device_connections_total"] == 1

        path = "/api/v2/devices/%s/rpc/"
        for round_ in range(3):
            device_id, token = await admin.register()
            sim = await connect_device(server, token, reconnect=False)
            sub = await subscribe(server, admin.key)
            await device_online(admin, device_id)
            # Calls that time out, calls left hanging when the device
            # vanishes, a call cut by a replacement, a call that errs.
            timeouts = [Deferred.fromCoroutine(admin.post(
                path % device_id + "Sim.Sleep?timeout=0.3", {"seconds": 2})) for _ in range(5)]
            await within(DeferredList(timeouts), 10)
            await admin.post(path % device_id + "Sim.Fail", {})
            # Their timeouts (25 s) outlast the wait below: a timer left
            # behind by a failed call would show.
            hanging = [Deferred.fromCoroutine(admin.post(
                path % device_id + "Sim.Sleep?timeout=25", {"seconds": 10})) for _ in range(5)]
            await eventually(lambda: len([f for f in sim.frames
                                          if f.get("method") == "Sim.Sleep"]) >= 10)
            replacement = await connect_device(server, token, reconnect=False)
            cut = Deferred.fromCoroutine(admin.post(path % device_id + "Sim.Sleep?timeout=25",
                                                    {"seconds": 10}))
            await sleep(0.2)
            replacement.drop()
            results = await within(DeferredList(hanging + [cut]), 10)
            assert {r.status for ok, r in results} == {503}, round_
            sub.proto.transport.abortConnection()
            await sim.stop()

        async def settled() -> dict[str, float]:
            now = await _metrics(admin)
            done = (now["dashd_devices_connected"] == 0 and now["dashd_notify_subscribers"] == 0
                    and now["dashd_device_calls_pending"] == 0
                    and now["dashd_reactor_delayed_calls"]
                    <= baseline["dashd_reactor_delayed_calls"])
            return now if done else {}

        after = await eventually(settled, seconds=10)
        assert after["dashd_device_connections_total"] >= 1 + 6
    finally:
        server.stop()
    assert not server.problems()
