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
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


class FreezeSurvivors(Service):
    def __init__(self, reactor: Any, interval: float) -> None:
        self._reactor = reactor
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._freeze_scheduled = False

    def startService(self) -> None:
        super().startService()
        gc.callbacks.append(self._collected)
        self._loop = LoopingCall(self.collect_everything)
        self._loop.clock = self._reactor
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        gc.unfreeze()

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
