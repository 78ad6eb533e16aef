"""
Queued calls end to end (dashd.app.calls), on both stores: POST
/devices/:id/calls and the bridge's ?queue=, delivery when the device is
back (in order, a few at a time, once), every state with its time, the
notifications and the audit log, cancelling, limits and bad input, and what
a restart or a kill -9 leaves.
"""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from support import (
    SECRETS,
    Client,
    DashdProcess,
    connect_device,
    device_online,
    eventually,
    subscribe,
    within,
)


async def _key(admin: Client, **body: Any) -> Client:
    reply = await admin.post("/api/v2/keys", body)
    assert reply.status == 200, reply
    SECRETS.add(reply.body["key"])
    return Client(admin.server, reply.body["key"])


async def queue(client: Client, device_id: str, method: str, **body: Any) -> dict[str, Any]:
    reply = await client.post("/api/v2/devices/%s/calls" % device_id,
                              dict(body, method=method))
    assert reply.status == 202, reply
    assert reply.headers.getRawHeaders("location") == ["/api/v2/calls/" + reply.body["id"]]
    return reply.body


async def call_state(client: Client, call_id: str, *states: str) -> dict[str, Any]:
    async def check() -> Any:
        reply = await client.get("/api/v2/calls/" + call_id)
        assert reply.status == 200, reply
        return reply.body if reply.body["state"] in states else None

    return await eventually(check, 15)


def statuses(sub: Any, call_id: str) -> list[str]:
    return [e["data"]["state"] for e in sub.received
            if e["name"] == "call.status" and e["data"]["id"] == call_id]


