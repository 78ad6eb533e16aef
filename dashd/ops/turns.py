"""
How much one turn of the reactor may do: at most L{MAX_EVENTS} ready
connections.

Twisted's epoll reactor asks the kernel for as many ready descriptors as it
has (C{len(selectables)}), and handles all of them before it runs a timer
again. In a connect storm thousands of new connections are ready at once,
each a WebSocket handshake of about a millisecond (more on a loaded
machine): one turn then held every timer, and every other device, for
seconds (the stall probe's 1-2.5 s stalls, docs/performance.md). Asking
for fewer events a turn bounds that: the timers (and the stall probe) run
between batches, and the kernel hands out the ready descriptors in turn
(level-triggered epoll puts the ones just returned behind those still
waiting), so none is starved.

The catch, which made the first try at this fail: a timer that waits on a
device (the keep-alive ping's timeout) can now fire while the device's
answer sits read by the kernel but not yet by dashd, or while dashd's ping
itself still waits to be written. Such timers check first whether the
socket holds unread bytes or a turn was full lately (L{behind}), and wait
longer if so (L{dashd.channel.websocket.ChannelProtocol.onAutoPingTimeout}).
"""

from __future__ import annotations

import select
import time
from typing import Any

# About 30-60 ms of handshakes on an idle core; 0 or less: no bound.
MAX_EVENTS = 48


# When (time.monotonic()) a turn last got as many ready descriptors as it
# may handle: more were likely waiting, dashd was behind.
_last_full = float("-inf")


def behind(within: float) -> bool:
    """Whether a turn of the reactor was full (more ready connections than it
    handles at once) in the last C{within} seconds: then a timer waiting on
    a peer may fire while the peer's answer, or dashd's own write it
    answers, still waits its turn."""
    return time.monotonic() - _last_full < within


class _CappedPoller:
    """An C{select.epoll} whose C{poll} returns at most C{cap} events."""

    __slots__ = ("_poll", "cap", "register", "unregister", "modify", "close", "fileno")

    def __init__(self, poller: Any, cap: int) -> None:
        self._poll = poller.poll
        self.cap = cap
        # The reactor calls these on every read/write change: no indirection.
        self.register = poller.register
        self.unregister = poller.unregister
        self.modify = poller.modify
        self.close = poller.close
        self.fileno = poller.fileno

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        global _last_full
        cap = self.cap
        if maxevents < 0 or maxevents > cap:
            maxevents = cap
        events = self._poll(timeout, maxevents)
        if len(events) >= cap:
            _last_full = time.monotonic()
        return events


def bound_turns(reactor: Any, max_events: int = MAX_EVENTS) -> bool:
    """Make each turn of C{reactor} handle at most C{max_events} ready
    descriptors; False (and nothing done) if it is not an epoll reactor."""
    poller = getattr(reactor, "_poller", None)
    if max_events <= 0 or poller is None or not hasattr(poller, "poll"):
        return False
    if isinstance(poller, _CappedPoller):
        poller.cap = max_events
        return True
    if not isinstance(poller, select.epoll):
        return False  # poll() or select(): no maxevents
    reactor._poller = _CappedPoller(poller, max_events)
    return True
