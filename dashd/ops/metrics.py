"""
Prometheus metrics, served at ``/metrics`` (see L{dashd.api.ops}).

Every dashd has its own registry (no module globals). What is already
counted elsewhere (connected devices in the router, subscribers in the hub,
frames on the device factory, the store's queue) is read when the metrics
are scraped, so the hot paths pay an integer increment at most.

| metric | type | what |
|---|---|---|
| ``dashd_devices_connected`` | gauge | devices holding a WebSocket to this dashd now (a cluster node's own; ``dashd_cluster_*`` in L{dashd.cluster.metrics}) |
| ``dashd_device_connections_total`` | counter | device WebSockets opened |
| ``dashd_device_frames_received_total`` | counter | JSON-RPC frames read from devices |
| ``dashd_device_frames_invalid_total`` | counter | unreadable or too large values from devices |
| ``dashd_device_frames_limited_total`` | counter | frames dropped for being over their device's rate limit (``device.frames_per_second``) |
| ``dashd_device_frames_sent_total`` | counter | frames sent to devices |
| ``dashd_device_ping_waits_total`` | counter | ping timeouts put off because the device's socket held bytes dashd had not read yet (L{dashd.ops.turns}) |
| ``dashd_notify_subscribers`` | gauge | notification streams open now |
| ``dashd_rpc_calls_total{outcome}`` | counter | REST RPC calls to devices: ``ok``, ``device_error`` (the device answered with an error), ``timeout``, ``offline``, ``rejected`` (too many in flight), ``cancelled`` (the client went away), ``error`` |
| ``dashd_rpc_call_duration_seconds`` | histogram | time to the device's answer (outcomes ``ok`` and ``device_error``) |
| ``dashd_data_lines_pulled_total`` | counter | lines of data pulled from mDash-library devices (``mDashStore``) and stored |
| ``dashd_data_pulls_failed_total`` | counter | pulls of such data that stopped before the device had nothing left (the next one resumes) |
| ``dashd_queued_calls_sent_total`` | counter | queued calls sent to devices (each attempt) |
| ``dashd_data_range_queries_total`` | counter | time-range queries of stored data, by ``kind`` (buckets, raw) |
| ``dashd_data_range_query_seconds_total`` | counter | seconds those queries took, in all |
| ``dashd_sessions_created_total`` | counter | dashboard sessions minted |
| ``dashd_sessions_ended_total`` | counter | dashboard sessions ended by signing out |
| ``dashd_queued_calls_ended_total{state}`` | counter | queued calls that ended on this node: ``succeeded``, ``failed``, ``timed_out``, ``lost``, ``expired`` (cancelled ones are in the audit log) |
| ``dashd_queued_calls_in_flight`` | gauge | queued calls sent and not answered yet |
| ``dashd_queued_calls_devices_waiting`` | gauge | devices with queued calls waiting for room (``calls.sends_at_once``) |
| ``dashd_store_job_duration_seconds`` | histogram | a store job from submission to its durable result (queueing, group commit and fsync included) |
| ``dashd_store_queue_depth`` | gauge | store jobs waiting for the writer thread |
| ``dashd_http_requests_total{code}`` | counter | REST requests answered, by status |
| ``dashd_audit_entries_lost_total`` | counter | audit entries given up (L{dashd.app.audit}: a database away only delays them) |
| ``dashd_history_events_lost_total`` | counter | device history events (``POST /logs``) given up (L{dashd.app.history}: a database away only delays them, up to its bounds) |
| ``dashd_gc_full_collection_seconds`` | histogram | full collections of Python's cycle collector: each walks every object dashd holds while the reactor stands still, the longest pauses a large fleet sees (docs/performance.md) |
| ``dashd_reactor_lag_seconds`` | histogram | how much later than asked a timer run every 50 ms ran: each is how long the reactor stood still (L{dashd.ops.stallprobe}) |
| ``dashd_reactor_lag_max_seconds`` | gauge | the longest the reactor stood still since dashd started |
| ``dashd_gc_frozen_objects`` | gauge | objects frozen after surviving a full collection (L{dashd.ops.gcfreeze}): later collections do not walk them |
| ``dashd_alarms_active{severity}`` | gauge | active alarms by severity, all accounts (L{dashd.ops.alarm_metrics}; re-read from the store every 10 s) |
| ``dashd_alarms_raised_total``, ``dashd_alarms_cleared_total`` | counter | alarms this node raised, cleared |
| ``dashd_alarm_rules`` | gauge | alarm rules this node knows of (read from the store every ``alarms.refresh_interval``) |
| ``dashd_webhook_deliveries_total``, ``dashd_webhook_deliveries_dropped_total`` | counter | webhook deliveries answered with 2xx; dropped from a full backlog |
| ``dashd_webhook_backlog`` | gauge | webhook deliveries waiting or under way |
| ``process_*`` | | open file descriptors and their limit, memory, CPU (prometheus_client) |
"""

