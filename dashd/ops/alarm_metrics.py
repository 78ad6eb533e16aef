"""
The metrics of alarms and webhooks (the rows are in L{dashd.ops.metrics}'
table), read at scrape time from the alarm engine and the webhook
dispatcher.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class AlarmMetrics:
    def __init__(self, engine: Any, dispatcher: Any) -> None:
        self.engine = engine
        self.dispatcher = dispatcher

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "dashd_alarms_active", "Active alarms, by severity (all accounts)",
            labels=["severity"])
        for severity, count in sorted(self.engine.active.items()):
            active.add_metric([severity], count)
        yield active
        yield GaugeMetricFamily("dashd_alarm_rules", "Alarm rules this node knows of",
                                value=len(self.engine.rules()))
        yield CounterMetricFamily("dashd_alarms_raised", "Alarms this node raised",
                                  value=self.engine.raised)
        yield CounterMetricFamily("dashd_alarms_cleared", "Alarms this node cleared",
                                  value=self.engine.cleared)
        yield CounterMetricFamily("dashd_webhook_deliveries", "Webhook deliveries answered "
                                  "with 2xx", value=self.dispatcher.sent)
        yield CounterMetricFamily("dashd_webhook_deliveries_dropped", "Webhook deliveries "
                                  "dropped from a full backlog", value=self.dispatcher.dropped)
        yield GaugeMetricFamily("dashd_webhook_backlog", "Webhook deliveries waiting or under "
                                "way", value=self.dispatcher.backlog())
