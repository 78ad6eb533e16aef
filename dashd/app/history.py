"""
The stored history of each device, for ``POST /api/v2/logs``: its log lines
(``rpc.out.Log``), its own notifications (``rpc.out.METHOD``), when it came
and went (``online``, ``offline``) and how its firmware updates ended
(``ota.status``), as they were published to live subscribers.

Not stored: heartbeats (periodic, and kept as the device's info anyway),
calls made to the device (``rpc.in.*``), shadow changes (the shadow has its
own version) and OTA progress. Each device keeps its last
``logs.max_per_device`` events.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dashd.channel.hub import Event
from dashd.store import IStore

log = Logger()

NOT_STORED = ("rpc.out.Heartbeat",)
STORED_NAMES = ("online", "offline", "ota.status")

# Events handed to the store and not yet written. A fleet that floods faster
# than the disk keeps up loses events beyond these (with a warning) rather
# than growing dashd's memory.
MAX_PENDING = 5000
MAX_PENDING_BYTES = 4 * 1024 * 1024

# Seconds between two warnings that events could not be stored.
WARN_EVERY = 60.0


def stored(name: str) -> bool:
    if name in NOT_STORED:
        return False
    return name in STORED_NAMES or name.startswith("rpc.out.")


class History:
    """A fleet event observer that stores what L{stored} accepts."""

    def __init__(self, store: IStore, clock: IReactorTime, keep: int) -> None:
        self.store = store
        self.clock = clock
        self.keep = keep
        self._lost = 0
        self._warned_at: float | None = None
        self.pending = 0
        self.pending_bytes = 0

    def observe(self, event: Event) -> None:
        if not stored(event.name):
            return
        size = len(event.payload)
        if self.pending >= MAX_PENDING or self.pending_bytes + size > MAX_PENDING_BYTES:
            self._lose("the store is behind")
            return
        self.pending += 1
        self.pending_bytes += size
        d = self.store.append_event(
            event.device_id, event.account_id, event.name, event.data,
            self.clock.seconds(), self.keep,
        )
        d.addBoth(self._written, size)

    def _written(self, result: Any, size: int) -> None:
        self.pending -= 1
        self.pending_bytes -= size
        if isinstance(result, Failure):
            self._lose(result.getErrorMessage())

    def _lose(self, why: str) -> None:
        # Say so now and then, not once an event (a chatty fleet would flood
        # the log).
        self._lost += 1
        now = self.clock.seconds()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            log.warn("{count} device event(s) could not be stored: {why}",
                     count=self._lost, why=why)
            self._warned_at = now
            self._lost = 0