@pytest_twisted.ensureDeferred
async def test_a_call_queued_for_an_offline_device_goes_out_when_it_is_back(server, admin):
    device_id, token = await admin.register()
    sub = await subscribe(server, server.admin_key)
    before = time.time()
    call = await queue(admin, device_id, "Sim.Echo", params={"x": 1}, expires_in=60)
    assert call["state"] == "queued" and call["method"] == "Sim.Echo"
    assert call["params"] == {"x": 1} and call["retry"] == 0 and call["attempts"] == []
    assert before - 1 < call["times"]["queued"] <= call["expires"] - 59
    sim = await connect_device(server, token)
    try:
        done = await call_state(admin, call["id"], "succeeded")
        assert done["result"] == {"x": 1}
        assert set(done["times"]) == {"queued", "sent", "succeeded"}
        assert done["times"]["queued"] <= done["times"]["sent"] <= done["times"]["succeeded"]
        assert len(done["attempts"]) == 1 and done["attempts"][0]["state"] == "succeeded"
        await sub.next(lambda e: e["name"] == "call.status" and e["id"] == device_id
                       and e["data"]["state"] == "succeeded")
        assert statuses(sub, call["id"]) == ["queued", "sent", "succeeded"]
        # Its info first: the queued call came after dashd had it.
        assert sim.methods.count("Sim.Echo") == 1
        listed = await admin.get("/api/v2/devices/%s/calls" % device_id)
        assert [c["id"] for c in listed.body] == [call["id"]]
        metrics = await Client(server, None).get("/metrics")
        assert b'dashd_queued_calls_ended_total{state="succeeded"}' in metrics.raw
        assert b"dashd_queued_calls_sent_total" in metrics.raw
    finally:
        sub.close()
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_queued_calls_wait_for_the_devices_own_handshake(server, admin):
    device_id, token = await admin.register()
    reply = await admin.post("/api/v2/devices/" + device_id,
                             {"shadow": {"state": {"desired": {"led": True}}}})
    assert reply.status == 200
    call = await queue(admin, device_id, "Sim.Echo", params="after")
    # A device that sends no heartbeat: dashd asks it for Sys.GetInfo
    # first, and sends its delta; the queued call comes after.
    sim = await connect_device(server, token, heartbeat=False)
    try:
        await call_state(admin, call["id"], "succeeded")
        assert sim.methods.index("Sys.GetInfo") < sim.methods.index("Sim.Echo")
        assert sim.methods.index("Shadow.Delta") < sim.methods.index("Sim.Echo")
        view = await admin.device(device_id)
        assert view["info"]["mac"] == sim.mac
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_the_bridge_queues_with_queue_and_answers_at_once_when_online(server, admin):
    device_id, token = await admin.register()
    offline = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo?queue=60&timeout=3"
                               % device_id, {"a": 2})
    assert offline.status == 202, offline
    assert offline.body["state"] == "queued" and offline.body["timeout"] == 3
    # Without ?queue= an offline device is still 503 at once.
    plain = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, {"a": 3})
    assert plain.status == 503
    sim = await connect_device(server, token)
    try:
        done = await call_state(admin, offline.body["id"], "succeeded")
        assert done["result"] == {"a": 2}
        await device_online(admin, device_id)
        online = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo?queue=60" % device_id,
                                  {"b": 1})
        assert online.status == 200 and online.body == {"b": 1}
        bad = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo?queue=-1" % device_id, {})
        assert bad.status == 400
        assert bad.error["message"] == ("queue must be a number of seconds greater than 0 and "
                                        "at most 2.592e+06")
        assert sim.methods.count("Sim.Echo") == 2
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_calls_go_out_in_order_a_few_at_a_time(server, admin):
    device_id, token = await admin.register()
    made = [await queue(admin, device_id, "Test.Slow", params=i) for i in range(10)]
    running, most, seen = [0], [0], []

    def slow(params: Any) -> Deferred:
        seen.append(params)
        running[0] += 1
        most[0] = max(most[0], running[0])

        def done() -> Any:
            running[0] -= 1
            return params

        return deferLater(reactor, 0.1, done)

    sim = await connect_device(server, token)
    sim.handlers["Test.Slow"] = slow
    try:
        for call in made:
            await call_state(admin, call["id"], "succeeded")
        assert seen == list(range(10))
        # calls.in_flight_per_device (4 by default), and more than one.
        assert 1 < most[0] <= 4
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_failed_timed_out_retried_and_lost(server, admin):
    device_id, token = await admin.register()
    failed = await queue(admin, device_id, "Sim.Fail")
    silent = await queue(admin, device_id, "Test.Silent", timeout=1, retry=1)
    sim = await connect_device(server, token)
    sim.handlers["Test.Silent"] = lambda params: Deferred()
    try:
        done = await call_state(admin, failed["id"], "failed")
        assert done["error"]["code"] != 0 and done["error"]["message"]
        assert "result" not in done
        done = await call_state(admin, silent["id"], "timed_out")
        # Sent twice, as it asked (retry 1), each attempt recorded.
        assert [a["state"] for a in done["attempts"]] == ["timed_out", "timed_out"]
        assert done["error"] == {"code": 504, "message": done["error"]["message"]}
        assert sim.methods.count("Test.Silent") == 2
        # Sent, then the connection goes: lost, and never sent again.
        lost = await queue(admin, device_id, "Test.Silent", timeout=20)
        await eventually(lambda: sim.methods.count("Test.Silent") == 3)
        await call_state(admin, lost["id"], "sent")
        closed = sim.wait_closed()
        sim.drop()
        await within(closed, 10)
        done = await call_state(admin, lost["id"], "lost")
        assert done["attempts"][0]["state"] == "lost"
        await within(sim.wait_open(), 10)
        echo = await queue(admin, device_id, "Sim.Echo", params=1)
        await call_state(admin, echo["id"], "succeeded")
        assert sim.methods.count("Test.Silent") == 3
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_expiry_and_cancelling(server, admin):
    device_id, token = await admin.register()
    short = await queue(admin, device_id, "Sim.Echo", expires_in=0.5)
    done = await call_state(admin, short["id"], "expired")
    assert "sent" not in done["times"] and done["attempts"] == []
    keep = await queue(admin, device_id, "Sim.Echo", params=1)
    drop = await queue(admin, device_id, "Sim.Echo", params=2)
    cancelled = await admin.delete("/api/v2/calls/" + drop["id"])
    assert cancelled.status == 200 and cancelled.body["state"] == "cancelled"
    again = await admin.delete("/api/v2/calls/" + drop["id"])
    assert again.status == 409
    assert again.error["message"] == ("call %s has ended (cancelled): there is nothing to "
                                      "cancel" % drop["id"])
    sim = await connect_device(server, token)
    sim.handlers["Test.Silent"] = lambda params: Deferred()
    try:
        await call_state(admin, keep["id"], "succeeded")
        sent = await queue(admin, device_id, "Test.Silent", timeout=20)
        await call_state(admin, sent["id"], "sent")
        refused = await admin.delete("/api/v2/calls/" + sent["id"])
        assert refused.status == 409
        assert refused.error["message"].startswith(
            "call %s was sent to the device at " % sent["id"])
        assert sim.frames and [f.get("params") for f in sim.frames
                               if f.get("method") == "Sim.Echo"] == [1]
        queued = await admin.get("/api/v2/devices/%s/calls?state=queued,sent" % device_id)
        assert [c["id"] for c in queued.body] == [sent["id"]]
        ended = await admin.get("/api/v2/devices/%s/calls?state=cancelled,expired" % device_id)
        assert [c["id"] for c in ended.body] == [drop["id"], short["id"]]
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_pages_of_a_devices_calls(server, admin):
    device_id, _ = await admin.register()
    made = [(await queue(admin, device_id, "Sim.Echo", params=i))["id"] for i in range(5)]
    seen, path = [], "/api/v2/devices/%s/calls?limit=2" % device_id
    while True:
        reply = await admin.get(path)
        assert reply.status == 200, reply
        seen.extend(c["id"] for c in reply.body)
        cursor = reply.headers.getRawHeaders("x-next-cursor")
        if not cursor:
            break
        path = "/api/v2/devices/%s/calls?limit=2&cursor=%s" % (device_id, cursor[0])
    assert seen == made[::-1]


