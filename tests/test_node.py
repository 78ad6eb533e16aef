"""
A cluster node's timers (L{dashd.cluster.node}) on a Clock, with a fake bus
in place of L{dashd.cluster.bus.RedisBus}: a call to a device on another
node times out after its timeout plus L{CALL_GRACE}; a node not heard from
for cluster.node_timeout is found dead by the heartbeat (its devices show
offline at once, the calls to it fail, its devices are reaped and announced
offline); a node that says goodbye is gone at once. The fake runs no Lua:
what the scripts do in Redis, and nodes talking through a real Redis, are
tested in test_cluster.py and test_cluster_faults.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from clocked import World, done, failure_of, pending
from dashd.cluster.node import CALL_GRACE, Cluster
from dashd.cluster.presence import ATTACH, DETACH, REAP
from dashd.domain.errors import DeviceFailed, Offline, TimedOut, to_wire

TIMEOUT = 5.0  # cluster.node_timeout (the default)


class FakeRedis:
    """The few commands the node sends, on dictionaries; the scripts
    answer what the test sets in C{reaped} (devices a reap removes)."""

    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}
        self.scripts: list[tuple[str, list[Any], list[Any]]] = []
        self.seq = 0
        self.reaped: dict[str, list[str]] = {}
        # What the detach script answers for a device: 1 (the connection
        # held it, by default), 0 (another does, or it was reaped).
        self.detach_answers: dict[str, int] = {}

    def set(self, key: str, value: bytes, px: int | None = None, get: bool = False) -> Any:
        old = self.kv.get(key)
        self.kv[key] = value
        return old if get else True

    def delete(self, key: str) -> int:
        return int(self.kv.pop(key, None) is not None)

    def mget(self, keys: list[str]) -> list[Any]:
        return [self.kv.get(k) for k in keys]

    def pipeline(self, transaction: bool = True) -> "FakePipeline":
        return FakePipeline(self)

    def register_script(self, source: str) -> Any:
        name = {ATTACH: "attach", DETACH: "detach", REAP: "reap"}[source]

        def run(keys: list[Any], args: list[Any], client: Any) -> Any:
            result = answer(keys, args)
            if isinstance(client, FakePipeline):
                client.results.append(result)
            return result

        def answer(keys: list[Any], args: list[Any]) -> Any:
            self.scripts.append((name, keys, args))
            if name == "attach":
                self.seq += 1
                return self.seq
            if name == "reap":
                return [d.encode() for d in self.reaped.get(args[0], [])]
            return self.detach_answers.get(args[0], 1)

        return run


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis
        # What the scripts run in it answered (presence writes are pipelined).
        self.results: list[Any] = []

    def hgetall(self, key: str) -> None:
        pass

    def get(self, key: str) -> None:
        pass

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.results:
            return self.results
        return [{}, str(self._redis.seq).encode()]


class FakeBus:
    """RedisBus's interface: what is published is recorded (decoded), calls
    run at once on a L{FakeRedis}; L{hear} hands the node a message as if
    it came from Redis."""

    def __init__(self, url: str, reactor: Any, channels: list[bytes], on_messages: Any,
                 on_connected: Any, on_disconnected: Any, **kwargs: Any) -> None:
        self.channels = channels
        self._on_messages = on_messages
        self._on_connected = on_connected
        self.redis = FakeRedis()
        self.published: list[tuple[bytes, dict[str, Any]]] = []
        self.receivers = 1
        self.connected = False

    def start(self) -> None:
        self.connected = True
        self._on_connected()

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def publish(self, channel: bytes, message: bytes) -> Deferred[int]:
        self.published.append((channel, json.loads(message)))
        return succeed(self.receivers)

    def publish_nowait(self, channel: bytes, message: bytes) -> None:
        self.published.append((channel, json.loads(message)))

    def publish_unheard(self, channel: bytes, message: bytes, unheard: Any) -> None:
        self.published.append((channel, json.loads(message)))
        if not self.receivers:
            unheard(None)

    def call(self, fn: Any) -> Deferred[Any]:
        try:
            return succeed(fn(self.redis))
        except Exception as e:
            return fail(e)

    def hear(self, message: dict[str, Any]) -> None:
        self._on_messages([(self.channels[0], json.dumps(message).encode())])

    def sent(self, kind: str) -> list[dict[str, Any]]:
        return [m for _, m in self.published if m.get("t") == kind]


class Subscriber:
    """A notification stream on this node, recording what it is given."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.events: list[Any] = []

    def deliver(self, event: Any) -> None:
        self.events.append(event)

    def revoked(self) -> None:
        pass


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path, {"cluster.redis_url": "redis://fake", "cluster.node_timeout": TIMEOUT})
    yield w
    w.close()


