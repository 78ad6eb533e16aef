"""
One device may not slow every account: each device's frames go through a
token bucket of its own, its excess is answered and logged as its own, a
device far over its limit is closed, and the store's pending writes are
shared between devices and accounts. Unit tests on a Clock with a store
that answers when told; an end-to-end flood beside a quiet device.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from dashd.app import history
from dashd.app.fleet import Fleet
from dashd.channel import closecodes
from dashd.channel.hub import LocalHub
from dashd.channel.router import LocalRouter
from dashd.channel.session import MAX_STORE_CALLS_IN_FLIGHT, DeviceSession
from dashd.config import load
from dashd.domain.events import Event
from dashd.domain.model import Device
from support import SECRETS, Client, DashdProcess, connect_device, device_online, eventually


class SlowStore:
    """A store whose writes wait until the test lets them go."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Deferred[Any], Any]] = []

    def _later(self, value: Any = None) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append((d, value))
        return d

    def device_connected(self, device_id: str, now: float) -> Deferred[Any]:
        return succeed(None)

    def record_info(self, device_id: str, info: Any, update: Any, now: float) -> Deferred[Any]:
        return self._later((Device(id=device_id, account_id="a1", name="x", created=0.0), None))

    def append_event(self, *args: Any) -> Deferred[Any]:
        return self._later()

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d, value in waiting:
            d.callback(value)


def _session(rate: float = 2, burst: int = 5) -> tuple[DeviceSession, list[dict], list, Clock]:
    clock = Clock()
    clock.advance(1000)
    config = load(None, {"device.frames_per_second": rate, "device.frame_burst": burst})
    fleet = Fleet(SlowStore(), LocalRouter(), LocalHub(), clock, config)  # type: ignore[arg-type]
    sent: list[dict] = []
    closed: list[tuple[int, str]] = []
    device = Device(id="dflood0000000", account_id="a1", name="flood", created=0.0)
    session = DeviceSession(device, fleet, lambda text: sent.append(json.loads(text)),
                            lambda code, reason: closed.append((code, reason)))
    session.opened()
    return session, sent, closed, clock


def _log(i: int) -> dict:
    return {"id": i, "method": "Dash.Log", "params": {"msg": "line %d" % i}}


def test_each_device_has_a_token_bucket_of_frames():
    session, sent, closed, clock = _session(rate=2, burst=5)
    with capturedLogs() as events:
        for i in range(7):
            session.received(_log(i))
        # Answers to dashd's own calls are not counted.
        session.received({"id": 999, "result": True})
    answers = {f["id"]: f for f in sent if "id" in f}
    assert [answers[i].get("result") for i in range(5)] == [True] * 5
    for i in (5, 6):
        assert answers[i]["error"]["code"] == 429
        assert answers[i]["error"]["message"] == (
            "over this device's limit of 2 frames a second (bursts of 5): frame dropped")
    # The device's own excess, logged as such (once, however many).
    warnings = [e for e in events if "over its limit" in e.get("why", "")]
    assert len(warnings) == 1 and warnings[0]["id"] == "dflood0000000"
    assert session.fleet.frames_limited == 2
    # The rate refills the bucket.
    clock.advance(1.0)
    session.received(_log(7))
    session.received(_log(8))
    session.received(_log(9))
    answers = {f["id"]: f for f in sent if "id" in f}
    assert answers[7].get("result") is True and answers[8].get("result") is True
    assert answers[9]["error"]["code"] == 429
    assert closed == []


def test_a_device_far_over_its_limit_is_closed():
    session, sent, closed, clock = _session(rate=2, burst=5)
    # 10 times what the rate lets through in 10 s: 200 dropped frames.
    for i in range(5 + 200):
        session.received({"method": "Dash.Log", "params": {"msg": i}})
    assert closed == []
    session.received({"method": "Dash.Log", "params": {}})
    assert closed == [(closecodes.TOO_FAST, "far over the frame rate limit")]
    # One that is a little over its limit for long is only limited.
    session, sent, closed, clock = _session(rate=2, burst=5)
    for second in range(60):
        for i in range(4):
            session.received({"method": "Dash.Log", "params": {"msg": i}})
        clock.advance(1.0)
    assert closed == []


def test_a_device_s_calls_waiting_for_the_store_are_bounded():
    session, sent, closed, clock = _session(rate=0, burst=5)
    for i in range(MAX_STORE_CALLS_IN_FLIGHT + 3):
        session.received({"id": i, "method": "Dash.Heartbeat", "params": {"uptime": i}})
    refused = [f for f in sent if f.get("error", {}).get("code") == 429]
    assert [f["id"] for f in refused] == [MAX_STORE_CALLS_IN_FLIGHT + i for i in range(3)]
    assert "already has %d calls waiting for the store" % MAX_STORE_CALLS_IN_FLIGHT \
        in refused[0]["error"]["message"]
    session.fleet.store.release()
    session.received({"id": 100, "method": "Dash.Heartbeat", "params": {}})
    assert not any(f.get("id") == 100 and "error" in f for f in sent)


