"""The pure rules of fleet jobs (dashd.domain.jobs): the rate, the abort
rules, the phases."""

from __future__ import annotations

from dashd.domain import jobs as j


def test_an_exponential_rate_grows_after_each_step_of_successes_up_to_its_maximum():
    spec = {"rate": {"base_per_minute": 10, "increment_factor": 2, "after_succeeded": 5,
                     "max_per_minute": 50}}
    assert [j.rate_now(spec, n) for n in (0, 4, 5, 9, 10, 15, 1000)] == \
        [10, 10, 20, 20, 40, 50, 50]
    assert j.rate_now({"rate": {"per_minute": 7}}, 100) == 7
    assert j.rate_now({}, 100) is None


def test_an_abort_rule_waits_for_its_minimum_and_counts_its_kind():
    spec = {"abort": [{"on": "timed_out", "percent": 50, "min_finished": 4}]}
    assert j.rule_fired(spec, {"timed_out": 3}) is None  # 3 finished: below the minimum
    assert j.rule_fired(spec, {"timed_out": 1, "failed": 2, "succeeded": 1}) is None
    fired = j.rule_fired(spec, {"timed_out": 2, "succeeded": 2, "queued": 10})
    assert fired["matching"] == 2 and fired["finished"] == 4 and fired["percent"] == 50.0
    assert fired["message"] == ("2 of 4 finished executions timed out (50.0%, the rule's "
                                "threshold is 50% once 4 have finished)")
    # Skipped and cancelled executions are not finished ones.
    assert j.rule_fired({"abort": [{"on": "any", "percent": 10, "min_finished": 1}]},
                        {"skipped": 5, "cancelled": 5, "succeeded": 1}) is None


def test_phases_are_cumulative_and_the_last_takes_the_rest():
    phases = [{"count": 1}, {"percent": 50}, {"percent": 80}]
    assert j.assign_phases(10, phases) == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    assert j.assign_phases(3, None) == [0, 0, 0]
    # A percentage of a small fleet is rounded up: at least one device.
    assert j.assign_phases(5, [{"percent": 1}, {"percent": 100}]) == [0, 1, 1, 1, 1]


def test_a_phase_s_verdict():
    spec = {"phases": [{"success_threshold": 80, "error_threshold": 30}, {}]}
    assert j.phase_verdict(spec, 0, {"succeeded": 8, "in_progress": 2}) == ("next", None)
    assert j.phase_verdict(spec, 0, {"succeeded": 5, "in_progress": 5})[0] == "wait"
    verdict, why = j.phase_verdict(spec, 0, {"failed": 3, "succeeded": 5, "queued": 2})
    assert verdict == "error" and why.startswith("phase 1: 3 of its 10 devices failed")
    verdict, why = j.phase_verdict(spec, 0, {"failed": 2, "succeeded": 7, "skipped": 4,
                                             "cancelled": 1})
    assert verdict == "short" and "7 of its 10 devices succeeded (70.0%)" in why
