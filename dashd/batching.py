"""
Items of one reactor turn handed on together: what arrives while the
reactor works through its ready events is delivered once the turn ends
(or at once when C{max_items} have gathered), as one list. Used where one
piece of work per item cost more than the item (audit entries, access log
lines). With a C{delay}, the batch gathers for that long after its first
item instead: sequential requests come one a turn, so a turn's batch
would hold one item each.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

T = TypeVar("T")


class TurnBatch(Generic[T]):
    def __init__(
        self,
        clock: IReactorTime,
        deliver: Callable[[list[T]], None],
        max_items: int = 0,
        delay: float = 0.0,
    ) -> None:
        """@param max_items: deliver as soon as this many wait (0: no limit;
        the caller bounds what it adds).
        @param delay: seconds from a batch's first item to its delivery
        (0: the end of the reactor turn)."""
        self._clock = clock
        self._delay = delay
        self._deliver = deliver
        self._max_items = max_items
        self._items: list[T] = []
        self._call: IDelayedCall | None = None

    def add(self, item: T) -> None:
        self._items.append(item)
        if self._max_items and len(self._items) >= self._max_items:
            self.flush()
        elif self._call is None:
            self._call = self._clock.callLater(self._delay, self.flush)

    def flush(self) -> None:
        """Deliver what waits now (nothing if nothing does)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        items, self._items = self._items, []
        if items:
            self._deliver(items)