@pytest_twisted.ensureDeferred
async def test_bad_input_gets_a_clear_answer(server, admin):
    device_id, token = await admin.register()
    path = "/api/v2/devices/%s/calls" % device_id
    cases = [
        ({}, 400, "method is required: the device's method to call"),
        ({"method": ""}, 400, "method must be a non-empty string"),
        ({"method": "x" * 129}, 400, "method names are at most 128 characters"),
        ({"method": "a", "expires_in": -1}, 400,
         "expires_in must be more than 0 and at most 2.592e+06 seconds"),
        ({"method": "a", "expires_in": "soon"}, 400, "expires_in must be a number of seconds"),
        ({"method": "a", "expires_in": 5, "expires_at": 5}, 400,
         "give expires_in or expires_at, not both"),
        ({"method": "a", "expires_at": 5}, 400,
         "expires_at must be a time (seconds since the epoch) after now and at most "
         "2.592e+06 s from now"),
        ({"method": "a", "timeout": 0}, 400, "timeout must be more than 0 and at most 30 seconds"),
        ({"method": "a", "retry": 11}, 400,
         "retry must be a whole number from 0 to 10: how many times the call may be sent "
         "again after it timed out or was lost"),
        ({"method": "a", "retry": True}, 400,
         "retry must be a whole number from 0 to 10: how many times the call may be sent "
         "again after it timed out or was lost"),
        ({"method": "a", "when": 1}, 400,
         "unknown field(s): when (allowed: expires_at, expires_in, method, params, retry, "
         "timeout)"),
        ({"method": "a", "params": "x" * 20000}, 413,
         "params are 20002 bytes of JSON, more than the 16384 a queued call may carry"),
    ]
    for body, status, message in cases:
        reply = await admin.post(path, body)
        assert (reply.status, reply.error["message"]) == (status, message), body
    for path, message in [("/api/v2/calls/cnope", "no such call: cnope"),
                          ("/api/v2/devices/dnope/calls", "no such device: dnope")]:
        reply = await admin.get(path)
        assert (reply.status, reply.error["message"]) == (404, message)
    reply = await admin.post("/api/v2/devices/dnope/calls", {"method": "a"})
    assert (reply.status, reply.error["message"]) == (404, "no such device: dnope")
    reply = await admin.get("/api/v2/devices/%s/calls?state=done" % device_id)
    assert reply.status == 400
    assert reply.error["message"] == ("state must be a comma-separated list of queued, sent, "
                                      "succeeded, failed, timed_out, lost, expired, cancelled")
    assert (await admin.get("/api/v2/devices/%s/calls?cursor=x" % device_id)).status == 400
    # Nothing of that was queued, and the device carries on.
    assert (await admin.get("/api/v2/devices/%s/calls" % device_id)).body == []
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, {"ok": 1})
        assert reply.status == 200
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_who_may_queue_read_and_cancel(server, admin):
    device_id, _ = await admin.register()
    other_id, _ = await admin.register()
    ro = await _key(admin, kind="read-only", name="auditor")
    cust = await _key(admin, kind="restricted", name="customer", scope={"devices": {
        device_id: {"read": [], "write": [], "rpc": ["Sim.*"]}}})
    call = await queue(admin, device_id, "GPIO.Toggle", params={"pin": 2})
    mine = await queue(cust, device_id, "Sim.Echo")
    reply = await ro.post("/api/v2/devices/%s/calls" % device_id, {"method": "Sim.Echo"})
    assert (reply.status, reply.error["message"]) == (
        403, "this key is read-only: it may not call methods on devices")
    assert (await ro.get("/api/v2/calls/" + call["id"])).status == 200
    reply = await ro.delete("/api/v2/calls/" + call["id"])
    assert (reply.status, reply.error["message"]) == (
        403, "this key is read-only: it may not call methods on devices")
    reply = await cust.post("/api/v2/devices/%s/calls" % device_id, {"method": "GPIO.Toggle"})
    assert (reply.status, reply.error["message"]) == (
        403, "this key may not call GPIO.Toggle on device %s" % device_id)
    # A call of a method it may not make is as if it did not exist.
    reply = await cust.get("/api/v2/calls/" + call["id"])
    assert (reply.status, reply.error["message"]) == (404, "no such call: %s" % call["id"])
    listed = await cust.get("/api/v2/devices/%s/calls" % device_id)
    assert [c["id"] for c in listed.body] == [mine["id"]]
    reply = await cust.post("/api/v2/devices/%s/calls" % other_id, {"method": "Sim.Echo"})
    assert (reply.status, reply.error["message"]) == (404, "no such device: %s" % other_id)
    assert (await cust.delete("/api/v2/calls/" + mine["id"])).status == 200


