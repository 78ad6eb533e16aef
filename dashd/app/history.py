"""
The stored history of each device, for ``POST /api/v2/logs``: its log lines
(``rpc.out.Log``), its own notifications (``rpc.out.METHOD``), when it came
and went (``online``, ``offline``) and how its firmware updates ended
(``ota.status``), as they were published to live subscribers.

Not stored: heartbeats (periodic, and kept as the device's info anyway),
calls made to the device (``rpc.in.*``), shadow changes (the shadow has its
own version) and OTA progress. Each device keeps its last
``logs.max_per_device`` events.

While the database is away (the store answers L{StoreUnreachable}), the
events wait in memory, in the bounds below (L{MAX_PENDING} events and
L{MAX_PENDING_BYTES} in all, a device's and an account's share of them),
each with the time it happened, and are written, in the order they came,
when the store takes them again (tried every L{RETRY_INTERVAL} seconds):
a database blip loses none. Those beyond the bounds, or that the store
refuses for good, are given up: counted in C{lost_total}
(``dashd_history_events_lost_total``) and said in the log.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dashd.channel.hub import Event
from dashd.store import IStore, StoreUnreachable

log = Logger()

NOT_STORED = ("rpc.out.Heartbeat",)
STORED_NAMES = ("online", "offline", "ota.status", "alarm.raised", "alarm.cleared",
                "alarm.acknowledged")

# Events handed to the store and not yet written. A fleet that floods faster
# than the disk keeps up loses events beyond these (with a warning) rather
# than growing dashd's memory; no device, and no account, may hold more than
# its share of them, so that one device's flood never takes another's place.
MAX_PENDING = 10000
MAX_PENDING_BYTES = 8 * 1024 * 1024
# A device's burst of log lines (device.frame_burst is 500 by default) fits.
MAX_PENDING_PER_DEVICE = 500
MAX_PENDING_PER_ACCOUNT = 2500

# Seconds between two warnings that events could not be stored.
WARN_EVERY = 60.0
# Reasons counted between two warnings, at most (the others are summed up).
MAX_REASONS = 20
# Seconds between two tries to write the events waiting for the database.
RETRY_INTERVAL = 1.0


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
        # Why events were lost since the last warning, and how many.
        self._lost: dict[str, int] = {}
        self._warned_at: float | None = None
        self.pending = 0
        self.pending_bytes = 0
        self._by_device: dict[str, int] = {}
        self._by_account: dict[str, int] = {}
        # Events the store could not take (the database away), in the order
        # they came, and the next try; events coming meanwhile queue behind.
        self._again: list[tuple[str, str, str, Any, float, int]] = []
        self._retry: Any = None
        self.lost_total = 0

    def observe(self, event: Event) -> None:
        if not stored(event.name):
            return
        size = len(event.payload)
        device, account = event.device_id, event.account_id
        if self._by_device.get(device, 0) >= MAX_PENDING_PER_DEVICE:
            self._lose("device %s sends them faster than they are stored (%d of its events "
                       "waiting)" % (device, MAX_PENDING_PER_DEVICE))
            return
        if self._by_account.get(account, 0) >= MAX_PENDING_PER_ACCOUNT:
            self._lose("the devices of account %s send them faster than they are stored (%d "
                       "of its events waiting)" % (account, MAX_PENDING_PER_ACCOUNT))
            return
        if self.pending >= MAX_PENDING or self.pending_bytes + size > MAX_PENDING_BYTES:
            self._lose("the store is behind")
            return
        self.pending += 1
        self.pending_bytes += size
        self._by_device[device] = self._by_device.get(device, 0) + 1
        self._by_account[account] = self._by_account.get(account, 0) + 1
        item = (device, account, event.name, event.data, self.clock.seconds(), size)
        if self._again:
            self._again.append(item)  # behind those waiting for the database
        else:
            self._write(item)

    def _write(self, item: tuple[str, str, str, Any, float, int]) -> None:
        device, account, name, data, when, _ = item
        d = self.store.append_event(device, account, name, data, when, self.keep)
        d.addBoth(self._written, item)

    def _written(self, result: Any, item: tuple[str, str, str, Any, float, int]) -> None:
        if isinstance(result, Failure) and result.check(StoreUnreachable):
            # The database is away: keep it (still pending), try again.
            self._again.append(item)
            if self._retry is None or not self._retry.active():
                self._retry = self.clock.callLater(RETRY_INTERVAL, self._write_again)
            return
        device, account, size = item[0], item[1], item[5]
        self.pending -= 1
        self.pending_bytes -= size
        for counts, name in ((self._by_device, device), (self._by_account, account)):
            left = counts.pop(name, 1) - 1
            if left > 0:
                counts[name] = left
        if isinstance(result, Failure):
            self._lose(result.getErrorMessage())

    def _write_again(self) -> None:
        """Hand the waiting events to the store again, in their order (one
        that fails again goes back to the queue, and the ones behind it
        follow it there: the store fails them at once while it is away)."""
        waiting, self._again = self._again, []
        for item in waiting:
            self._write(item)

    def _lose(self, why: str) -> None:
        self.lost_total += 1
        # Say so now and then, not once an event (a chatty fleet would flood
        # the log), with each reason and its count.
        if why not in self._lost and len(self._lost) >= MAX_REASONS:
            why = "other reasons"
        self._lost[why] = self._lost.get(why, 0) + 1
        now = self.clock.seconds()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            for reason, count in self._lost.items():
                log.warn("{count} device event(s) could not be stored: {why}",
                         count=count, why=reason)
            self._warned_at = now
            self._lost = {}
