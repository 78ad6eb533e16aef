"""
The audit log: who (the API key, or ``dashctl``), what (method and path, or
the dashctl command), on which device, when, and with what outcome (status,
and the error message if any), for every change and every device call made
through the REST API (L{dashd.api.audit.entry_for}) or dashctl
(L{dashd.ops.control}).

Entries are written after the answer has been sent: auditing never delays a
request. The entries of L{BATCH_DELAY} seconds go to the store together, as
one job of its group commit (a job per entry cost a busy server more than
the call it recorded: one device called one request at a time gave a job
per call when entries were gathered per reactor turn). As a service it stops just before the store does, and
hands over what is waiting then. At most L{MAX_PENDING} entries wait for
the store; beyond that they are lost, with a warning now and then, rather
than growing dashd's memory.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dashd.batching import TurnBatch
from dashd.store import IStore

log = Logger()

MAX_PENDING = 10000
WARN_EVERY = 60.0
# How long entries gather before they go to the store, and how many at most.
BATCH_DELAY = 0.05
BATCH_MAX = 1000

class AuditLog(Service):
    """Stores audit entries, L{BATCH_DELAY} seconds' worth at a time."""

    def __init__(self, store: IStore, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        # Entries not yet stored: waiting for the next flush or in the store.
        self.pending = 0
        self._batch: TurnBatch[dict[str, Any]] = TurnBatch(
            clock, self._store, max_items=BATCH_MAX, delay=BATCH_DELAY)
        self._lost = 0
        self._warned_at: float | None = None

    def record(self, entry: dict[str, Any] | None) -> None:
        """Store C{entry} (soon; None: nothing to store)."""
        if entry is None:
            return
        if self.pending >= MAX_PENDING:
            self._lose("the store is behind")
            return
        self.pending += 1
        self._batch.add(entry)

    def flush(self) -> None:
        """Hand what is waiting to the store now."""
        self._batch.flush()

    def _store(self, batch: list[dict[str, Any]]) -> None:
        self.store.append_audit(batch).addBoth(self._written, len(batch))

    def stopService(self) -> None:
        # The site has drained by now and the store is still open.
        super().stopService()
        self.flush()

    def _written(self, result: Any, count: int) -> None:
        self.pending -= count
        if isinstance(result, Failure):
            self._lost += count - 1
            self._lose(result.getErrorMessage())

    def _lose(self, why: str) -> None:
        self._lost += 1
        now = self.clock.seconds()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            log.warn("{count} audit entries could not be stored: {why}",
                     count=self._lost, why=why)
            self._warned_at = now
            self._lost = 0
