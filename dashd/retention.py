"""
Retention of stored data: every few minutes, points older than
``data.retention_days`` are deleted, a batch a store job, so that other
work goes on between batches. (Device events are bounded per device as
they are stored: see L{dashd.history}.)
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dashd.store import IStore

log = Logger()

DAY = 86400.0
BATCH = 10000
# At most this many batches a run; the next run goes on.
MAX_BATCHES = 100


class DataRetention:
    def __init__(self, store: IStore, clock: IReactorTime, days: float) -> None:
        self.store = store
        self.clock = clock
        self.days = days

    async def run(self) -> int:
        """Delete what is too old; return how many points. Never raises."""
        if self.days <= 0:
            return 0
        before = self.clock.seconds() - self.days * DAY
        total = 0
        try:
            for _ in range(MAX_BATCHES):
                deleted = await self.store.prune_data(before, BATCH)
                total += deleted
                if deleted < BATCH:
                    break
        except Exception as e:
            log.warn("pruning stored data failed: {error}", error=e)
        if total:
            log.info("deleted {count} stored data points older than {days} days",
                     count=total, days=self.days)
        return total

    def tick(self) -> Any:
        from twisted.internet.defer import ensureDeferred

        return ensureDeferred(self.run())
