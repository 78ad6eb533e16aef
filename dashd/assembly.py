"""
The service tree ``twistd dashd`` runs.

Children start in order and stop in reverse: the store first (so it is
open before anything is served) and last; then the fleet (which closes
device connections on the way down); then the drain (which lets REST calls
in flight finish); then one listening port per ``listen`` endpoint, which
stop accepting first; and last the systemd notifier, which says READY=1
when everything before it runs and STOPPING=1 before anything stops. See
L{dashd.ops.lifecycle} for the whole graceful stop.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger

from dashd import __version__
from dashd.domain import tokens
from dashd.api import Api
from dashd.app.audit import AuditLog
from dashd.app.auth import Authenticator
from dashd.ops.gcfreeze import FreezeSurvivors
from dashd.config import Config, with_backlog
from dashd.app.fleet import Fleet
from dashd.app.history import History
from dashd.channel.hub import IHub, LocalHub
from dashd.app.limits import FailureLimiter, TokenBucket
from dashd.ops.lifecycle import DataDirInUse, DataDirLock, DrainService, Readiness, raise_open_files_limit
from dashd.ops.metrics import Metrics
from dashd.domain.model import Account, ApiKey
from dashd.app.firmware import OtaManager
from dashd.app.retention import DataRetention
from dashd.channel.router import IRouter, LocalRouter
from dashd.channel.session import CLOSE_GOING_AWAY
from dashd.store import IStore, StoreError
from dashd.store.sqlite import SQLiteStore
from dashd.ops.systemd import NotifyService
from dashd.api.site import DashdSite, SpoolRule
from dashd.channel.websocket import close_connection

log = Logger()

ADMIN_KEY_FILE = "admin.key"
DATABASE_FILE = "dashd.sqlite3"
# Firmware uploads while they are checked and sent (emptied at start).
FIRMWARE_DIR = "firmware"
MULTIPART_ALLOWANCE = 65536
# Seconds between two runs of the stored data retention.
PRUNE_INTERVAL = 600.0


def write_secret_file(path: str, secret: str) -> None:
    """Write C{secret} alone on one line, readable by the owner only."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class StoreService(Service):
    """Opens the store and, on the very first start, creates the admin key."""

    def __init__(self, store: IStore, data_dir: str, clock: Any) -> None:
        self.store = store
        self.data_dir = data_dir
        self.clock = clock
        self.lock = DataDirLock(data_dir)
        self.ready: Deferred[None] | None = None

    def privilegedStartService(self) -> None:
        # Listening ports bind in privilegedStartService, in child order; the
        # store is a child before them, so it is open before they accept.
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        try:
            self.lock.acquire()
        except DataDirInUse as e:
            log.critical("cannot start: {why}", why=str(e))
            raise SystemExit(1)
        try:
            self.store.start()
        except StoreError as e:
            # Unreachable, or written by a newer dashd: say so in one line.
            log.critical("cannot start: {why}", why=str(e))
            raise SystemExit(1)
        super().privilegedStartService()

    def startService(self) -> None:
        self.store.start()  # no-op if privilegedStartService opened it
        super().startService()
        self.ready = self._bootstrap()

    @inlineCallbacks
    def _bootstrap(self) -> Any:
        now = self.clock.seconds()
        key_id = tokens.new_id("k")
        secret = tokens.new_api_key(key_id)
        account = Account(id=tokens.new_id("a"), name="default", created=now)
        key = ApiKey(id=key_id, account_id=account.id, name="admin", kind="admin", created=now)
        try:
            created = yield self.store.bootstrap_admin_key(key, tokens.hash_secret(secret), account)
        except Exception:
            log.failure("could not create the first admin key")
            return
        if created is None:
            return
        path = os.path.abspath(os.path.join(self.data_dir, ADMIN_KEY_FILE))
        try:
            write_secret_file(path, secret)
        except OSError as e:
            log.critical(
                "created the first admin key {id} but could not write it to {path}: {error}",
                id=created.id, path=path, error=e,
            )
            return
        log.info("created the first admin key {id}; it is in {path}", id=created.id, path=path)

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
            log.info("stopping: closing {n} device connection(s)", n=len(sessions))
        for session in sessions:
            session.disconnect(CLOSE_GOING_AWAY, "server shutting down")
        for subscriber in self.fleet.hub.subscribers():
            self.fleet.hub.unsubscribe(subscriber)
            close_connection(subscriber, CLOSE_GOING_AWAY, "server shutting down")
        return self._drain(deadline=3.0)

    @inlineCallbacks
    def _drain(self, deadline: float) -> Any:
        # Give the closing handshakes (and their last_seen writes) a moment.
        clock = self.fleet.clock
        end = clock.seconds() + deadline
        while self.fleet.router.sessions() and clock.seconds() < end:
            yield deferLater(clock, 0.05)


