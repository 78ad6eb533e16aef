"""
A turn of the reactor handles a bounded number of ready connections
(dashd.ops.turns), and a device whose pong is in its socket but not yet
read by dashd is not dropped for a ping timeout (DeviceProtocol). Both in
this process: a real epoll reactor that is never run, turn by turn, and a
device protocol on a Clock with a real socket.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import Clock

from dashd.channel.websocket import DeviceProtocol
from dashd.ops import turns

epollreactor = pytest.importorskip("twisted.internet.epollreactor")


class _Ready(FileDescriptor):
    """A socket with a byte waiting that it never reads: level-triggered
    epoll reports it ready every turn, as a storm's handshakes stay ready."""

    def __init__(self, reactor: Any, sock: socket.socket, seen: list[int]) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.seen = seen

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        self.seen.append(self.fileno())


@pytest.fixture
def ready_reactor():
    reactor = epollreactor.EPollReactor()
    pairs = [socket.socketpair() for _ in range(100)]
    seen: list[int] = []
    readers = []
    for ours, theirs in pairs:
        theirs.send(b"x")
        reader = _Ready(reactor, ours, seen)
        reactor.addReader(reader)
        readers.append(reader)
    yield reactor, readers, seen
    for reader in readers:
        reactor.removeReader(reader)
    for ours, theirs in pairs:
        ours.close()
        theirs.close()
    reactor._poller.close()


def test_unbounded_one_turn_handles_every_ready_connection(ready_reactor):
    """What Twisted does by itself: the reason for the bound."""
    reactor, readers, seen = ready_reactor
    reactor.doPoll(0)
    assert len(seen) == len(readers)