@pytest.fixture
def node(world):
    """A started node (its service: the heartbeat's LoopingCall on the
    Clock), in sync with the fake Redis."""
    cluster = Cluster(world.config, world.clock, world.store, world.auth,
                      make_bus=FakeBus, monotonic=world.clock)
    service = cluster.service()
    service.startService()
    assert not cluster.presence.syncing
    yield cluster
    done(service.stopService())


def held_by(node, device_id: str, other: str = "nother", seq: int = 1) -> None:
    """Another node says it lives, and that it holds the device."""
    node.bus.hear({"t": "hb", "o": other})
    node.bus.hear({"t": "at", "id": device_id, "n": other, "c": other + ".1", "s": seq})


def call_sent(node) -> dict[str, Any]:
    return node.bus.sent("call")[-1]


def test_a_remote_call_times_out_after_its_timeout_and_the_grace(world, node):
    held_by(node, "d1")
    d = node.router.call("d1", "Sim.Sleep", {"s": 9}, 10.0)
    request = call_sent(node)
    assert (request["id"], request["m"], request["to"]) == ("d1", "Sim.Sleep", 10.0)
    # The other node stays alive (it beats) while the device does not answer.
    for _ in range(int((10.0 + CALL_GRACE) / 1.0) - 1):
        world.clock.advance(1.0)
        node.bus.hear({"t": "hb", "o": "nother"})
    world.clock.advance(0.99)
    pending(d)
    world.clock.advance(0.01)
    error = failure_of(d, TimedOut)
    assert error.message == "device d1 did not answer Sim.Sleep within 10 s"
    # Its answer, late, is ignored.
    node.bus.hear({"t": "res", "r": request["r"], "v": "late"})
    assert node._calls == {}


def test_a_remote_call_gets_the_answer_or_the_device_s_error(world, node):
    held_by(node, "d1")
    d = node.router.call("d1", "Sim.Echo", [1], 5.0)
    node.bus.hear({"t": "res", "r": call_sent(node)["r"], "v": [1]})
    assert done(d) == [1]
    d = node.router.call("d1", "Sim.Fail", None, 5.0)
    node.bus.hear({"t": "res", "r": call_sent(node)["r"],
                   "e": to_wire(DeviceFailed("no such thing", -32601))})
    error = failure_of(d, DeviceFailed)
    assert (error.message, error.code) == ("no such thing", -32601)
    # No timer is left behind.
    world.clock.advance(5.0 + CALL_GRACE)
    assert node._calls == {}


def test_a_call_nobody_receives_fails_at_once(world, node):
    held_by(node, "d1")
    node.bus.receivers = 0
    error = failure_of(node.router.call("d1", "Sim.Echo", 1, 5.0), Offline)
    assert error.message == "device d1 is offline (its node nother is not listening)"


def test_a_silent_node_is_found_dead_by_the_heartbeat(world, node):
    device, _ = world.register()
    held_by(node, device.id)
    stream = Subscriber(world.admin)
    node.hub.subscribe(stream)
    d = node.router.call(device.id, "Sim.Sleep", None, 600.0)
    node.bus.redis.reaped["nother"] = [device.id]
    # Nothing more from the other node: within the timeout it still counts...
    world.clock.advance(TIMEOUT)
    assert node.router.is_online(device.id)
    pending(d)
    # ...past it, its devices are offline at once, everywhere...
    world.clock.advance(0.01)
    assert not node.router.is_online(device.id)
    # ...and at the next heartbeat (every timeout / 4) the calls to it fail,
    # its devices are reaped in Redis and announced offline.
    world.clock.advance(TIMEOUT / 4)
    error = failure_of(d, Offline)
    assert error.message == ("device %s went offline before answering Sim.Sleep "
                             "(node nother stopped answering)" % device.id)
    assert [(n, a[0]) for n, _, a in node.bus.redis.scripts if n == "reap"] == [
        ("reap", "nother")]
    offline = [e for e in stream.events if e.name == "offline"]
    assert [(e.device_id, e.data) for e in offline] == [
        (device.id, {"reason": "node nother stopped answering"})]
    # Once only.
    world.clock.advance(TIMEOUT * 4)
    assert len([n for n, _, _ in node.bus.redis.scripts if n == "reap"]) == 1


