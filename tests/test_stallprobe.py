"""The stall probe (dashd.ops.stallprobe) on a Clock: lateness is recorded
as the reactor saw it, and served as metrics."""

from twisted.internet.task import Clock

from dashd.ops.stallprobe import INTERVAL, LAG_BUCKETS, StallProbe


def _histogram(probe: StallProbe) -> dict[str, float]:
    hist, _busy, longest = probe.families()
    samples = {s.name + str(s.labels.get("le", "")): s.value for s in hist.samples}
    samples["max"] = longest.samples[0].value
    return samples


def test_a_timer_on_time_records_no_lag_and_a_stall_records_its_length():
    clock = Clock()
    probe = StallProbe(clock)
    probe.startService()
    for _ in range(10):
        clock.advance(INTERVAL)
    assert probe.counts[0] == 10 and probe.longest == 0.0
    # The reactor stood still for 0.3 s past the probe's time.
    clock.advance(INTERVAL + 0.3)
    h = _histogram(probe)
    assert h["dashd_reactor_lag_seconds_count"] == 11
    assert h["dashd_reactor_lag_seconds_bucket0.25"] == 10
    assert h["dashd_reactor_lag_seconds_bucket0.5"] == 11
    assert abs(h["dashd_reactor_lag_seconds_sum"] - 0.3) < 1e-9
    assert abs(h["max"] - 0.3) < 1e-9
    # It keeps probing from where it ran, not from where it was due.
    clock.advance(INTERVAL)
    assert probe.counts[0] == 11


def test_a_clock_set_back_is_no_stall_and_stopping_cancels_the_timer():
    clock = Clock()
    probe = StallProbe(clock)
    probe.startService()
    probe.record(-5.0)
    assert probe.counts[0] == 1 and probe.total == 0.0
    probe.stopService()
    assert clock.getDelayedCalls() == []
    assert len(probe.counts) == len(LAG_BUCKETS) + 1


def test_the_part_of_a_stall_the_reactor_s_own_work_accounts_for():
    """Lateness is split: what the reactor thread's CPU time accounts for
    (a long turn) and the rest (waiting for a core on a shared machine)."""
    clock = Clock()
    cpu = [0.0]
    probe = StallProbe(clock, cpu=lambda: cpu[0])
    probe.startService()
    # 0.3 s late, 0.05 s of it working (the interval's worth of CPU is not
    # lateness): a machine too busy to give dashd a core.
    cpu[0] += INTERVAL + 0.05
    clock.advance(INTERVAL + 0.3)
    assert probe.counts[LAG_BUCKETS.index(0.5)] == 1
    assert probe.busy_counts[LAG_BUCKETS.index(0.05)] == 1
    # 0.3 s late, all of it the reactor's own work: a long turn.
    cpu[0] += INTERVAL + 0.3
    clock.advance(INTERVAL + 0.3)
    assert probe.busy_counts[LAG_BUCKETS.index(0.5)] == 1
    # CPU time is never counted beyond the lateness.
    cpu[0] += 5.0
    clock.advance(INTERVAL)
    assert probe.busy_counts[0] == 1
    hist = {s.name + str(s.labels.get("le", "")): s.value for s in probe.families()[1].samples}
    assert hist["dashd_reactor_busy_lag_seconds_count"] == 3
    assert abs(hist["dashd_reactor_busy_lag_seconds_sum"] - 0.35) < 1e-9