def make_store(config: Config, reactor: Any) -> IStore:
    """SQLite in the data directory, or PostgreSQL when store.url names one
    (imported only then: its driver is an optional dependency)."""
    limits = (config["shadow.max_bytes"], config["shadow.max_depth"])
    if config["store.url"]:
        from dashd.store.postgres import PostgresStore

        return PostgresStore(
            config["store.url"],
            reactor,
            pool_size=config["store.pool_size"],
            timeout=config["store.timeout"],
            shadow_limits=limits,
        )
    return SQLiteStore(
        os.path.join(config["data_dir"], DATABASE_FILE),
        reactor,
        synchronous=config["store.synchronous"],
        shadow_limits=limits,
    )


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
    order, so the store outlives everything that writes to it."""
    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        data_dir = config["data_dir"]
        self.store = make_store(config, reactor)
        self.auth = Authenticator(
            self.store,
            reactor,
            failures=FailureLimiter(reactor, config["limits.failed_auth_per_minute"]),
            requests=TokenBucket(
                reactor, config["limits.requests_per_second"], config["limits.burst"]
            ),
        )
        self.cluster = None
        router: IRouter = LocalRouter()
        hub: IHub = LocalHub()
        if config["cluster.redis_url"]:
            # Cluster mode: devices may be held by any node (see dashd.cluster).
            from dashd.cluster import Cluster

            self.cluster = Cluster(config, reactor, self.store, self.auth)
            router, hub = self.cluster.router, self.cluster.hub
        self.fleet = Fleet(self.store, router, hub, reactor, config)
        self.history = History(self.store, reactor, config["logs.max_per_device"])
        self.fleet.event_observers.append(self.history.observe)
        firmware_dir = os.path.join(data_dir, FIRMWARE_DIR)
        self.ota = OtaManager(self.fleet, config, firmware_dir, reactor)
        self.api = Api(self.fleet, self.auth, config, reactor)
        self.api.ota = self.ota
        self.site = DashdSite(
            self.api.resource(),
            max_body_bytes=config["http.max_body_bytes"],
            idle_timeout=config["http.idle_timeout"],
            request_timeout=config["http.request_timeout"],
            cors_origins=config["http.cors_origins"],
            access_log=config["http.access_log"],
            reactor=reactor,
        )
        # Firmware uploads: their own limit (plus room for multipart
        # headers), and to a file rather than memory.
        self.site.spool_rules.append(SpoolRule(
            b"POST", re.compile(rb"^/api/v2/devices/[^/]+/ota/?$"),
            config["ota.max_bytes"] + MULTIPART_ALLOWANCE, firmware_dir,
            config["ota.upload_timeout"],
        ))
        self.readiness = Readiness()
        self.metrics = Metrics(self.fleet, self.store, self.api.device_factory, self.site)
        self.api.metrics = self.metrics
        self.api.readiness = self.readiness
        self.store_service = StoreService(self.store, data_dir, reactor)
        self.store_service.setServiceParent(self)
        if self.cluster is not None:
            self.cluster.service().setServiceParent(self)
        FleetService(self.fleet).setServiceParent(self)
        # After the fleet, so it stops first: transfers under way are marked
        # failed while the store is still open.
        OtaService(self.ota).setServiceParent(self)
        for retention in (
            DataRetention(self.store, reactor, config["data.retention_days"]),
            DataRetention(self.store, reactor, config["audit.retention_days"],
                          self.store.prune_audit, "audit entries"),
        ):
            pruner = TimerService(PRUNE_INTERVAL, retention.tick)
            pruner.clock = reactor
            pruner.setServiceParent(self)
        if config["gc.full_collection_interval"] > 0:
            FreezeSurvivors(reactor, config["gc.full_collection_interval"]).setServiceParent(self)
        # Stops after the site has drained and before the store.
        self.audit = AuditLog(self.store, reactor)
        self.audit.setServiceParent(self)
        self.site.request_observers.append(self.audit.observe)
        DrainService(
            self.site, self.readiness, config["shutdown.grace_period"], reactor
        ).setServiceParent(self)
        for endpoint in config["listen"]:
            endpoint = with_backlog(endpoint, config["listen_backlog"])
            strports.service(endpoint, self.site, reactor=reactor).setServiceParent(self)
        # Last: READY=1 once all of the above started, STOPPING=1 first.
        NotifyService(
            lambda: self.store_service.ready,
            lambda: "serving on %s" % ", ".join(config["listen"]),
            reactor,
            on_ready=self._serving,
        ).setServiceParent(self)

    def _serving(self) -> None:
        self.readiness.state = "serving"
        log.info("dashd {version} serving on {listen}", version=__version__,
                 listen=", ".join(self.config["listen"]))

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