def test_a_turn_handles_at_most_the_bound_and_every_connection_gets_its_turn(ready_reactor):
    reactor, readers, seen = ready_reactor
    assert turns.bound_turns(reactor, 16)
    turns_needed = -(-len(readers) // 16)
    for _ in range(turns_needed):
        before = len(seen)
        reactor.doPoll(0)
        assert 0 < len(seen) - before <= 16
    # The kernel hands the ready ones out in turn: none waited for another
    # to be served twice.
    assert sorted(seen[: len(readers)]) == sorted(r.fileno() for r in readers)
    # Registering and unregistering still work through the bound poller.
    reactor.removeReader(readers[0])
    reactor.addReader(readers[0])
    assert turns.bound_turns(reactor, 8)  # again: the bound changes, no second wrapper
    before = len(seen)
    reactor.doPoll(0)
    assert len(seen) - before == 8


def test_a_full_turn_says_dashd_is_behind(ready_reactor, monkeypatch):
    monkeypatch.setattr(turns, "_last_full", float("-inf"))
    reactor, readers, seen = ready_reactor
    turns.bound_turns(reactor, 200)
    reactor.doPoll(0)  # 100 ready, room for 200: not full
    assert not turns.behind(10)
    turns.bound_turns(reactor, 16)
    reactor.doPoll(0)
    assert turns.behind(10)
    monkeypatch.setattr(turns, "_last_full", turns._last_full - 11)
    assert not turns.behind(10)


def test_other_reactors_are_left_alone():
    assert not turns.bound_turns(Clock(), 16)
    reactor = epollreactor.EPollReactor()
    try:
        assert not turns.bound_turns(reactor, 0)
        assert not isinstance(reactor._poller, turns._CappedPoller)
    finally:
        reactor._poller.close()


class _Timer:
    """Autobahn's batched timer, on a Clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def call_later(self, delay: float, f: Any, *args: Any) -> Any:
        return self.clock.callLater(delay, f, *args)


class _Factory:
    def __init__(self, clock: Clock) -> None:
        self._batched_timer = _Timer(clock)
        self.ping_waits = 0


class _Transport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


@pytest.fixture
def device(monkeypatch):
    monkeypatch.setattr(turns, "_last_full", float("-inf"))  # no storm
    ours, theirs = socket.socketpair()
    clock = Clock()
    proto = DeviceProtocol()
    proto.factory = _Factory(clock)
    proto.transport = _Transport(ours)
    proto.state = WebSocketProtocol.STATE_OPEN
    proto.autoPingTimeout = 10
    proto.autoPingPendingSeq = 1
    dropped: list[str] = []
    proto.dropConnection = lambda abort=False: dropped.append(proto.wasNotCleanReason)
    yield proto, theirs, clock, dropped
    ours.close()
    theirs.close()


def test_a_device_that_sent_nothing_is_dropped_at_its_ping_timeout(device):
    proto, _, clock, dropped = device
    proto.onAutoPingTimeout()
    assert dropped and "ping timeout" in dropped[0]
    assert clock.getDelayedCalls() == []


def test_a_pong_waiting_unread_in_the_socket_gets_more_time(device):
    """The pong is there, dashd has not read it yet (a connect storm's
    backlog, a bounded turn): no drop; when dashd reads it, Autobahn cancels
    the timeout as for any pong."""
    proto, theirs, clock, dropped = device
    theirs.send(b"\x8a\x00")  # a pong frame, unread
    proto.onAutoPingTimeout()
    assert dropped == []
    assert proto.autoPingTimeoutCall is not None and proto.autoPingTimeoutCall.active()
    assert proto.factory.ping_waits == 1
    # ... but not for ever: a device that keeps bytes there unread (dashd
    # not reading it) is dropped after MAX_PING_WAITS more timeouts.
    for _ in range(DeviceProtocol.MAX_PING_WAITS - 1):
        clock.advance(proto.autoPingTimeout)
        assert dropped == []
    clock.advance(proto.autoPingTimeout)
    assert len(dropped) == 1
    assert proto.factory.ping_waits == DeviceProtocol.MAX_PING_WAITS


def test_in_a_storm_a_ping_timeout_waits_even_with_nothing_unread(device, monkeypatch):
    """A full turn lately: dashd's ping may itself have waited its turn to
    be written, so the pong cannot be there yet."""
    proto, _, clock, dropped = device
    monkeypatch.setattr(turns.time, "monotonic", lambda: 1000.0)
    monkeypatch.setattr(turns, "_last_full", 995.0)
    proto.onAutoPingTimeout()
    assert dropped == [] and proto.factory.ping_waits == 1
    monkeypatch.setattr(turns, "_last_full", 985.0)  # the storm is over
    clock.advance(proto.autoPingTimeout)
    assert len(dropped) == 1


def test_each_ping_gets_its_own_waits(device):
    proto, theirs, clock, dropped = device
    theirs.send(b"\x8a\x00")
    for _ in range(DeviceProtocol.MAX_PING_WAITS):
        proto.onAutoPingTimeout()
    assert dropped == []
    proto.autoPingTimeoutCall.cancel()  # the pong was read ...
    proto.autoPingPendingSeq = 2  # ... and the next ping sent
    proto.onAutoPingTimeout()
    assert dropped == []


def test_a_closing_connection_is_not_kept(device):
    proto, theirs, clock, dropped = device
    theirs.send(b"\x8a\x00")
    proto.state = WebSocketProtocol.STATE_CLOSING
    proto.onAutoPingTimeout()
    assert len(dropped) == 1


def test_subscribers_get_the_same_waits(monkeypatch):
    monkeypatch.setattr(turns, "_last_full", float("-inf"))
    from dashd.channel.websocket import ChannelProtocol, NotifyProtocol

    assert issubclass(NotifyProtocol, ChannelProtocol)
    assert NotifyProtocol.onAutoPingTimeout is DeviceProtocol.onAutoPingTimeout
    ours, theirs = socket.socketpair()
    try:
        clock = Clock()
        proto = NotifyProtocol()
        proto.factory = type("F", (), {"_batched_timer": _Timer(clock)})()
        proto.transport = _Transport(ours)
        proto.state = WebSocketProtocol.STATE_OPEN
        proto.autoPingTimeout = 10
        proto.autoPingPendingSeq = 1
        proto.dropConnection = lambda abort=False: pytest.fail("dropped")
        theirs.send(b"\x8a\x00")
        proto.onAutoPingTimeout()
        assert proto.factory.ping_waits == 1
    finally:
        ours.close()
        theirs.close()
