"""
Results from a store's threads, delivered on the reactor a slice of time at
a time, in the order they came.

A batch of the SQLite writer's is up to 1,000 jobs, a group of the
PostgreSQL store's up to a few hundred, and what their callbacks do (a
connect storm's sessions opening, say) took up to a quarter of a second in
one call: the reactor stood still for that long (docs/performance.md,
"Stalls, second round"). So results wait in one queue and are delivered
for at most L{DELIVERY_SLICE} seconds, then the reactor turns (timers,
devices) and delivery goes on.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

# Seconds of delivering store results before the reactor gets a turn.
DELIVERY_SLICE = 0.02


def deliver(d: Deferred[Any], result: Any) -> None:
    """C{d} gets C{result} (a L{Failure}: errback), unless it was called
    meanwhile (cancelled, say, because its HTTP client went away; the work
    is done and durable all the same)."""
    if d.called:
        return
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


class Deliveries:
    """
    C{add([(d, result), ...])} on the reactor: each L{deliver}ed in turn.
    C{(None, f)}: call C{f()} once everything before it has been delivered.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._pending: deque[tuple[Deferred[Any] | None, Any]] = deque()
        self._scheduled = False

    def add(self, results: Any) -> None:
        self._pending.extend(results)
        if not self._scheduled:
            self._deliver_some()

    def _deliver_some(self) -> None:
        self._scheduled = False
        pending = self._pending
        until = time.perf_counter() + DELIVERY_SLICE
        while pending:
            d, result = pending.popleft()
            if d is None:
                result()
            else:
                deliver(d, result)
            if pending and time.perf_counter() >= until:
                self._scheduled = True
                self._reactor.callLater(0, self._deliver_some)
                return