def _event(device: str, account: str, i: int) -> Event:
    return Event("rpc.out.Log", device, {"msg": "line %d" % i}, account, ())


def test_pending_history_writes_are_shared_between_devices_and_accounts():
    clock = Clock()
    store = SlowStore()
    h = history.History(store, clock, keep=100)  # type: ignore[arg-type]
    with capturedLogs() as events:
        # More than the whole store's share (MAX_PENDING) from one device.
        for i in range(history.MAX_PENDING + 1000):
            h.observe(_event("dflood", "a1", i))
        # Another device, and another account, still get their place.
        for i in range(20):
            h.observe(_event("dquiet", "a1", i))
            h.observe(_event("dother", "a2", i))
    assert len(store.waiting) == history.MAX_PENDING_PER_DEVICE + 40
    lost = [e for e in events if "could not be stored" in e.get("log_format", "")]
    assert len(lost) == 1
    assert "device dflood sends them faster than they are stored" in lost[0]["why"]
    # Many devices of one account cannot take the whole store either.
    for d in range(40):
        for i in range(history.MAX_PENDING_PER_DEVICE):
            h.observe(_event("dmany%d" % d, "a3", i))
    h.observe(_event("dother", "a2", 99))
    assert sum(1 for _ in store.waiting) == (
        history.MAX_PENDING_PER_DEVICE + 41 + history.MAX_PENDING_PER_ACCOUNT)
    store.release()
    assert h.pending == 0 and h._by_device == {} and h._by_account == {}


@pytest_twisted.ensureDeferred
async def test_a_flooding_device_loses_its_own_lines_only(tmp_path):
    """One device sent 50,000 Dash.Log lines in 1.4 s: another account's
    REST writes went from 4 ms to 1.3 s and another device lost 14 of 20
    lines. Now the flood is answered as the flooder's, and the others'
    lines are all stored."""
    server = DashdProcess(str(tmp_path), {"logs": {"max_per_device": 100}})
    await server.start_async()
    admin = Client(server, server.admin_key)
    created = await admin.post("/api/v2/accounts", {"name": "elsewhere"})
    other = Client(server, created.body["admin_key"]["key"])
    SECRETS.add(other.key)
    flood_id, flood_token = await admin.register("flood")
    quiet_id, quiet_token = await other.register("quiet")
    flood = await connect_device(server, flood_token, reconnect=False)
    quiet = await connect_device(server, quiet_token)
    try:
        await device_online(admin, flood_id)
        await device_online(other, quiet_id)
        # 20,000 lines, 500 a message (within device.max_message_bytes).
        for chunk in range(40):
            flood.send_raw("".join(json.dumps({"id": chunk * 1000 + i, "method": "Dash.Log",
                                               "params": {"msg": "flood %d" % i}})
                                   for i in range(500)))
        for i in range(20):
            quiet.notify("Dash.Log", {"msg": "quiet %d" % i})
        started = time.monotonic()
        reply = await other.post("/api/v2/devices/" + quiet_id, {"name": "still quick"})
        assert reply.status == 200
        write_seconds = time.monotonic() - started

        async def all_quiet_lines() -> Any:
            reply = await other.post("/api/v2/logs", {"start": -100, "device_id": quiet_id})
            lines = [e for e in reply.body["events"] if e["name"] == "rpc.out.Log"]
            return lines if len(lines) == 20 else None

        lines = await eventually(all_quiet_lines, 20)
        assert [e["data"]["msg"] for e in lines] == ["quiet %d" % i for i in range(20)]
        limited = await eventually(
            lambda: [f for f in flood.frames if f.get("error", {}).get("code") == 429], 20)
        assert "over this device's limit of 50 frames a second" in limited[0]["error"]["message"]
        await eventually(lambda: flood.close_code is not None, 20)
        assert flood.close_code == closecodes.TOO_FAST, (flood.close_code, server.log()[-3000:])
        print("another account's REST write took %.3f s during the flood" % write_seconds)
    finally:
        await flood.stop()
        await quiet.stop()
        server.stop()
    log = server.log()
    assert ("device %s: 1 of its frames dropped: it is over its limit of 50 frames a second"
            % flood_id) in log
    assert "device %s closed: it kept sending far over its limit" % flood_id in log
    assert quiet_id not in [line for line in log.splitlines() if "over its limit" in line]
    assert not server.problems()