@pytest_twisted.ensureDeferred
async def test_calls_are_in_the_audit_log(server, admin):
    device_id, token = await admin.register()
    call = await queue(admin, device_id, "Sim.Echo")
    drop = await queue(admin, device_id, "Sim.Echo")
    assert (await admin.delete("/api/v2/calls/" + drop["id"])).status == 200
    sim = await connect_device(server, token)
    try:
        await call_state(admin, call["id"], "succeeded")

        async def entries() -> Any:
            reply = await admin.get("/api/v2/audit?start=-200&limit=200")
            found = [(e["method"], e["path"], e["status"]) for e in reply.body["entries"]
                     if e.get("device_id") == device_id]
            return found if len(found) >= 4 else None

        found = await eventually(entries)
        assert ("POST", "/api/v2/devices/%s/calls" % device_id, 202) in found
        assert ("DELETE", "/api/v2/calls/" + drop["id"], 200) in found
        assert ("CALL", "/api/v2/calls/%s (Sim.Echo)" % call["id"], 200) in found
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_limits_per_device_and_per_account(own_server: DashdProcess):
    own_server.configure({"calls": {"max_queued_per_device": 2, "max_queued_per_account": 3}})
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    first, _ = await admin.register()
    second, _ = await admin.register()
    for _ in range(2):
        await queue(admin, first, "Sim.Echo")
    reply = await admin.post("/api/v2/devices/%s/calls" % first, {"method": "Sim.Echo"})
    assert reply.status == 429
    assert reply.error["message"] == (
        "device %s has 2 calls queued or under way, the most it may have "
        "(calls.max_queued_per_device); try again when some have ended" % first)
    assert reply.headers.getRawHeaders("retry-after") == ["30"]
    one = await queue(admin, second, "Sim.Echo")
    reply = await admin.post("/api/v2/devices/%s/calls" % second, {"method": "Sim.Echo"})
    assert reply.status == 429
    assert reply.error["message"] == (
        "this account has 3 calls queued or under way, the most it may have "
        "(calls.max_queued_per_account); try again when some have ended")
    # An ended call no longer counts.
    assert (await admin.delete("/api/v2/calls/" + one["id"])).status == 200
    await queue(admin, second, "Sim.Echo")


