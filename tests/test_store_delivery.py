"""
The SQLite store delivers what its threads return on the reactor a slice of
time at a time, in order (a writer batch is up to 1,000 jobs, whose
callbacks took up to a quarter of a second in one turn in a connect storm;
issue 21 item 2, docs/performance.md).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from dashd.store import delivery, sqlite


def test_results_are_delivered_a_slice_at_a_time_in_the_order_they_came(tmp_path, monkeypatch):
    monkeypatch.setattr(delivery, "DELIVERY_SLICE", 0.0)  # one result a turn
    clock = Clock()
    store = sqlite.SQLiteStore(str(tmp_path / "d.sqlite3"), clock)
    seen: list[object] = []
    first = [Deferred() for _ in range(3)]
    for i, d in enumerate(first):
        d.addBoth(lambda r, i=i: seen.append(("first", i, r)))
    failed: Deferred[object] = Deferred()
    failed.addErrback(lambda f: seen.append(("failed", f.getErrorMessage())))
    store._delivered([(first[0], "a"), (first[1], "b"), (first[2], Failure(ValueError("c")))])
    # One result, then the reactor turns before the next.
    assert seen == [("first", 0, "a")]
    # A second batch (or the stop) comes behind what is still waiting.
    store._delivered([(failed, Failure(ValueError("no"))), (None, lambda: seen.append("stop"))])
    assert len(seen) == 1
    for _ in range(4):
        clock.advance(0)
    assert seen[1] == ("first", 1, "b")
    assert seen[2][:2] == ("first", 2)
    assert seen[3:] == [("failed", "no"), "stop"]
    assert clock.getDelayedCalls() == []


def test_within_the_slice_everything_goes_in_one_turn(tmp_path):
    clock = Clock()
    store = sqlite.SQLiteStore(str(tmp_path / "d.sqlite3"), clock)
    ds = [Deferred() for _ in range(100)]
    got: list[int] = []
    for i, d in enumerate(ds):
        d.addCallback(got.append)
    store._delivered([(d, i) for i, d in enumerate(ds)])
    assert got == list(range(100))
    assert clock.getDelayedCalls() == []