from __future__ import annotations

import bisect
import gc
import time
from typing import Any, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from dashd.domain.errors import Busy, DeviceFailed, Offline, TimedOut

CONTENT_TYPE = CONTENT_TYPE_LATEST

RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
GC_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def outcome_of(result: Any) -> str:
    if not isinstance(result, Failure):
        return "ok"
    for kind, name in (
        (DeviceFailed, "device_error"),
        (TimedOut, "timeout"),
        (Offline, "offline"),
        (Busy, "rejected"),
        (CancelledError, "cancelled"),
    ):
        if result.check(kind):
            return name
    return "error"


class FullCollections:
    """
    Times the cycle collector's full collections (its oldest generation).
    A C{gc.callbacks} entry is process-wide, so there is one of these per
    process (L{full_collections}), read by every registry; it runs under the
    interpreter lock on whichever thread collects.
    """

    def __init__(self) -> None:
        self._started: float | None = None
        self.counts = [0] * (len(GC_BUCKETS) + 1)
        self.seconds = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            took = time.perf_counter() - self._started
            self._started = None
            self.seconds += took
            self.counts[bisect.bisect_left(GC_BUCKETS, took)] += 1

    def family(self) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, GC_BUCKETS), "+Inf"], self.counts):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(
            "dashd_gc_full_collection_seconds",
            "Seconds each full collection of Python's cycle collector held the process",
            buckets=buckets, sum_value=self.seconds,
        )


_full_collections: FullCollections | None = None


def full_collections() -> FullCollections:
    """The process's timer of full collections, installed on first use."""
    global _full_collections
    if _full_collections is None:
        _full_collections = FullCollections()
        gc.callbacks.append(_full_collections)
    return _full_collections


