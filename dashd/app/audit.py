"""
The audit log: who (the API key), what (method and path), on which device,
when, and with what outcome (status, and the error message if any), for
every change and every device call made through the REST API. Reads
(``GET`` other than an RPC call, and ``POST /logs``, a query with a JSON
body) are not recorded; nor are requests that never authenticated (failed
authentications are in the log).

Entries are written after the answer has been sent: auditing never delays a
request. The entries of one reactor turn go to the store together, as one
job of its group commit (a job per entry cost a busy server more than the
call it recorded). As a service it stops just before the store does, and
hands over what is waiting then. At most L{MAX_PENDING} entries wait for
the store; beyond that they are lost, with a warning now and then, rather
than growing dashd's memory.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from dashd.batching import TurnBatch
from dashd.store import IStore

log = Logger()

MAX_PENDING = 10000
WARN_EVERY = 60.0

_DEVICE_PATH = re.compile(r"^/api/v2/devices/([^/]+)")
_NOT_DEVICES = ("data",)
# Reads that are POSTs (their query is a JSON body).
_READS = ("/api/v2/logs",)


def entry_for(request: Request, now: float) -> dict[str, Any] | None:
    """The audit entry for a finished request, or None if it is not audited."""
    key = getattr(request, "dashd_key", None)
    if key is None:
        return None
    method = request.method.decode("latin-1")
    path = request.path.decode("utf-8", "replace")
    if not path.startswith("/api/v2/"):
        return None
    if method in ("GET", "HEAD", "OPTIONS") and "/rpc/" not in path:
        return None
    if path in _READS:
        return None
    m = _DEVICE_PATH.match(path)
    device_id = m.group(1) if m and m.group(1) not in _NOT_DEVICES else None
    return {
        "t": now,
        "account_id": key.account_id,
        "key_id": key.id,
        "method": method,
        "path": path,
        "device_id": device_id,
        "status": request.code,
        "error": getattr(request, "dashd_error", None),
    }


class AuditLog(Service):
    """A request observer of the Site that stores audit entries."""

    def __init__(self, store: IStore, clock: IReactorTime) -> None:
        self.store = store
        self.clock = clock
        # Entries not yet stored: waiting for the next flush or in the store.
        self.pending = 0
        self._batch: TurnBatch[dict[str, Any]] = TurnBatch(clock, self._store)
        self._lost = 0
        self._warned_at: float | None = None

    def observe(self, request: Request) -> None:
        entry = entry_for(request, self.clock.seconds())
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
