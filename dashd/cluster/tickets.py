"""
Notification tickets (L{dashd.app.tickets}) shared by the nodes of a
cluster: a ticket made on one node may be used on another, once. Each is a
Redis string ``P:ticket:HASH`` (``P`` the cluster's namespace, HASH the
ticket's SHA-256: the ticket itself is never stored) holding its key's ID,
set with an expiry and taken with GETDEL, so that only one use finds it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from dashd.app.tickets import ITicketStore
from dashd.domain.errors import Unavailable


@implementer(ITicketStore)
class RedisTickets:
    def __init__(self, bus: Any, namespace: str) -> None:
        self._bus = bus
        self._prefix = "%s:ticket:" % namespace

    def put(self, ticket_hash: str, key_id: str, seconds: float) -> Deferred[None]:
        name = self._prefix + ticket_hash
        milliseconds = max(1, int(seconds * 1000))
        d = self._bus.call(lambda client: client.set(name, key_id, px=milliseconds))
        return d.addCallbacks(lambda _: None, _unavailable)

    def take(self, ticket_hash: str) -> Deferred[str | None]:
        name = self._prefix + ticket_hash
        d = self._bus.call(lambda client: client.getdel(name))
        return d.addCallbacks(_text, _unavailable)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _unavailable(failure: Any) -> None:
    raise Unavailable("the cluster's Redis cannot keep notification tickets now: %s"
                      % failure.getErrorMessage(), retry_after=5)