class _Live:
    """Figures read at scrape time from the parts that keep them."""

    def __init__(self, fleet: Any, store: Any, device_factory: Any, puller: Any,
                 delivery: Any = None, stall_probe: Any = None) -> None:
        self.stall_probe = stall_probe
        self.fleet = fleet
        self.store = store
        self.device_factory = device_factory
        self.puller = puller
        self.delivery = delivery

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield full_collections().family()
        if self.stall_probe is not None:
            yield from self.stall_probe.families()
        yield GaugeMetricFamily(
            "dashd_gc_frozen_objects",
            "Objects that survived a full collection and are not walked again until the next "
            "gc.full_collection_interval",
            value=gc.get_freeze_count(),
        )
        factory = self.device_factory
        yield GaugeMetricFamily(
            "dashd_devices_connected",
            "Devices holding a WebSocket to this dashd (in a cluster: to this node)",
            value=len(self.fleet.router.sessions()),
        )
        yield CounterMetricFamily(
            "dashd_device_connections", "Device WebSockets opened",
            value=factory.connections_opened,
        )
        yield CounterMetricFamily(
            "dashd_device_frames_received", "JSON-RPC frames read from devices",
            value=factory.frames_received,
        )
        yield CounterMetricFamily(
            "dashd_device_frames_invalid",
            "Unreadable or too large JSON values read from devices",
            value=factory.frames_invalid,
        )
        yield CounterMetricFamily(
            "dashd_device_frames_limited",
            "Frames dropped for being over their device's rate limit",
            value=self.fleet.frames_limited,
        )
        yield CounterMetricFamily(
            "dashd_device_frames_sent", "JSON-RPC frames sent to devices",
            value=factory.frames_sent,
        )
        yield CounterMetricFamily(
            "dashd_device_ping_waits",
            "Ping timeouts put off because the device's socket held bytes dashd had not "
            "read yet",
            value=factory.ping_waits,
        )
        yield CounterMetricFamily(
            "dashd_data_lines_pulled",
            "Lines of data pulled from mDash-library devices (mDashStore) and stored",
            value=self.puller.lines_pulled,
        )
        yield CounterMetricFamily(
            "dashd_data_pulls_failed",
            "Pulls of devices' stored data that stopped before the device had nothing left",
            value=self.puller.pulls_failed,
        )
        # Time-range queries of stored data and dashboard sessions (issue 19).
        from dashd.app.ranges import RangeStats
        from dashd.app.sessions import SessionStats

        ranges = CounterMetricFamily(
            "dashd_data_range_queries", "Time-range queries of stored data, by kind",
            labels=["kind"])
        ranges.add_metric(["buckets"], RangeStats.buckets)
        ranges.add_metric(["raw"], RangeStats.raw)
        yield ranges
        yield CounterMetricFamily(
            "dashd_data_range_query_seconds", "Seconds the time-range queries took, in all",
            value=RangeStats.seconds)
        yield CounterMetricFamily(
            "dashd_sessions_created", "Dashboard sessions minted (keep me signed in)",
            value=SessionStats.created)
        yield CounterMetricFamily(
            "dashd_sessions_ended", "Dashboard sessions ended by signing out",
            value=SessionStats.ended)
        delivery = self.delivery
        if delivery is not None:
            yield CounterMetricFamily(
                "dashd_queued_calls_sent", "Queued calls sent to devices (each attempt)",
                value=delivery.sent,
            )
            ended = CounterMetricFamily(
                "dashd_queued_calls_ended", "Queued calls that ended here, by state",
                labels=["state"],
            )
            for state, count in sorted(delivery.ended.items()):
                ended.add_metric([state], count)
            yield ended
            yield GaugeMetricFamily(
                "dashd_queued_calls_in_flight", "Queued calls sent and not answered yet",
                value=delivery.in_flight,
            )
            yield GaugeMetricFamily(
                "dashd_queued_calls_devices_waiting",
                "Devices with queued calls waiting for room (calls.sends_at_once)",
                value=delivery.devices_waiting,
            )
        yield GaugeMetricFamily(
            "dashd_notify_subscribers", "Notification streams open",
            value=self.fleet.hub.subscriber_count(),
        )
        # What a leak would show as: calls that nobody will answer, timers
        # that nobody will cancel.
        yield GaugeMetricFamily(
            "dashd_device_calls_pending", "Calls sent to devices and not answered yet",
            value=sum(s.pending_count for s in self.fleet.router.sessions()),
        )
        yield GaugeMetricFamily(
            "dashd_reactor_delayed_calls", "Timers scheduled on the reactor",
            value=len(self.fleet.clock.getDelayedCalls()),
        )
        depth = getattr(self.store, "queue_depth", None)
        if depth is not None:
            yield GaugeMetricFamily(
                "dashd_store_queue_depth", "Store jobs waiting for the writer thread",
                value=depth(),
            )


