"""
The one place that builds dashd from its configuration: the store, the
router and hub (local, or the cluster's), the fleet and the application
(every use case), the HTTP API and its site, metrics, and the service tree
that starts and stops them (L{dashd.ops.services}). Every part gets its
collaborators in its constructor; observers are connected here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.logger import Logger

from dashd import __version__
from dashd.api import Api
from dashd.api.audit import entry_for
from dashd.api.library import LIBRARY_UPLOAD_PATH
from dashd.api.ota import UPLOAD_PATH
from dashd.api.site import DashdSite, SpoolRule
from dashd.app.alarms import AlarmEngine
from dashd.app.application import Application, build_application
from dashd.app.audit import AuditLog
from dashd.app.auth import Authenticator
from dashd.app.calls import CallDelivery
from dashd.app.datapull import DataPuller
from dashd.app.firmware import OtaManager
from dashd.app.fleet import Fleet
from dashd.app.history import History, stored as stored_event
from dashd.app.jobs import JobRunner
from dashd.app.limits import FailureLimiter, TokenBucket
from dashd.app.retention import DataRetention
from dashd.store.jobs_sql import JobStore
from dashd.app.tickets import ITicketStore, LocalTickets
from dashd.app.webhooks import WebhookDispatcher
from dashd.channel.hub import IHub, LocalHub
from dashd.channel.router import IRouter, LocalRouter
from dashd.channel.websocket import DeviceFactory, NotifyFactory
from dashd.config import Config, ConfigError, with_backlog
from dashd.ops.alarm_metrics import AlarmMetrics
from dashd.ops.alarms import AlarmService
from dashd.ops.control import control_service
from dashd.ops.datadir import CONTROL_SOCKET, DATABASE_FILE, FIRMWARE_DIR
from dashd.ops.gcfreeze import FreezeSurvivors, GarbageProbe
from dashd.ops.hangup import HangupService
from dashd.ops.lbagent import AgentFactory
from dashd.ops.jobs import JobCollector, JobService
from dashd.ops.lifecycle import DrainService, Readiness
from dashd.ops.metrics import CounterOf, Metrics
from dashd.ops.services import DashdService, FleetService, OtaService, StoreService
from dashd.ops.stallprobe import StallProbe
from dashd.ops.systemd import NotifyService
from dashd.ops.turns import bound_turns
from dashd.store import IStore
from dashd.store.alarms_sql import AlarmStore

log = Logger()

MULTIPART_ALLOWANCE = 65536
# Seconds between two runs of the stored data retention.
PRUNE_INTERVAL = 600.0


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
    from dashd.store.sqlite import SQLiteStore

    return SQLiteStore(
        os.path.join(config["data_dir"], DATABASE_FILE),
        reactor,
        synchronous=config["store.synchronous"],
        shadow_limits=limits,
    )


def listen_service(description: str, as_configured: str, site: Any, reactor: Any) -> Any:
    """The service listening on one of C{listen}'s endpoints; a description
    Twisted cannot use (unknown type, missing TLS key or certificate) is a
    L{ConfigError} naming it."""
    try:
        return strports.service(description, site, reactor=reactor)
    except Exception as e:  # ValueError, OSError, OpenSSL's errors...
        why = str(e) or e.__class__.__name__
        if isinstance(e, OSError) and e.filename:
            why = "cannot read %s: %s" % (e.filename, e.strerror or e)
        option = "listen" if isinstance(site, DashdSite) else "lb.agent_listen"
        raise ConfigError("%s: %r: %s" % (option, as_configured, why)) from None


def make_authenticator(store: IStore, config: Config, reactor: Any) -> Authenticator:
    return Authenticator(
        store,
        reactor,
        # Each door counts its own failures.
        rest_failures=FailureLimiter(reactor, config["limits.failed_auth_per_minute"]),
        device_failures=FailureLimiter(reactor, config["limits.failed_auth_per_minute"]),
        requests=TokenBucket(reactor, config["limits.requests_per_second"],
                             config["limits.burst"]),
    )


@dataclass(frozen=True)
class Parts:
    """What dashd is made of, for tools that run it in their own process."""

    config: Config
    store: IStore
    fleet: Fleet
    application: Application
    ota: OtaManager
    site: DashdSite
    metrics: Metrics
    readiness: Readiness
    cluster: Any


def build(config: Config, reactor: Any) -> DashdService:
    data_dir = config["data_dir"]
    store = make_store(config, reactor)
    auth = make_authenticator(store, config, reactor)
    cluster = None
    router: IRouter = LocalRouter()
    hub: IHub = LocalHub()
    if config["cluster.redis_url"]:
        # Cluster mode: devices may be held by any node (see dashd.cluster).
        from dashd.cluster import Cluster

        cluster = Cluster(config, reactor, store, auth)
        router, hub = cluster.router, cluster.hub
    fleet = Fleet(store, router, hub, reactor, config)
    firmware_dir = os.path.join(data_dir, FIRMWARE_DIR)
    ota = OtaManager(fleet, config, firmware_dir, reactor)
    puller = DataPuller(fleet, config["data.pull_chunk_bytes"], config["data.pulls_at_once"],
                        config["rpc.default_timeout"])
    tickets: ITicketStore = LocalTickets(reactor)
    if cluster is not None:
        # A ticket made on one node may open the stream on another.
        from dashd.cluster.tickets import RedisTickets

        tickets = RedisTickets(cluster.bus, config["cluster.namespace"])
    history = History(store, reactor, config["logs.max_per_device"])
    audit = AuditLog(store, reactor)
    alarm_store = AlarmStore(store)
    alarm_engine = AlarmEngine(fleet, alarm_store, reactor, audit.record)
    webhooks = WebhookDispatcher(alarm_store, reactor, config)
    application = build_application(fleet, auth, ota, tickets, alarm_engine, webhooks)
    delivery = CallDelivery(fleet, reactor, audit.record)

    device_factory = DeviceFactory(config, reactor)
    notify_factory = NotifyFactory(config, reactor)
    stall_probe = StallProbe(reactor)
    # A connect storm's thousands of ready connections are handled a bounded
    # batch a turn, timers between (dashd.ops.turns).
    bound_turns(reactor)
    metrics = Metrics(fleet, store, device_factory, puller, delivery, stall_probe)
    metrics.registry.register(CounterOf(  # type: ignore[arg-type]
        "dashd_audit_entries_lost", "Audit entries given up (their count is also logged)",
        lambda: audit.lost_total))
    metrics.registry.register(CounterOf(  # type: ignore[arg-type]
        "dashd_history_events_lost", "Device history events given up (a database away only "
        "delays them; their count is also logged)", lambda: history.lost_total))
    metrics.registry.register(AlarmMetrics(alarm_engine, webhooks))  # type: ignore[arg-type]
    readiness = Readiness()
    if cluster is not None:
        from dashd.cluster.metrics import ClusterCollector

        metrics.registry.register(ClusterCollector(cluster))  # type: ignore[arg-type]
        readiness.checks.append(cluster.readiness_problem)
    api = Api(application, config, reactor, device_factory=device_factory,
              notify_factory=notify_factory, metrics=metrics, readiness=readiness)
    site = DashdSite(
        api.resource(),
        max_body_bytes=config["http.max_body_bytes"],
        idle_timeout=config["http.idle_timeout"],
        request_timeout=config["http.request_timeout"],
        cors_origins=config["http.cors_origins"],
        access_log=config["http.access_log"],
        reactor=reactor,
        # Firmware uploads: their own limit (plus room for multipart
        # headers), and to a file rather than memory.
        spool_rules=[SpoolRule(
            b"POST", UPLOAD_PATH,
            config["ota.max_bytes"] + MULTIPART_ALLOWANCE, firmware_dir,
            config["ota.upload_timeout"], gate=api.upload_gate,
        ), SpoolRule(
            b"POST", LIBRARY_UPLOAD_PATH,
            config["ota.max_bytes"] + MULTIPART_ALLOWANCE, firmware_dir,
            config["ota.upload_timeout"], gate=api.library_gate,
        )],
    )

    # Who hears of what happens: each observer only of the events it acts
    # on (a device's report goes to the alarms and the jobs, not to five others).
    fleet.observe_events(history.observe, accepts=stored_event)
    fleet.observe_events(ota.device_event, ota.DEVICE_EVENTS)
    fleet.info_observers.append(ota.device_info)
    if cluster is not None:
        # A dead node's devices said offline by another: in their history too.
        cluster.announce = fleet.publish
        # Updates driven by another node end on the node the device is on.
        cluster.hub.remote_observers.append(ota.remote_event)
    fleet.observe_events(puller.device_event, puller.DEVICE_EVENTS)
    fleet.connect_observers.append(puller.device_connected)
    fleet.call_observers.append(metrics.observe_call)
    fleet.ready_observers.append(delivery.device_ready)
    fleet.observe_events(delivery.device_event, delivery.DEVICE_EVENTS)
    router.queue_observers.append(delivery.calls_queued)
    fleet.observe_events(alarm_engine.device_event, alarm_engine.DEVICE_EVENTS)
    fleet.connect_observers.append(alarm_engine.device_connected)
    fleet.info_observers.append(alarm_engine.device_info)
    fleet.call_result_observers.append(alarm_engine.call_result)
    fleet.observe_events(webhooks.device_event, webhooks.DEVICE_EVENTS)
    alarm_engine.observers.append(webhooks.alarm_event)
    application.jobs.observers.append(webhooks.job_event)
    if hasattr(store, "latencies_observer"):
        store.latencies_observer = metrics.observe_store_jobs
    elif hasattr(store, "latency_observer"):
        store.latency_observer = metrics.observe_store_job
    site.request_observers.append(metrics.observe_request)
    site.request_observers.append(
        lambda request: audit.record(entry_for(request, reactor.seconds())))

    parts = Parts(config, store, fleet, application, ota, site, metrics, readiness, cluster)
    service = DashdService(parts)
    store_service = StoreService(store, data_dir, application.keys,
                                 option="store.url" if config["store.url"] else "data_dir")
    store_service.setServiceParent(service)
    if cluster is not None:
        cluster.service().setServiceParent(service)
    FleetService(fleet).setServiceParent(service)
    # After the fleet, so it stops first: transfers under way are marked
    # failed while the store is still open.
    OtaService(ota).setServiceParent(service)
    alarm_service = AlarmService(alarm_engine, webhooks, reactor,
                                 config["alarms.refresh_interval"])
    alarm_service.setServiceParent(service)
    if cluster is not None:
        # Rules and webhooks changed here apply on the other nodes at once,
        # and what each delivers is seen from every node.
        _share_alarm_changes(cluster, application, alarm_service, alarm_engine)
        from dashd.app.webhooks import SharedStats

        webhooks.shared = SharedStats(cluster.bus, config["cluster.namespace"],
                                      cluster.node_id, cluster.node_alive)
    for retention in (
        DataRetention(store, reactor, config["data.retention_days"]),
        DataRetention(store, reactor, config["audit.retention_days"],
                      store.prune_audit, "audit entries"),
        DataRetention(store, reactor, config["calls.retention_days"],
                      store.prune_calls, "ended queued calls"),
        DataRetention(store, reactor, config["jobs.retention_days"],
                      JobStore(store).prune_jobs, "jobs ended and their executions"),
    ):
        pruner = TimerService(PRUNE_INTERVAL, retention.tick)
        pruner.clock = reactor
        pruner.setServiceParent(service)
    # Queued calls past their deadline, and sent ones whose node is gone (at
    # once on start: what a previous run had sent is lost).
    sweeper = TimerService(config["calls.sweep_interval"], delivery.sweep)
    sweeper.clock = reactor
    sweeper.setServiceParent(service)
    stall_probe.setServiceParent(service)
    # A stray SIGHUP must not end dashd without a drain (dashd.ops.hangup).
    HangupService(reactor).setServiceParent(service)
    # Fleet jobs: each node steps those whose lease it holds (or takes).
    job_runner = JobRunner(fleet, application.jobs, application.devices, audit.record)
    # Devices that come to match continuous targets join as events say so.
    fleet.observe_events(job_runner.device_event, job_runner.DEVICE_EVENTS)
    fleet.info_observers.append(job_runner.device_info)
    if cluster is not None:
        cluster.hub.remote_observers.append(job_runner.remote_event)
        # Events are routed to nodes that want them: a node driving a job
        # wants its account's (continuous targets, cancels from elsewhere).
        cluster.interest.sources.append(job_runner.accounts)
        job_runner.on_accounts_changed = cluster.interest.subscribers_changed
    JobService(job_runner, config["jobs.interval"], reactor).setServiceParent(service)
    metrics.registry.register(JobCollector(job_runner))  # type: ignore[arg-type]
    # Library uploads a restart cut off (the image is never listed).
    library_sweeper = TimerService(PRUNE_INTERVAL, application.library.sweep)
    library_sweeper.clock = reactor
    library_sweeper.setServiceParent(service)
    if config["gc.full_collection_interval"] > 0:
        FreezeSurvivors(reactor, config["gc.full_collection_interval"],
                        lambda: len(fleet.router.sessions()),
                        probe=GarbageProbe(reactor)).setServiceParent(service)
    # The load balancer's agent stops after the drain (dashd.ops.lbagent).
    agent = AgentFactory(readiness, application.ping, reactor)
    for endpoint in config["lb.agent_listen"]:
        listen_service(endpoint, endpoint, agent, reactor).setServiceParent(service)
    # Stops after the site has drained and before the store.
    audit.setServiceParent(service)
    DrainService(site, readiness, config["shutdown.grace_period"], reactor,
                 peers=cluster).setServiceParent(service)
    # dashctl's way in (after the store opened, before the ports).
    try:
        control_service(os.path.join(data_dir, CONTROL_SOCKET), application, audit, reactor
                        ).setServiceParent(service)
    except ValueError as e:
        log.warn("no control socket, so dashctl cannot act through this dashd: {why}",
                 why=str(e))
    for endpoint in config["listen"]:
        listening = listen_service(with_backlog(endpoint, config["listen_backlog"]), endpoint,
                                   site, reactor)
        listening.setServiceParent(service)

    def serving() -> None:
        readiness.state = "serving"
        log.info("dashd {version} serving on {listen}", version=__version__,
                 listen=", ".join(config["listen"]))

    # Last: READY=1 once all of the above started, STOPPING=1 first.
    NotifyService(
        lambda: store_service.ready,
        lambda: "serving on %s" % ", ".join(config["listen"]),
        reactor,
        on_ready=serving,
    ).setServiceParent(service)
    return service


def _share_alarm_changes(cluster: Any, application: Any, service: Any, engine: Any) -> None:
    def changed(alarm: Any) -> None:
        cluster.tell("alarms", None if alarm is None else
                     {"rule": alarm.rule_id, "device": alarm.device_id})

    def heard(data: Any) -> None:
        if isinstance(data, dict):  # an alarm cleared by hand over there
            engine.forget_ids(str(data.get("rule")), str(data.get("device")))
        service.refresh_soon()

    application.alarms.changed = changed
    application.webhooks.changed = changed
    cluster.app_handlers["alarms"] = heard