@pytest_twisted.ensureDeferred
async def test_a_device_with_many_calls_queued_does_not_hold_up_the_others(
        own_server: DashdProcess):
    own_server.configure({"calls": {"sends_at_once": 2, "in_flight_per_device": 2}})
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    busy_id, busy_token = await admin.register()
    other_id, other_token = await admin.register()
    for i in range(40):
        await queue(admin, busy_id, "Test.Slow", params=i)
    busy = await connect_device(own_server, busy_token)
    answered: list[int] = []

    def slow(params: Any) -> Deferred:
        def done() -> Any:
            answered.append(params)
            return params

        return deferLater(reactor, 0.1, done)

    busy.handlers["Test.Slow"] = slow
    try:
        await eventually(lambda: len(answered) >= 2)
        call = await queue(admin, other_id, "Sim.Echo", params="me")
        other = await connect_device(own_server, other_token)
        try:
            await call_state(admin, call["id"], "succeeded")
            # It went out long before the busy device's queue was done.
            assert len(answered) < 30, answered
        finally:
            await other.stop()
    finally:
        await busy.stop()


@pytest_twisted.ensureDeferred
async def test_a_restart_or_kill_9_loses_nothing_queued_and_sends_nothing_twice(
        own_server: DashdProcess):
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    online_id, online_token = await admin.register()
    offline_id, offline_token = await admin.register()
    # A call sent and not answered when dashd is killed...
    sim = await connect_device(own_server, online_token)
    sim.handlers["Test.Silent"] = lambda params: Deferred()
    await device_online(admin, online_id)
    silent = await queue(admin, online_id, "Test.Silent", timeout=30)
    await eventually(lambda: "Test.Silent" in sim.methods)
    await call_state(admin, silent["id"], "sent")
    # ... and three queued for a device that is away.
    made = [await queue(admin, offline_id, "Sim.Echo", params=i) for i in range(3)]
    try:
        own_server.kill9()
        await own_server.start_async()
        done = await call_state(admin, silent["id"], "lost")
        assert done["error"]["message"] == (
            "sent, then the node that sent it is gone before an answer: whether the device "
            "did it is unknown")
        # The device came back by itself: the lost call is not sent again.
        echo = await queue(admin, online_id, "Sim.Echo", params="after")
        await call_state(admin, echo["id"], "succeeded")
        assert sim.methods.count("Test.Silent") == 1
        for call in made:
            assert (await admin.get("/api/v2/calls/" + call["id"])).body["state"] == "queued"
        # A clean restart too.
        own_server.stop()
        await own_server.start_async()
        away = await connect_device(own_server, offline_token)
        try:
            for call in made:
                await call_state(admin, call["id"], "succeeded")
            echoed = [f["params"] for f in away.frames if f.get("method") == "Sim.Echo"]
            assert echoed == [0, 1, 2]
        finally:
            await away.stop()
    finally:
        await sim.stop()
