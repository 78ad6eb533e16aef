"""
The device session (L{dashd.channel.session.DeviceSession}) on a Clock: the
calls dashd makes on its own and their timers, with the default timings
(they cost nothing here). The WebSocket around it (pings, frames, the
transport's buffers) is tested end to end in test_device_channel.py and
test_limits.py.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.defer import ensureDeferred as ensure

from clocked import World, done, failure_of, pending
from dashd.channel import closecodes, frames
from dashd.domain.errors import Busy, Offline, Stalled, TimedOut
from dashd.domain.events import Event


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def test_sys_getinfo_comes_after_info_request_delay(world):
    delay = world.config["device.info_request_delay"]
    device, _ = world.register()
    fake = world.connect(device, answer_info=False)
    world.clock.advance(delay - 0.01)
    assert fake.calls("Sys.GetInfo") == []
    world.clock.advance(0.01)
    (ask,) = fake.calls("Sys.GetInfo")
    fake.answer(ask, {"fw_id": "fw-7", "fw_version": "1.7", "uptime": 5})
    stored = done(world.store.get_device(device.id))
    assert stored.info == {"fw_id": "fw-7", "fw_version": "1.7", "uptime": 5}
    assert stored.shadow["state"]["reported"]["ota"] == {"fw_id": "fw-7", "fw_version": "1.7"}
    # Asked once only.
    world.clock.advance(3600)
    assert len(fake.calls("Sys.GetInfo")) == 1


def test_sys_getinfo_waits_while_the_device_s_input_is_unread(world):
    # A connect storm: the device's heartbeat waits in its socket, unread,
    # past info_request_delay. dashd asks for the info only once nothing
    # from the device is waiting to be read (or after MAX_INFO_WAITS delays).
    from clocked import FakeDevice
    from dashd.channel.session import DeviceSession

    delay = world.config["device.info_request_delay"]
    device, _ = world.register()
    waiting = {"bytes": True}
    fake = FakeDevice(world, device)
    fake.session = DeviceSession(device, world.fleet, fake._send, fake._close, peer="test",
                                 unread=lambda: waiting["bytes"])
    fake.open()
    for _ in range(3):
        world.clock.advance(delay)
    assert fake.calls("Sys.GetInfo") == []
    # Read: it was the heartbeat.
    waiting["bytes"] = False
    fake.request("Dash.Heartbeat", {"fw_id": "fw-1", "fw_version": "1"})
    for _ in range(3):
        world.clock.advance(delay)
    assert fake.calls("Sys.GetInfo") == []

    # Unread input that never turns into a heartbeat: asked all the same,
    # after at most MAX_INFO_WAITS more delays.
    other, _ = world.register()
    fake = FakeDevice(world, other)
    fake.session = DeviceSession(other, world.fleet, fake._send, fake._close, peer="test",
                                 unread=lambda: True)
    fake.open()
    for _ in range(DeviceSession.MAX_INFO_WAITS):
        world.clock.advance(delay)
    assert fake.calls("Sys.GetInfo") == []
    world.clock.advance(delay)
    assert len(fake.calls("Sys.GetInfo")) == 1

    # Nothing unread: asked after the delay, as always.
    third, _ = world.register()
    fake = FakeDevice(world, third)
    fake.session = DeviceSession(third, world.fleet, fake._send, fake._close, peer="test",
                                 unread=lambda: False)
    fake.open()
    world.clock.advance(delay)
    assert len(fake.calls("Sys.GetInfo")) == 1


def test_a_device_that_sends_heartbeat_is_not_asked_for_its_info(world):
    fake = world.connect(answer_info=True)
    world.clock.advance(world.config["device.info_request_delay"] * 10)
    assert fake.calls("Sys.GetInfo") == []


def test_a_device_that_ignores_sys_getinfo_is_not_dropped(world):
    fake = world.connect(answer_info=False)
    world.clock.advance(world.config["device.info_request_delay"])
    world.clock.advance(world.config["rpc.default_timeout"])
    assert fake.session.pending_count == 0
    assert fake.closed_with is None
    assert world.router.is_online(fake.device_id)


def test_a_call_times_out_after_its_timeout_and_a_late_answer_is_ignored(world):
    fake = world.connect()
    d = ensure(world.app.devices.call(world.admin, fake.device_id, "Sim.Sleep", {"s": 9}, 5.0))
    pending(d)
    (call,) = fake.calls("Sim.Sleep")
    world.clock.advance(4.99)
    pending(d)
    world.clock.advance(0.01)
    error = failure_of(d, TimedOut)
    assert error.message == "device %s did not answer Sim.Sleep within 5 s" % fake.device_id
    assert fake.session.pending_count == 0
    sent = len(fake.sent)
    fake.answer(call, "late")
    assert len(fake.sent) == sent and fake.closed_with is None
    # The next call goes through as usual.
    d = ensure(world.app.devices.call(world.admin, fake.device_id, "Sim.Echo", [1], 5.0))
    fake.answer(fake.calls("Sim.Echo")[0], [1])
    assert done(d) == [1]
    assert world.clock.getDelayedCalls() == []


def test_a_report_s_shadow_update_event_has_its_view_made_only_when_read(world, monkeypatch):
    from dashd.domain import shadow

    device, _ = world.register()
    done(world.app.devices.change(world.admin, device.id,
                                  shadow_update={"state": {"desired": {"led": "on"}}}))
    fake = world.connect(device)
    views = []
    real_view = shadow.view
    monkeypatch.setattr(shadow, "view", lambda *a, **k: views.append(1) or real_view(*a, **k))
    reply = fake.request("Dash.Shadow.Update", {"state": {"reported": {"led": "off", "t": 1}}})
    assert reply["result"] == {"version": 3}
    (event,) = world.named("shadow.update", device.id)[-1:]
    assert views == []  # nothing read the event's data yet
    stored = done(world.store.get_device(device.id))
    assert event.data == real_view(stored.shadow)
    assert event.data["state"]["delta"] == {"led": "on"}
    assert views == [1]
    assert event.data is event.data  # made once
    assert event.payload == json.dumps(
        {"name": "shadow.update", "id": device.id, "data": event.data},
        separators=(",", ":"), ensure_ascii=False)
    assert event == Event("shadow.update", device.id, event.data, device.account_id, ())


def test_shadow_delta_on_connect(world):
    device, _ = world.register()
    done(world.app.devices.change(world.admin, device.id,
                                  shadow_update={"state": {"desired": {"led": "on"}}}))
    fake = world.connect(device)
    (delta,) = fake.calls("Shadow.Delta")
    assert delta["params"] == {"state": {"led": "on"}, "version": 1}
    # Nothing is sent when the device reports what is desired.
    fake.answer(delta)
    reply = fake.request("Dash.Shadow.Update", {"state": {"reported": {"led": "on"}}})
    assert "result" in reply
    fake2 = world.connect(device)
    assert fake2.calls("Shadow.Delta") == []


def test_shadow_delta_is_not_retried_after_method_not_found(world):
    device, _ = world.register()
    desire = {"state": {"desired": {"n": 1}}}
    done(world.app.devices.change(world.admin, device.id, shadow_update=desire))
    fake = world.connect(device)
    (delta,) = fake.calls("Shadow.Delta")
    fake.refuse(delta, frames.METHOD_NOT_FOUND, "method not found")
    done(world.app.devices.change(world.admin, device.id,
                                  shadow_update={"state": {"desired": {"n": 2}}}))
    assert len(fake.calls("Shadow.Delta")) == 1
    # For this connection only: the next one is told again.
    fake.gone()
    again = world.connect(device)
    assert again.calls("Shadow.Delta")[0]["params"]["state"] == {"n": 2}


def test_shadow_delta_is_sent_again_after_other_errors(world):
    device, _ = world.register()
    done(world.app.devices.change(world.admin, device.id,
                                  shadow_update={"state": {"desired": {"n": 1}}}))
    fake = world.connect(device)
    fake.refuse(fake.calls("Shadow.Delta")[0], 500, "busy")
    done(world.app.devices.change(world.admin, device.id,
                                  shadow_update={"state": {"desired": {"n": 2}}}))
    deltas = fake.calls("Shadow.Delta")
    assert len(deltas) == 2 and deltas[1]["params"]["state"] == {"n": 2}
    # One that times out does not stop the next either.
    world.clock.advance(world.config["rpc.default_timeout"])
    done(world.app.devices.change(world.admin, device.id,
                                  shadow_update={"state": {"desired": {"n": 3}}}))
    assert len(fake.calls("Shadow.Delta")) == 3


def test_a_device_that_does_not_read_is_dropped_after_write_stall_timeout(world):
    stall = world.config["device.write_stall_timeout"]
    fake = world.connect()
    d = ensure(world.app.devices.call(world.admin, fake.device_id, "Sim.Sleep", None, 600.0))
    fake.session.stalled()
    # No more calls meanwhile.
    failure_of(world.app.devices.call(world.admin, fake.device_id, "Sim.Echo", None, 5.0),
               Stalled)
    world.clock.advance(stall - 0.01)
    assert fake.closed_with is None
    # Drained in time: nothing happens, calls go through again.
    fake.session.unstalled()
    world.clock.advance(stall)
    assert fake.closed_with is None
    pending(d)
    # Stalled again, for good: dropped, and the call in flight fails at once.
    fake.session.stalled()
    world.clock.advance(stall)
    assert fake.closed_with == (closecodes.NOT_READING, "not reading: dropped")
    error = failure_of(d, Offline)
    assert "disconnected before answering Sim.Sleep (not reading: dropped)" in error.message
    # The close comes back through the WebSocket; the device is offline then.
    fake.gone("not reading: dropped")
    assert not world.router.is_online(fake.device_id)
    assert world.named("offline", fake.device_id)[-1].data == {"reason": "not reading: dropped"}


def test_a_second_connection_fails_the_first_ones_calls_at_once(world):
    device, _ = world.register()
    first = world.connect(device)
    d = ensure(world.app.devices.call(world.admin, device.id, "Sim.Sleep", None, 600.0))
    pending(d)
    second = world.connect(device)
    error = failure_of(d, Offline)
    assert "replaced by a new connection from" in error.message
    assert first.closed_with[0] == closecodes.REPLACED
    # The first connection's close does not take the device offline.
    first.gone("replaced")
    assert world.router.is_online(device.id)
    d = ensure(world.app.devices.call(world.admin, device.id, "Sim.Echo", 1, 5.0))
    second.answer(second.calls("Sim.Echo")[0], 1)
    assert done(d) == 1
    assert first.calls("Sim.Echo") == []


def test_a_disconnect_fails_pending_calls_at_once_and_stops_their_timers(world):
    fake = world.connect()
    calls = [ensure(world.app.devices.call(world.admin, fake.device_id, "Sim.Sleep", i, 600.0))
             for i in range(3)]
    fake.gone("connection lost")
    for d in calls:
        error = failure_of(d, Offline)
        assert error.message == ("device %s disconnected before answering Sim.Sleep "
                                 "(connection lost)" % fake.device_id)
    assert world.clock.getDelayedCalls() == []
    assert world.named("offline", fake.device_id)[-1].data == {"reason": "connection lost"}
    failure_of(world.app.devices.call(world.admin, fake.device_id, "Sim.Echo", None, 5.0),
               Offline)


def test_deleting_a_device_closes_its_connection_and_fails_its_calls(world):
    fake = world.connect()
    d = ensure(world.app.devices.call(world.admin, fake.device_id, "Sim.Sleep", None, 600.0))
    done(world.app.devices.delete(world.admin, fake.device_id))
    assert fake.closed_with == (closecodes.DELETED, "device deleted")
    failure_of(d, Offline)


def test_rpc_in_is_published_only_for_calls_that_reach_the_device(tmp_path):
    """A call refused before it was sent (too many in flight, the connection
    closing) gets its error and no rpc.in event: nothing reached the device."""
    w = World(tmp_path, {"device.max_calls_in_flight": 1})
    try:
        device, _ = w.register()
        fake = w.connect(device)
        first = w.fleet.call(device, "Sim.Wait", {"n": 1}, 5.0)
        assert [e.data for e in w.named("rpc.in.Sim.Wait")] == [{"n": 1}]
        failure_of(w.fleet.call(device, "Sim.Wait", {"n": 2}, 5.0), Busy)
        fake.session.closing = True  # what a graceful stop sets first
        failure_of(w.fleet.call(device, "Sim.Wait", {"n": 3}, 5.0), Offline)
        assert [e.data for e in w.named("rpc.in.Sim.Wait")] == [{"n": 1}]
        fake.session.closing = False
        (sent,) = fake.calls("Sim.Wait")
        fake.answer(sent, "ok")
        assert done(first) == "ok"
    finally:
        w.close()