def test_a_node_that_beats_is_never_found_dead(world, node):
    held_by(node, "d1")
    for _ in range(40):
        world.clock.advance(TIMEOUT / 2)
        node.bus.hear({"t": "hb", "o": "nother"})
    assert node.router.is_online("d1")
    assert not [n for n, _, _ in node.bus.redis.scripts if n == "reap"]


def test_this_node_beats_every_quarter_of_the_timeout(world, node):
    beats = len(node.bus.sent("hb"))
    world.clock.advance(TIMEOUT / 4)
    assert len(node.bus.sent("hb")) == beats + 1
    world.clock.pump([TIMEOUT / 4] * 4)
    assert len(node.bus.sent("hb")) == beats + 5
    # Its key in Redis is renewed with the timeout as its time to live.
    assert node.bus.redis.kv[node.keys.node(node.node_id)] == b"1"


def test_a_node_that_says_goodbye_is_gone_at_once(world, node):
    held_by(node, "d1")
    d = node.router.call("d1", "Sim.Sleep", None, 600.0)
    node.bus.hear({"t": "bye", "o": "nother"})
    error = failure_of(d, Offline)
    assert "(node nother stopped)" in error.message
    assert not node.router.is_online("d1")


def test_stopping_fails_the_remote_calls_at_once(world, tmp_path):
    cluster = Cluster(world.config, world.clock, world.store, world.auth,
                      make_bus=FakeBus, monotonic=world.clock)
    service = cluster.service()
    service.startService()
    held_by(cluster, "d1")
    d = cluster.router.call("d1", "Sim.Sleep", None, 600.0)
    done(service.stopService())
    assert failure_of(d, Offline).message == "this node is shutting down"
    assert cluster.bus.sent("bye")
    assert world.clock.getDelayedCalls() == []


def node_fleet(world, node):
    """A fleet over the node's router and hub (as dashd.assembly makes it),
    with the events it publishes recorded."""
    from dashd.app.fleet import Fleet

    fleet = Fleet(world.store, node.router, node.hub, world.clock, world.config)
    events: list[Any] = []
    fleet.event_observers.append(events.append)
    node.announce = fleet.publish
    return fleet, events


def session_on(fleet, device):
    from dashd.channel.session import DeviceSession

    closed: list[Any] = []
    session = DeviceSession(device, fleet, lambda text: None,
                            lambda code, reason: closed.append(code), peer="test")
    session.opened()
    return session


def test_a_connection_closed_after_the_node_was_taken_for_dead_is_no_news(world, node):
    """Fencing: this node was paused (SIGSTOP) past node_timeout; the others
    removed its devices from the presence (said offline then) and the
    devices reconnected elsewhere. The connections it closes on waking are
    not the devices' state: no offline event, no history entry."""
    fleet, events = node_fleet(world, node)
    moved, _ = world.register("moved")
    stayed, _ = world.register("stayed")
    for device in (moved, stayed):
        session_on(fleet, device)
    world.clock.advance(0)  # Redis recorded both connections
    assert [e.name for e in events] == ["online", "online"]
    node.bus.redis.detach_answers[moved.id] = 0  # Redis: not this connection's any more
    for session in node.sessions():
        session.closed("connection lost")
    world.clock.advance(0)  # the presence writes of a reactor turn go together
    offline = [(e.device_id, e.data) for e in events if e.name == "offline"]
    assert offline == [(stayed.id, {"reason": "connection lost"})]


def test_a_dead_node_s_devices_go_offline_in_their_history(world, node):
    """The node that reaps a dead node's devices says them offline through
    the fleet: live subscribers and the stored history alike."""
    fleet, events = node_fleet(world, node)
    device, _ = world.register()
    held_by(node, device.id)
    node.bus.redis.reaped["nother"] = [device.id]
    world.clock.advance(TIMEOUT + TIMEOUT / 4 + 0.01)
    assert [(e.name, e.device_id, e.data) for e in events] == [
        ("offline", device.id, {"reason": "node nother stopped answering"})]


