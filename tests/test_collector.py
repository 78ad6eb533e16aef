"""
dashd.ops.gcfreeze: what survives a full collection is frozen; every interval
everything is thawed and collected once. Unit tests in this process with a
fake clock, and dashd itself with a short interval.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any, Callable

import pytest_twisted
from twisted.internet.task import Clock

from dashd.ops.gcfreeze import FreezeSurvivors
from support import Client, DashdProcess, connect_device, device_online, eventually
from test_ops import sample


class _Reactor(Clock):
    """A fake clock whose callFromThread queues, as the reactor's does."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[Callable[[], Any]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.from_threads.append(lambda: f(*args))

    def run_queued(self) -> None:
        queued, self.from_threads = self.from_threads, []
        for f in queued:
            f()


class _Node:
    other: Any = None


def test_survivors_frozen_and_frozen_cycles_collected_each_interval():
    reactor = _Reactor()
    service = FreezeSurvivors(reactor, 60)
    gc.unfreeze()
    service.startService()
    try:
        gc.collect()
        # Scheduled once on the reactor thread, not done inside the collector.
        assert gc.get_freeze_count() == 0 and len(reactor.from_threads) == 1
        gc.collect()
        assert len(reactor.from_threads) == 1
        reactor.run_queued()
        assert gc.get_freeze_count() > 0

        # A cycle among frozen objects: the collector does not see it...
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        gc.freeze()
        del a, b
        gc.collect()
        assert gone() is not None
        # ...until the interval's collection of everything.
        reactor.advance(60)
        assert gone() is None
        assert gc.get_freeze_count() > 0  # the survivors, frozen again
    finally:
        service.stopService()
    assert gc.get_freeze_count() == 0
    assert service._collected not in gc.callbacks
    reactor.advance(60)  # the loop stopped with the service


def test_a_growing_fleet_is_frozen_every_growth_devices():
    """A storm's new devices are most of the heap: without a freeze on the
    way, the first full collection walks them all (0.5-0.7 s at 10,000)."""
    from dashd.ops.gcfreeze import GROWTH_CHECK

    reactor = _Reactor()
    fleet = [0]
    service = FreezeSurvivors(reactor, 3600, lambda: fleet[0], growth=100)
    gc.unfreeze()
    service.startService()
    try:
        fleet[0] = 99
        reactor.advance(GROWTH_CHECK)
        assert gc.get_freeze_count() == 0 and service.growth_freezes == 0
        fleet[0] = 100
        reactor.advance(GROWTH_CHECK)
        assert gc.get_freeze_count() > 0 and service.growth_freezes == 1
        # Counted from the last freeze, not from the start.
        fleet[0] = 150
        reactor.advance(GROWTH_CHECK)
        assert service.growth_freezes == 1
        # A fleet that shrinks and comes back is no growth...
        fleet[0] = 20
        reactor.advance(GROWTH_CHECK)
        fleet[0] = 110
        reactor.advance(GROWTH_CHECK)
        assert service.growth_freezes == 1
        # ...beyond where it went down to, it is.
        fleet[0] = 120
        reactor.advance(GROWTH_CHECK)
        assert service.growth_freezes == 2
    finally:
        service.stopService()
    assert gc.get_freeze_count() == 0
    reactor.advance(GROWTH_CHECK)  # the check stopped with the service
    assert service.growth_freezes == 2


@pytest_twisted.ensureDeferred
async def test_dashd_freezes_survivors_and_keeps_working(tmp_path):
    server = DashdProcess(str(tmp_path), {"gc": {"full_collection_interval": 1}})
    await server.start_async()
    try:
        admin = Client(server, server.admin_key)

        async def metrics() -> str:
            reply = await admin.get("/metrics")
            assert reply.status == 200
            return reply.raw.decode()

        first = await metrics()
        device_id, token = await admin.register()
        device = await connect_device(server, token)
        await device_online(admin, device_id)

        async def collected_since() -> bool:
            text = await metrics()
            return (sample(text, "dashd_gc_full_collection_seconds_count")
                    > sample(first, "dashd_gc_full_collection_seconds_count")
                    and sample(text, "dashd_gc_frozen_objects") > 0)

        await eventually(collected_since, 10)
        # Frozen or not, the device's connection and the bridge go on.
        reply = await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
        assert reply.status == 200, reply
        device.stop()
        await device_online(admin, device_id, online=False)
    finally:
        server.stop()
    assert not server.problems()
