"""
The services of dashd's tree (built by L{dashd.assembly}). Children start
in order and stop in reverse, one after the other: the store first (so it
is open before anything is served) and last; then the cluster, the fleet
(which closes device connections on the way down), the firmware updates,
retention and the audit log; then the drain (which lets REST calls in
flight finish); then the listening ports, which stop accepting first; and
last the systemd notifier, which says READY=1 when everything before it
runs and STOPPING=1 before anything stops. See L{dashd.ops.lifecycle} for
the whole graceful stop.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger

from dashd.app.firmware import OtaManager
from dashd.app.fleet import Fleet
from dashd.app.keys import Keys
from dashd.channel import closecodes
from dashd.channel.websocket import close_connection
from dashd.ops.datadir import (
    ADMIN_KEY_FILE,
    DataDirInUse,
    DataDirLock,
    write_secret_file,
)
from dashd.ops.lifecycle import raise_open_files_limit
from dashd.store import IStore, StoreError

log = Logger()


class StoreService(Service):
    """Takes the data directory's lock, opens the store and, on the very
    first start, creates the admin key (written to C{admin.key})."""

    def __init__(self, store: IStore, data_dir: str, keys: Keys,
                 option: str = "data_dir") -> None:
        self.store = store
        # The option that names the store, for the start's one-line errors.
        self.option = option
        self.data_dir = data_dir
        self.keys = keys
        self.lock = DataDirLock(data_dir)
        self.ready: Deferred[None] | None = None

    def privilegedStartService(self) -> None:
        # Listening ports bind in privilegedStartService, in child order; the
        # store is a child before them, so it is open before they accept.
        try:
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            log.critical("cannot start: data_dir: cannot create {path}: {why}",
                         path=os.path.abspath(self.data_dir), why=e.strerror or str(e))
            raise SystemExit(1)
        try:
            self.lock.acquire()
        except DataDirInUse as e:
            log.critical("cannot start: {why}", why=str(e))
            raise SystemExit(1)
        try:
            self.store.start()
        except StoreError as e:
            # Unreachable, or written by a newer dashd: say so in one line.
            log.critical("cannot start: {option}: {why}", option=self.option, why=str(e))
            raise SystemExit(1)
        super().privilegedStartService()

    def startService(self) -> None:
        self.store.start()  # no-op if privilegedStartService opened it
        super().startService()
        self.ready = ensureDeferred(self._bootstrap())

    async def _bootstrap(self) -> None:
        try:
            created = await self.keys.bootstrap()
        except Exception:
            log.failure("could not create the first admin key")
            return
        if created is None:
            return
        key, secret = created
        path = os.path.abspath(os.path.join(self.data_dir, ADMIN_KEY_FILE))
        try:
            write_secret_file(path, secret)
        except OSError as e:
            log.critical(
                "created the first admin key {id} but could not write it to {path}: {error}",
                id=key.id, path=path, error=e,
            )
            return
        log.info("created the first admin key {id}; it is in {path}", id=key.id, path=path)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d = self.store.stop()
        d.addBoth(lambda result: (self.lock.release(), result)[1])
        return d


class FleetService(Service):
    """Closes every device connection and notification stream (code 1001)
    when dashd stops."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def stopService(self) -> Deferred[None]:
        super().stopService()
        sessions = self.fleet.router.sessions()
        if sessions:
            log.info("stopping: closing {n} device connection(s) with 1001 (going away)",
                     n=len(sessions))
        for session in sessions:
            session.disconnect(closecodes.GOING_AWAY, "server shutting down")
        for subscriber in self.fleet.hub.subscribers():
            self.fleet.hub.unsubscribe(subscriber)
            close_connection(subscriber, closecodes.GOING_AWAY, "server shutting down")
        return self._drain(deadline=3.0)

    @inlineCallbacks
    def _drain(self, deadline: float) -> Any:
        # Give the closing handshakes (and their last_seen writes) a moment.
        clock = self.fleet.clock
        end = clock.seconds() + deadline
        while self.fleet.router.sessions() and clock.seconds() < end:
            yield deferLater(clock, 0.05)


class OtaService(Service):
    """Starts the firmware update manager, and fails the transfers under way
    when dashd stops."""

    def __init__(self, ota: OtaManager) -> None:
        self.ota = ota

    def startService(self) -> None:
        super().startService()
        self.ota.start().addErrback(
            lambda f: log.failure("resuming firmware updates", f)
        )

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self.ota.stop()


class DashdService(MultiService):
    """dashd as a whole; stops its children one after the other, in reverse
    order, so the store outlives everything that writes to it. C{parts}:
    what L{dashd.assembly.build} made, for tools that run dashd in their
    own process (tests, benchmarks)."""

    def __init__(self, parts: Any) -> None:
        super().__init__()
        self.parts = parts

    def privilegedStartService(self) -> None:
        before, after = raise_open_files_limit()
        if after != before:
            log.info("open files limit raised from {before} to {after}",
                     before=before, after=after)
        else:
            log.info("open files limit: {limit}", limit=after)
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            # Say which endpoint and why in one line, not with a traceback.
            log.critical("cannot start: cannot listen on {where}: {why}",
                         where="%s:%s" % (e.interface or "*", e.port), why=e.socketError)
            raise SystemExit(1)

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        for service in reversed(list(self)):
            try:
                yield service.stopService()
            except Exception:
                log.failure("stopping {service}", service=service)
