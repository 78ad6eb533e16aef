"""
How dashd lets Python's cycle collector work with a large fleet.

A full collection (of the oldest generation) walks every object the
process holds, and CPython starts one whenever that generation has grown
by a quarter since the last: with 10,000-19,000 devices connected each walk
stops the reactor for 0.4-0.9 s, and under steady write load (objects that
are merely alive, in flight, when a younger collection runs are promoted)
they came every few seconds (docs/performance.md).

So what survives a full collection is frozen (C{gc.freeze}): it is still
freed by reference counting like anything else, but later collections do
not walk it again, and they stay as short as what is new since. Frozen
objects that later end up in a reference cycle would never be freed by the
collector; dashd's connections, calls and refusals leave no cycles
(tests/test_garbage.py), and for whatever else does, every
C{interval} seconds the whole heap is thawed and collected once (one
long pause, at a time of dashd's choosing rather than whenever the
promotions add up).

While the fleet grows (a connect storm, a capacity ramp), what is new is
most of what there is, and the first full collection walked all of it
(0.5-0.7 s at 10,000-19,000 devices). So whenever L{GROWTH} more devices
are connected than at the last freeze, the heap is frozen at once
(C{gc.freeze} is a constant-time list move): a full collection then never
walks more than the last L{GROWTH} devices' objects. What was in flight at
that moment and later becomes cyclic garbage waits for the next
collection of everything.
"""

from __future__ import annotations

import gc
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

# Devices connected since the last freeze that make the next one, and how
# often that is looked at (seconds).
GROWTH = 500
GROWTH_CHECK = 0.25


class FreezeSurvivors(Service):
    def __init__(
        self,
        reactor: Any,
        interval: float,
        connected: Callable[[], int] | None = None,
        growth: int = GROWTH,
    ) -> None:
        """@param connected: how many devices are connected now (to freeze
        as the fleet grows; None: only after full collections)."""
        self._reactor = reactor
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._freeze_scheduled = False
        self._connected = connected
        self._growth = growth
        self._grown_from = 0
        self._growth_loop: LoopingCall | None = None
        self.growth_freezes = 0

    def startService(self) -> None:
        super().startService()
        gc.callbacks.append(self._collected)
        self._loop = LoopingCall(self.collect_everything)
        self._loop.clock = self._reactor
        self._loop.start(self._interval, now=False)
        if self._connected is not None:
            self._grown_from = self._connected()
            self._growth_loop = LoopingCall(self.check_growth)
            self._growth_loop.clock = self._reactor
            self._growth_loop.start(GROWTH_CHECK, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        for loop in (self._loop, self._growth_loop):
            if loop is not None and loop.running:
                loop.stop()
        gc.unfreeze()

    def check_growth(self) -> None:
        """Freeze if the fleet grew by L{GROWTH} devices since the last
        freeze; follow it down when it shrinks."""
        assert self._connected is not None
        now = self._connected()
        if now - self._grown_from >= self._growth:
            gc.freeze()
            self.growth_freezes += 1
            self._grown_from = now
        elif now < self._grown_from:
            self._grown_from = now

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        # Called on whichever thread collected, inside the collector: the
        # freeze itself is left to the reactor thread, once.
        if phase == "stop" and info["generation"] == 2 and not self._freeze_scheduled:
            self._freeze_scheduled = True
            self._reactor.callFromThread(self._freeze)

    def _freeze(self) -> None:
        self._freeze_scheduled = False
        gc.freeze()

    def collect_everything(self) -> int:
        """Thaw, collect the whole heap, freeze what survives; the number of
        unreachable objects found."""
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        if found:
            log.debug("full collection of everything: {found} unreachable objects",
                      found=found)
        return found
