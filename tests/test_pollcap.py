"""dashd.ops.pollcap: a reactor turn handles at most so many ready
descriptors, and the ones left over come in the next turns."""

from __future__ import annotations

import select
import socket

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock

from dashd.ops.pollcap import CappedPoller, cap_events_per_turn


def test_a_capped_poll_returns_at_most_cap_events_and_the_rest_next():
    pairs = [socket.socketpair() for _ in range(5)]
    poller = CappedPoller(select.epoll(), 2)
    try:
        for a, b in pairs:
            poller.register(a.fileno(), select.EPOLLIN)
            b.send(b"x")
        seen: list[int] = []
        for _ in range(3):
            events = poller.poll(1, 100)
            assert 1 <= len(events) <= 2
            for fd, _ in events:
                # Read it, as the reactor would: it is not ready any more.
                [a for a, _ in pairs if a.fileno() == fd][0].recv(1)
                seen.append(fd)
        assert sorted(seen) == sorted(a.fileno() for a, _ in pairs)
        assert poller.poll(0) == []
    finally:
        poller.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_every_ready_descriptor_is_handled_in_turn_while_still_ready():
    # Level-triggered: descriptors that stay ready are handed out in turn,
    # none left waiting behind the others.
    pairs = [socket.socketpair() for _ in range(6)]
    poller = CappedPoller(select.epoll(), 2)
    try:
        for a, b in pairs:
            poller.register(a.fileno(), select.EPOLLIN)
            b.send(b"x")  # never read: ready all along
        seen = set()
        for _ in range(3):
            seen.update(fd for fd, _ in poller.poll(1))
        assert seen == {a.fileno() for a, _ in pairs}
    finally:
        poller.close()
        for a, b in pairs:
            a.close()
            b.close()


def test_only_epoll_reactors_are_capped():
    reactor = EPollReactor()
    try:
        assert cap_events_per_turn(reactor, 7)
        assert isinstance(reactor._poller, CappedPoller) and reactor._poller.cap == 7
        assert cap_events_per_turn(reactor, 9)  # again: the same wrapper
        assert reactor._poller.cap == 9 and not isinstance(reactor._poller.poller, CappedPoller)
    finally:
        reactor._poller.close()
    assert not cap_events_per_turn(Clock())
