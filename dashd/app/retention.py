"""
Retention: every few minutes, stored data points older than
``data.retention_days`` and audit entries older than
``audit.retention_days`` are deleted, a batch a store job, so that other
work goes on between batches. (Device events are bounded per device as
they are stored: see L{dashd.app.history}.)
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dashd.store import IStore

log = Logger()

DAY = 86400.0
BATCH = 10000
# At most this many batches a run; the next run goes on.
MAX_BATCHES = 100


class DataRetention:
    """Prunes one kind of record: C{prune(before, batch)} is the store method."""

    def __init__(self, store: IStore, clock: IReactorTime, days: float,
                 prune: Callable[[float, int], Any] | None = None,
                 what: str = "stored data points") -> None:
        self.store = store
        self.clock = clock
        self.days = days
        self.prune = prune if prune is not None else store.prune_data
        self.what = what

    async def run(self) -> int:
        """Delete what is too old; return how many records. Never raises."""
        if self.days <= 0:
            return 0
        before = self.clock.seconds() - self.days * DAY
        total = 0
        try:
            for _ in range(MAX_BATCHES):
                deleted = await self.prune(before, BATCH)
                total += deleted
                if deleted < BATCH:
                    break
        except Exception as e:
            log.warn("pruning {what} failed: {error}", what=self.what, error=e)
        if total:
            log.info("deleted {count} {what} older than {days} days",
                     count=total, what=self.what, days=self.days)
        return total

    def tick(self) -> Any:
        from twisted.internet.defer import ensureDeferred

        return ensureDeferred(self.run())
