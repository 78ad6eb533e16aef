"""
How long the reactor stood still: a timer asks to run every L{INTERVAL}
seconds and records how much later than asked it ran. Whatever held the
reactor thread (a full garbage collection, a long callback, a burst of
work, the store thread holding the interpreter lock) shows up as lateness,
which is what every device and request waiting at that moment saw.

On a machine whose cores are shared, much of that lateness is dashd
waiting for a core, which says more about the machine than about dashd.
So the probe also measures the reactor thread's own CPU time between
asking and running: the part of a lateness that CPU time accounts for
(the CPU time less the interval, at most the lateness) is the reactor
working, a stall it would have on an idle machine too (a waiting for the
interpreter lock held by another thread is not in it).

Served as the histograms ``dashd_reactor_lag_seconds`` and
``dashd_reactor_busy_lag_seconds`` (the part the reactor's own work
accounts for), and the gauge ``dashd_reactor_lag_max_seconds`` (the
longest since dashd started);
``python -m bench`` reads them around each test (docs/performance.md).
Twenty timer calls a second cost nothing measurable.
"""

from __future__ import annotations

import bisect
import time
from typing import Callable

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

INTERVAL = 0.05
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class StallProbe(Service):
    def __init__(self, clock: IReactorTime, interval: float = INTERVAL,
                 cpu: Callable[[], float] = time.thread_time) -> None:
        self._clock = clock
        self._interval = interval
        self._cpu = cpu
        self._due = 0.0
        self._cpu_at = 0.0
        self._call: IDelayedCall | None = None
        self.counts = [0] * (len(LAG_BUCKETS) + 1)
        self.total = 0.0
        self.longest = 0.0
        self.busy_counts = [0] * (len(LAG_BUCKETS) + 1)
        self.busy_total = 0.0

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self._interval
        self._cpu_at = self._cpu()
        self._call = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        lag = self._clock.seconds() - self._due
        self.record(lag, self._cpu() - self._cpu_at - self._interval)
        self._schedule()

    def record(self, lag: float, busy: float = 0.0) -> None:
        """@param busy: the reactor thread's CPU time since the probe asked,
        less the interval."""
        lag = max(lag, 0.0)  # a clock set back is no stall
        self.counts[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
        self.total += lag
        self.longest = max(self.longest, lag)
        busy = min(max(busy, 0.0), lag)
        self.busy_counts[bisect.bisect_left(LAG_BUCKETS, busy)] += 1
        self.busy_total += busy

    def families(self) -> list[GaugeMetricFamily | HistogramMetricFamily]:
        def buckets(counts: list[int]) -> list[tuple[str, float]]:
            cumulative, out = 0, []
            for bound, count in zip([*map(str, LAG_BUCKETS), "+Inf"], counts):
                cumulative += count
                out.append((bound, cumulative))
            return out

        return [
            HistogramMetricFamily(
                "dashd_reactor_lag_seconds",
                "How much later than asked a timer run every %g s ran: how long the reactor "
                "stood still" % self._interval,
                buckets=buckets(self.counts), sum_value=self.total,
            ),
            HistogramMetricFamily(
                "dashd_reactor_busy_lag_seconds",
                "The part of dashd_reactor_lag_seconds the reactor thread's own CPU time "
                "accounts for (not waiting for a core or for another thread)",
                buckets=buckets(self.busy_counts), sum_value=self.busy_total,
            ),
            GaugeMetricFamily(
                "dashd_reactor_lag_max_seconds",
                "The longest the reactor stood still since dashd started",
                value=self.longest,
            ),
        ]
