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

from dashd.ops.gcfreeze import PROBE_POLL, FreezeSurvivors, GarbageProbe
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

        async def probed() -> bool:
            # Each interval a forked copy of dashd counts the garbage first;
            # a few objects are not worth a pause (test_garbage_probe_...).
            text = await metrics()
            return (sample(text, "dashd_gc_full_collection_seconds_count")
                    > sample(first, "dashd_gc_full_collection_seconds_count")
                    or "no collection of everything: the probe found only" in server.log())

        await eventually(probed, 10)
        # Frozen or not, the device's connection and the bridge go on.
        reply = await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
        assert reply.status == 200, reply
        device.stop()
        await device_online(admin, device_id, online=False)
    finally:
        server.stop()
    assert not server.problems()


def _frozen_cycles(n: int) -> list[weakref.ref[_Node]]:
    refs = []
    nodes = []
    for _ in range(n):
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        refs.append(weakref.ref(a))
        nodes.append(a)
    gc.freeze()
    del nodes, a, b
    return refs


def _run_probe(probe: GarbageProbe, reactor: Clock) -> list[int | None]:
    import time

    answers: list[int | None] = []
    probe.start(answers.append)
    deadline = time.monotonic() + 30
    while not answers and time.monotonic() < deadline:
        time.sleep(0.02)
        reactor.advance(PROBE_POLL)
    return answers


def test_garbage_probe_counts_frozen_garbage_in_a_forked_copy_and_leaves_ours():
    """The probe's child collects its copy of the heap: it finds the frozen
    cycles, and ours are untouched (still frozen, still there)."""
    gc.collect()
    gc.unfreeze()
    reactor = Clock()
    try:
        refs = _frozen_cycles(2000)
        frozen = gc.get_freeze_count()
        answers = _run_probe(GarbageProbe(reactor), reactor)
        assert len(answers) == 1 and answers[0] is not None
        assert answers[0] >= 4000  # both nodes of each cycle, at least
        assert all(r() is not None for r in refs)
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        gc.collect()
    assert all(r() is None for r in refs)
    # And with no frozen garbage it finds next to nothing.
    gc.freeze()
    try:
        answers = _run_probe(GarbageProbe(reactor), reactor)
        assert answers[0] is not None and answers[0] < 1000
    finally:
        gc.unfreeze()


class _FakeProbe:
    def __init__(self) -> None:
        self.running = False
        self.started: list[Callable[[int | None], None]] = []

    def start(self, done: Callable[[int | None], None]) -> None:
        self.started.append(done)


def test_everything_is_collected_only_when_the_probe_finds_it_worth_a_pause():
    reactor = _Reactor()
    probe = _FakeProbe()
    service = FreezeSurvivors(reactor, 60, probe=probe, worth_a_pause=1000)
    collected: list[int] = []
    service.collect_everything = lambda: collected.append(1) or 0  # type: ignore[method-assign]
    service.startService()
    try:
        reactor.advance(60)
        assert len(probe.started) == 1 and collected == []
        probe.started[0](999)  # not worth it
        assert collected == [] and service.skipped == 1
        reactor.advance(60)
        probe.started[1](1000)
        assert collected == [1]
        reactor.advance(60)
        probe.started[2](None)  # the probe failed: collect, as before
        assert collected == [1, 1]
        # A probe still running is not started again.
        probe.running = True
        reactor.advance(60)
        assert len(probe.started) == 3
    finally:
        service.stopService()