def test_a_call_is_announced_by_the_node_holding_the_device_once_sent(world, node):
    """rpc.in.METHOD is published where the call reaches the device, not by
    the node the REST call came to: a call the holder refuses at once (its
    connection closing, say) was never announced."""
    fleet, events = node_fleet(world, node)
    device, _ = world.register()
    session = session_on(fleet, device)
    node.bus.hear({"t": "hb", "o": "nother"})
    call = {"t": "call", "o": "nother", "id": device.id, "m": "Sim.Echo", "p": {"n": 1},
            "to": 5.0, "a": 1}
    node.bus.hear(dict(call, r="nother.1"))
    assert [(e.name, e.data) for e in events if e.name.startswith("rpc.in.")] == [
        ("rpc.in.Sim.Echo", {"n": 1})]
    session.closing = True
    node.bus.hear(dict(call, r="nother.2", p={"n": 2}))
    [refused] = [m for m in node.bus.sent("res") if m["r"] == "nother.2"]
    assert refused["e"]["kind"] == "Offline"
    assert len([e for e in events if e.name.startswith("rpc.in.")]) == 1
    # Without "a" (firmware chunks, data pulls): never announced.
    session.closing = False
    node.bus.hear({"t": "call", "o": "nother", "r": "nother.3", "id": device.id,
                   "m": "OTA.Write", "p": {}, "to": 5.0})
    assert len([e for e in events if e.name.startswith("rpc.in.")]) == 1


def test_the_node_a_rest_call_came_to_does_not_announce_a_call_it_passes_on(world, node):
    fleet, events = node_fleet(world, node)
    device, _ = world.register()
    held_by(node, device.id)
    d = fleet.call(device, "Sim.Echo", {"n": 1}, 5.0)
    assert call_sent(node)["a"] == 1
    assert not [e for e in events if e.name.startswith("rpc.in.")]
    node.bus.hear({"t": "res", "r": call_sent(node)["r"], "v": {"n": 1}})
    assert done(d) == {"n": 1}


# Records of devices held elsewhere, kept for calls through this node.


def record_read(node, device: Any) -> None:
    """A call through this node read the device's record from the store."""
    node.router.remember(device, node.router.record_mark())


def test_the_record_of_a_device_held_elsewhere_is_kept_until_it_changes(world, node):
    device, _ = world.register()
    assert node.router.record(device.id) is None
    held_by(node, device.id)
    record_read(node, device)
    assert node.router.record(device.id) == device
    # A change of the record (made on any node) drops it.
    node.bus.hear({"t": "dc", "o": "nother", "device": {**device.__dict__,
                                                       "shared_with": []}})
    assert node.router.record(device.id) is None
    record_read(node, device)
    assert node.router.record(device.id) == device
    node.bus.hear({"t": "dx", "o": "nother", "id": device.id, "code": 4001, "reason": "x"})
    assert node.router.record(device.id) is None


def test_a_record_read_before_a_change_heard_meanwhile_is_not_kept(world, node):
    device, _ = world.register()
    held_by(node, device.id)
    mark = node.router.record_mark()
    # The change arrives while the store read is in flight.
    node.bus.hear({"t": "dc", "o": "nother", "device": {**device.__dict__,
                                                       "shared_with": []}})
    node.router.remember(device, mark)
    assert node.router.record(device.id) is None
    # A change made here counts too.
    mark = node.router.record_mark()
    node.router.device_changed(device)
    node.router.remember(device, mark)
    assert node.router.record(device.id) is None


def test_a_kept_record_goes_with_its_connection_its_node_or_redis(world, node):
    device, _ = world.register()
    held_by(node, device.id)
    record_read(node, device)
    # Another connection of the device (here on a third node).
    node.bus.hear({"t": "hb", "o": "third"})
    node.bus.hear({"t": "at", "id": device.id, "n": "third", "c": "third.1", "s": 2})
    assert node.router.record(device.id) is None
    record_read(node, device)
    assert node.router.record(device.id) == device
    # Its node says goodbye.
    node.bus.hear({"t": "bye", "o": "third"})
    assert node.router.record(device.id) is None
    # Redis lost: changes may have been missed.
    held_by(node, device.id, seq=3)
    record_read(node, device)
    assert node.router.record(device.id) == device
    node.bus.connected = False
    node._disconnected("gone")
    assert node.router.record(device.id) is None
    record_read(node, device)
    assert node.router.record(device.id) is None
    # Back: the resync starts afresh.
    node.bus.connected = True
    node._connected()
    held_by(node, device.id, seq=4)
    record_read(node, device)
    assert node.router.record(device.id) == device


def test_no_record_is_kept_of_a_device_offline_or_held_here(world, node):
    device, _ = world.register()
    record_read(node, device)  # offline
    assert node.router.record(device.id) is None
