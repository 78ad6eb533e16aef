"""
The service that runs alarms and webhooks (L{dashd.app.alarms},
L{dashd.app.webhooks}): starts the engine and the dispatcher once the store
is open, re-reads rules, webhooks and the counts of active alarms every
C{REFRESH_INTERVAL} seconds (what other nodes of a cluster changed; they
also say so over the cluster bus, L{AlarmService.refresh_soon}, so that the
change applies here within moments and the poll is a safety net), and
stops both (timers cancelled, requests under way abandoned).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from dashd.app.alarms import AlarmEngine
from dashd.app.webhooks import WebhookDispatcher
from dashd.domain.errors import DomainError

log = Logger()

REFRESH_INTERVAL = 10.0


class AlarmService(Service):
    def __init__(self, engine: AlarmEngine, dispatcher: WebhookDispatcher, clock: Any,
                 interval: float = REFRESH_INTERVAL) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self.clock = clock
        self.interval = interval
        self._loop: LoopingCall | None = None
        self._started: Deferred[Any] | None = None
        # refresh_soon: a refresh under way, and whether another is asked for.
        self._refreshing = False
        self._again = False

    def startService(self) -> None:
        super().startService()

        async def start() -> None:
            await self.dispatcher.start()
            await self.engine.start()

        def started(_: Any) -> None:
            self._loop = LoopingCall(self.refresh)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False).addErrback(
                lambda f: log.failure("refreshing alarm rules", f))

        self._started = ensureDeferred(start()).addCallback(started)
        self._started.addErrback(lambda f: log.failure("starting alarms and webhooks", f))

    def refresh(self) -> Deferred[Any]:
        async def refresh() -> None:
            await self.dispatcher.reload()
            await self.engine.reload()

        return ensureDeferred(refresh()).addErrback(self._refresh_failed)

    def refresh_soon(self, _: Any = None) -> None:
        """Another node changed rules or webhooks (it said so over the cluster
        bus): refresh now, once for any number of changes told meanwhile."""
        if not self.running or self._started is None or not self._started.called:
            return  # the start reads everything anyway
        if self._refreshing:
            self._again = True
            return
        self._refreshing = True
        self._again = False

        def done(_: Any) -> None:
            self._refreshing = False
            if self._again:
                self.refresh_soon()

        self.refresh().addBoth(done)

    def _refresh_failed(self, failure: Failure) -> None:
        if failure.check(DomainError):
            # The store is away or behind (a database outage): what was read
            # before stays in force; the next refresh tries again.
            log.info("alarms: the store did not answer: {error}",
                     error=failure.getErrorMessage())
            return
        log.failure("re-reading alarm rules and webhooks", failure)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.engine.stop()
        return self.dispatcher.stop()