class Metrics:
    """The registry, and the observers that count as things happen, which
    the builder (L{dashd.assembly}) connects: L{observe_call} to the fleet's
    calls, L{observe_store_job} to the store, L{observe_request} to the
    site."""

    def __init__(self, fleet: Any, store: Any, device_factory: Any, puller: Any,
                 delivery: Any = None, stall_probe: Any = None) -> None:
        # No *_created series: they double the output and say when dashd started.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        full_collections()
        self.registry.register(_Live(fleet, store, device_factory, puller,  # type: ignore[arg-type]
                                     delivery, stall_probe))
        # Counted on the reactor thread as plain numbers and read when
        # scraped: a prometheus_client counter or histogram takes a lock on
        # each change, three a call (docs/performance.md, issue 21 item 0).
        self._calls = _CallCounts()
        self.registry.register(self._calls)  # type: ignore[arg-type]
        self._rpc_outcomes = self._calls.outcomes
        self.store_seconds = Histogram(
            "dashd_store_job_duration_seconds",
            "Seconds from a store job's submission to its durable result",
            buckets=STORE_BUCKETS, registry=self.registry,
        )
        self._requests = _RequestCounts()
        self.registry.register(self._requests)  # type: ignore[arg-type]
        # Answered requests by status code, at most one entry per status
        # dashd answers with.
        self._statuses = self._requests.statuses

    def observe_call(self, d: Deferred[Any]) -> None:
        d.addBoth(self._call_done, time.monotonic())

    def _call_done(self, result: Any, started: float) -> Any:
        if isinstance(result, Failure):
            outcome = outcome_of(result)
            self._rpc_outcomes[outcome] += 1
            if outcome != "device_error":
                return result
        else:
            self._rpc_outcomes["ok"] += 1
        self._calls.observe(time.monotonic() - started)
        return result

    def observe_store_job(self, seconds: float) -> None:
        self.store_seconds.observe(seconds)

    def observe_store_jobs(self, seconds: list[float]) -> None:
        """A batch of jobs' latencies (the SQLite store delivers a batch
        at once): as many observations, each bucket and the sum added to
        once rather than once a job (a lock taken each time)."""
        histogram = self.store_seconds
        bounds = getattr(histogram, "_upper_bounds", None)
        buckets = getattr(histogram, "_buckets", None)
        total = getattr(histogram, "_sum", None)
        if bounds is None or buckets is None or total is None or len(seconds) == 1:
            for s in seconds:
                histogram.observe(s)
            return
        counts: dict[int, int] = {}
        for s in seconds:
            # The first bound at or above s, as Histogram.observe finds it.
            i = bisect.bisect_left(bounds, s)
            counts[i] = counts.get(i, 0) + 1
        total.inc(sum(seconds))
        for i, n in counts.items():
            buckets[i].inc(n)

    def observe_request(self, request: Any) -> None:
        statuses = self._statuses
        code = request.code
        statuses[code] = statuses.get(code, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CallCounts:
    """``dashd_rpc_calls_total{outcome}`` and
    ``dashd_rpc_call_duration_seconds``, kept as plain numbers by the
    reactor thread and read when scraped (the same samples as
    prometheus_client's Counter and Histogram gave)."""

    def __init__(self) -> None:
        self.outcomes = {outcome: 0 for outcome in (
            "ok", "device_error", "timeout", "offline", "rejected", "cancelled", "error")}
        self._bounds = (*RPC_BUCKETS, float("inf"))
        self._le = [floatToGoString(b) for b in self._bounds]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        # The first bound at or above the value, as Histogram.observe finds it.
        self._counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily("dashd_rpc_calls", "REST RPC calls to devices, by outcome",
                                    labels=["outcome"])
        for outcome, count in list(self.outcomes.items()):
            calls.add_metric([outcome], float(count))
        yield calls
        cumulative, buckets = 0.0, []
        for le, count in zip(self._le, list(self._counts)):
            cumulative += count
            buckets.append((le, cumulative))
        yield HistogramMetricFamily(
            "dashd_rpc_call_duration_seconds",
            "Seconds from a REST RPC call to the device's answer",
            buckets=buckets, sum_value=self._sum,
        )


class _RequestCounts:
    """``dashd_http_requests_total{code}``, kept by the reactor thread as
    plain numbers (a status appears once it has been answered with)."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("dashd_http_requests", "REST requests answered, by status",
                                       labels=["code"])
        for code, count in list(self.statuses.items()):
            requests.add_metric([str(code)], float(count))
        yield requests


class CounterOf:
    """A counter kept by another part, read when scraped (registered by
    L{dashd.assembly}), e.g. ``dashd_audit_entries_lost_total``."""

    def __init__(self, name: str, documentation: str, read: Any) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.read())
