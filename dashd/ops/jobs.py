"""
Fleet jobs in the service tree and in the metrics: L{JobService} steps the
L{dashd.app.jobs.JobRunner} every ``jobs.interval`` and gives up its leases
when dashd stops (another node takes the jobs over at once);
L{JobCollector} adds its figures to ``/metrics``:

| metric | type | what |
|---|---|---|
| ``dashd_jobs{state}`` | gauge | jobs this node drives, by state |
| ``dashd_job_executions{state}`` | gauge | executions of the jobs this node drives, by state |
| ``dashd_job_executions_ended_total{state}`` | counter | executions that ended in jobs driven here, by state |
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, ensureDeferred

from dashd.domain import jobs as j


class JobService(TimerService):
    def __init__(self, runner: Any, interval: float, clock: Any) -> None:
        super().__init__(interval, runner.tick)
        self.clock = clock
        self.runner = runner

    def stopService(self) -> Deferred[Any]:
        d = super().stopService()

        def release(_: Any) -> Deferred[Any]:
            return ensureDeferred(self.runner.stop())

        if isinstance(d, Deferred):
            return d.addCallback(release)
        return release(None)


class JobCollector:
    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("dashd_jobs", "Jobs this node drives, by state",
                                 labels=["state"])
        driven = self.runner.jobs_driven
        for state in j.JOB_STATES:
            jobs.add_metric([state], driven.get(state, 0))
        yield jobs
        executions = GaugeMetricFamily(
            "dashd_job_executions", "Executions of the jobs this node drives, by state",
            labels=["state"])
        counts = self.runner.executions()
        for state in j.EXECUTION_STATES:
            executions.add_metric([state], counts.get(state, 0))
        yield executions
        ended = CounterMetricFamily(
            "dashd_job_executions_ended", "Executions that ended in jobs driven here, by state",
            labels=["state"])
        for state in j.FINAL:
            ended.add_metric([state], self.runner.ended.get(state, 0))
        yield ended
