"""
How long the reactor stood still: a timer asks to run every L{INTERVAL}
seconds and records how much later than asked it ran. Whatever held the
reactor thread (a full garbage collection, a long callback, a burst of
work, the store thread holding the interpreter lock) shows up as lateness,
which is what every device and request waiting at that moment saw.

Served as the histogram ``dashd_reactor_lag_seconds`` and the gauge
``dashd_reactor_lag_max_seconds`` (the longest since dashd started);
``python -m bench`` reads them around each test (docs/performance.md).
Twenty timer calls a second cost nothing measurable.
"""

from __future__ import annotations

import bisect

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

INTERVAL = 0.05
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class StallProbe(Service):
    def __init__(self, clock: IReactorTime, interval: float = INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._due = 0.0
        self._call: IDelayedCall | None = None
        self.counts = [0] * (len(LAG_BUCKETS) + 1)
        self.total = 0.0
        self.longest = 0.0

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
        self._call = self._clock.callLater(self._interval, self._tick)

    def _tick(self) -> None:
        self.record(self._clock.seconds() - self._due)
        self._schedule()

    def record(self, lag: float) -> None:
        lag = max(lag, 0.0)  # a clock set back is no stall
        self.counts[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
        self.total += lag
        self.longest = max(self.longest, lag)

    def families(self) -> list[GaugeMetricFamily | HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, LAG_BUCKETS), "+Inf"], self.counts):
            cumulative += count
            buckets.append((bound, cumulative))
        return [
            HistogramMetricFamily(
                "dashd_reactor_lag_seconds",
                "How much later than asked a timer run every %g s ran: how long the reactor "
                "stood still" % self._interval,
                buckets=buckets, sum_value=self.total,
            ),
            GaugeMetricFamily(
                "dashd_reactor_lag_max_seconds",
                "The longest the reactor stood still since dashd started",
                value=self.longest,
            ),
        ]
