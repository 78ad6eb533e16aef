"""
The cluster bus on its own: a real Redis (a namespace of this test's own),
and a Redis that is not there, which must give clear errors quickly.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor

import backends
from dashd.cluster.bus import BusUnavailable, RedisBus, redact
from support import eventually, within

pytestmark = pytest.mark.cluster


def make_bus(url: str, channels: list[bytes], received: list, states: list, **kw) -> RedisBus:
    return RedisBus(
        url, reactor, channels,
        on_messages=received.extend,
        on_connected=lambda: states.append("up"),
        on_disconnected=lambda why: states.append("down"),
        **kw,
    )


async def started_bus() -> tuple[RedisBus, bytes, list]:
    """A bus on the machine's Redis, up, subscribed to NS:a of a namespace
    of its own: (bus, NS, the messages it receives)."""
    backends.check_redis()
    ns = backends.redis_namespace().encode()
    received: list = []
    states: list = []
    bus = make_bus(backends.REDIS_URL, [ns + b":a"], received, states)
    bus.start()
    try:
        await eventually(lambda: states == ["up"])
    except BaseException:
        await within(bus.stop())
        raise
    return bus, ns, received


@pytest_twisted.ensureDeferred
async def test_publish_subscribe_and_commands_in_order():
    bus, ns, received = await started_bus()
    try:
        counts = [bus.publish(ns + b":a", b"m%d" % i) for i in range(200)]
        assert (await within(counts[-1])) == 1  # one subscriber: this bus
        await eventually(lambda: len(received) == 200)
        assert [data for _, data in received] == [b"m%d" % i for i in range(200)]
        # Commands run after what was queued before them.
        key = ns.decode() + ":k"
        bus.call(lambda c: c.set(key, b"1"))
        assert await within(bus.call(lambda c: c.get(key))) == b"1"
        await within(bus.call(lambda c: c.delete(key)))
    finally:
        await within(bus.stop())
    with pytest.raises(BusUnavailable, match="stopped"):
        await bus.publish(ns + b":a", b"late")


@pytest_twisted.ensureDeferred
async def test_a_message_someone_must_hear_tells_only_when_nobody_did():
    bus, ns, received = await started_bus()
    try:
        unheard: list = []
        bus.publish_unheard(ns + b":a", b"heard", unheard.append)
        bus.publish_unheard(ns + b":nobody", b"lost", unheard.append)
        await eventually(lambda: unheard)
        await eventually(lambda: received)
        # Behind a command queued after them: both publishes have run.
        await within(bus.call(lambda c: c.ping()))
        assert unheard == [None]
        assert [data for _, data in received] == [b"heard"]
    finally:
        await within(bus.stop())
    late: list = []
    bus.publish_unheard(ns + b":a", b"late", late.append)
    assert len(late) == 1 and late[0].check(BusUnavailable)


@pytest_twisted.ensureDeferred
async def test_a_missing_redis_fails_fast_and_clearly():
    port = backends.free_port()  # nothing listens there
    received: list = []
    states: list = []
    bus = make_bus("redis://127.0.0.1:%d/0" % port, [b"x"], received, states, timeout=1.0)
    bus.start()
    try:
        started = time.monotonic()
        with pytest.raises(BusUnavailable, match="Redis: .*(refused|Connection)"):
            await within(bus.publish(b"x", b"y"), 5)
        with pytest.raises(BusUnavailable):
            await within(bus.call(lambda c: c.get("k")), 5)
        unheard: list = []
        bus.publish_unheard(b"x", b"y", unheard.append)
        await eventually(lambda: unheard, 5)
        assert unheard[0].check(BusUnavailable)
        assert time.monotonic() - started < 4
        # Live notifications are dropped, never queued without bound.
        for _ in range(100):
            bus.publish_nowait(b"x", b"z")
        assert states == []
    finally:
        await within(bus.stop(), 10)


@pytest_twisted.ensureDeferred
async def test_a_full_queue_refuses_at_once():
    bus = make_bus("redis://127.0.0.1:%d/0" % backends.free_port(), [b"x"], [], [],
                   queue_size=3)
    # Not started: nothing drains the queue.
    ds = [bus.publish(b"x", b"%d" % i) for i in range(5)]
    outcomes = []
    for d in ds[3:]:
        try:
            await d
        except BusUnavailable as e:
            outcomes.append(str(e))
    assert outcomes == ["the cluster bus is overloaded (Redis is not keeping up)"] * 2
    for d in ds[:3]:
        d.addErrback(lambda f: None)


def test_redact():
    assert redact("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("redis://u:pw@h/0") == "redis://u:***@h/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
