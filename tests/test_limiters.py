"""
The rate limiters of L{dashd.app.limits} on a Clock: the token bucket's
burst and refill, the failure limiter's window, and their bounded memory.
How the authenticator applies them: test_keys.py; what a client sees (429,
Retry-After): test_limits.py.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from dashd.app.limits import FailureLimiter, TokenBucket, retry_after


def test_the_bucket_allows_a_burst_then_one_request_per_refill():
    clock = Clock()
    bucket = TokenBucket(clock, rate=4.0, burst=3)
    assert [bucket.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("k") == pytest.approx(0.25)
    clock.advance(0.1)
    # Waiting (and asking meanwhile) costs nothing: the wait shrinks.
    assert bucket.take("k") == pytest.approx(0.15)
    clock.advance(0.15)
    assert bucket.take("k") == 0.0
    assert bucket.take("k") == pytest.approx(0.25)
    # Each name has its own bucket.
    assert bucket.take("other") == 0.0


def test_the_bucket_refills_up_to_the_burst_only():
    clock = Clock()
    bucket = TokenBucket(clock, rate=10.0, burst=2)
    bucket.take("k")
    clock.advance(3600)
    assert [bucket.take("k") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_a_rate_of_zero_means_no_limit():
    bucket = TokenBucket(Clock(), rate=0, burst=1)
    assert all(bucket.take("k") == 0.0 for _ in range(1000))


def test_the_bucket_forgets_the_least_recently_seen_names_first():
    clock = Clock()
    bucket = TokenBucket(clock, rate=1.0, burst=1, max_names=3)
    for name in "abc":
        assert bucket.take(name) == 0.0
    assert bucket.take("a") > 0  # a is seen again, so b is now the oldest
    assert bucket.take("d") == 0.0  # ...and is forgotten
    assert len(bucket._buckets) == 3
    assert bucket.take("b") == 0.0  # starts afresh
    assert bucket.take("a") > 0


def test_failures_block_the_address_until_the_window_of_the_first_ends():
    clock = Clock()
    limiter = FailureLimiter(clock, limit=3, window=60.0)
    assert limiter.blocked("a") == 0.0
    assert [limiter.failed("a") for _ in range(2)] == [1, 2]
    assert limiter.blocked("a") == 0.0
    clock.advance(20)
    assert limiter.failed("a") == 3
    assert limiter.blocked("a") == pytest.approx(40.0)
    assert limiter.blocked("b") == 0.0
    clock.advance(39.9)
    assert limiter.blocked("a") == pytest.approx(0.1)
    clock.advance(0.1)
    assert limiter.blocked("a") == 0.0
    # A new window: counting starts again.
    assert limiter.failed("a") == 1


def test_failures_of_an_old_window_do_not_add_up():
    clock = Clock()
    limiter = FailureLimiter(clock, limit=3, window=60.0)
    limiter.failed("a")
    limiter.failed("a")
    clock.advance(60)
    assert limiter.failed("a") == 1
    assert limiter.blocked("a") == 0.0


def test_a_limit_of_zero_never_blocks():
    clock = Clock()
    limiter = FailureLimiter(clock, limit=0)
    for _ in range(100):
        limiter.failed("a")
    assert limiter.blocked("a") == 0.0


def test_the_failure_limiter_forgets_the_oldest_addresses_first():
    clock = Clock()
    limiter = FailureLimiter(clock, limit=1, max_addresses=2)
    limiter.failed("a")
    limiter.failed("b")
    limiter.failed("c")
    assert len(limiter._failures) == 2
    assert limiter.blocked("a") == 0.0  # forgotten: may try again
    assert limiter.blocked("b") > 0 and limiter.blocked("c") > 0


def test_retry_after_is_whole_seconds_at_least_one():
    assert [retry_after(s) for s in (0.0, 0.01, 1.0, 1.2, 59.99)] == [1, 1, 1, 2, 60]
