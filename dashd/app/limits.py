"""
Rate limits: a token bucket per API key (and per device, on the device
channel), and a count of failed authentications per client address and per
key or device ID, so that a runaway tool cannot starve the others and
guessing secrets is visible in the log without flooding it.

Both keep their state in bounded dictionaries: the oldest entries are
forgotten first when they are full, which at worst lets a forgotten client
start afresh.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime


class TokenBucket:
    """``rate`` requests a second per name, in bursts of up to ``burst``."""

    def __init__(self, clock: IReactorTime, rate: float, burst: int, max_names: int = 100000):
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._max_names = max_names
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, name: str) -> float:
        """Take one token; return 0 if allowed, else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self._clock.seconds()
        tokens, last = self._buckets.pop(name, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._remember(name, (tokens - 1, now))
            return 0.0
        self._remember(name, (tokens, now))
        return (1 - tokens) / self.rate

    def _remember(self, name: str, state: tuple[float, float]) -> None:
        self._buckets[name] = state
        if len(self._buckets) > self._max_names:
            self._buckets.popitem(last=False)


class FailureLimiter:
    """
    Failures per name (a client address, a key ID) in a window of
    ``window`` seconds: L{blocked} says how long a name that had ``limit``
    of them has until its window ends. What that means is the caller's
    (L{dashd.app.auth}: its failures get 429, its successes go through).
    """

    def __init__(self, clock: IReactorTime, limit: int, window: float = 60.0,
                 max_addresses: int = 100000):
        self._clock = clock
        self.limit = limit
        self.window = window
        self._max_addresses = max_addresses
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def blocked(self, address: str) -> float:
        """0 if the name is under its limit, else the seconds until its
        window ends."""
        if self.limit <= 0:
            return 0.0
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        count, start = entry
        left = start + self.window - self._clock.seconds()
        if left <= 0:
            del self._failures[address]
            return 0.0
        return left if count >= self.limit else 0.0

    def failed(self, address: str) -> int:
        """Record a failure; return how many this window has seen."""
        now = self._clock.seconds()
        count, start = self._failures.pop(address, (0, now))
        if now - start >= self.window:
            count, start = 0, now
        count += 1
        self._failures[address] = (count, start)
        if len(self._failures) > self._max_addresses:
            self._failures.popitem(last=False)
        return count


def retry_after(seconds: float) -> int:
    """A Retry-After value: whole seconds, at least 1."""
    return max(1, int(math.ceil(seconds)))
