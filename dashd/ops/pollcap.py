"""
At most L{MAX_EVENTS} ready connections handled per reactor turn.

Twisted's epoll reactor asks the kernel for every ready descriptor at once
and handles them all before its timers run again. In a connect storm that
is thousands of new connections' handshakes in one turn: seconds in which
no timer runs (the stall probe, keep-alive pings, call timeouts) and no
answer goes out (docs/performance.md, issue 21). With the number of events
a turn takes bounded, the rest are handled in the next turns (epoll is
level-triggered here: a descriptor still ready is reported again, and the
kernel hands out ready descriptors round-robin), with the reactor's timers
and the threads' callbacks run between. The same work is done; a turn is
only shorter. Other reactors are left as they are.
"""

from __future__ import annotations

import select
from typing import Any

# Ready descriptors handled per turn: one storm handshake costs the reactor
# about 0.5-1 ms, so a turn stays well under 100 ms.
MAX_EVENTS = 64


class CappedPoller:
    """An epoll object whose C{poll} returns at most C{cap} events."""

    def __init__(self, poller: Any, cap: int) -> None:
        self.poller = poller
        self.cap = cap
        self.register = poller.register
        self.modify = poller.modify
        self.unregister = poller.unregister
        self.close = poller.close
        self.fileno = poller.fileno

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        if maxevents <= 0 or maxevents > self.cap:
            maxevents = self.cap
        return self.poller.poll(timeout, maxevents)


def cap_events_per_turn(reactor: Any, cap: int = MAX_EVENTS) -> bool:
    """Bound C{reactor}'s turns to C{cap} ready descriptors if it is an
    epoll reactor (True), else leave it (False)."""
    poller = getattr(reactor, "_poller", None)
    if isinstance(poller, CappedPoller):
        poller.cap = cap
        return True
    if not isinstance(poller, select.epoll):
        return False
    reactor._poller = CappedPoller(poller, cap)
    return True
