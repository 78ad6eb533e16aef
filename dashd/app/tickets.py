"""
Tickets for the notification stream: a way to open ``/api/v2/notify``
without the API key in the URL, where browsers print it in console errors
and proxies log it (a browser cannot give a WebSocket an Authorization
header).

``POST /api/v2/notify/ticket`` (with the key in the Authorization header)
answers a ticket; ``/api/v2/notify?ticket=TICKET`` opens the stream as that
key. A ticket works once, within L{TICKET_SECONDS}, and only while its key
does (a key revoked or expired meanwhile opens nothing). Only a hash of each
ticket is kept: on this node (L{LocalTickets}), or in Redis for a cluster,
whose nodes share them (L{dashd.cluster.tickets}).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from dashd.app.auth import Authenticator
from dashd.domain import tokens
from dashd.domain.errors import Unauthenticated
from dashd.domain.model import ApiKey

TICKET_SECONDS = 30.0
TICKET_PREFIX = "nt_"
# Tickets held on one node at most; the oldest go first.
MAX_LOCAL_TICKETS = 10000


class ITicketStore(Interface):
    def put(ticket_hash, key_id, seconds):
        """Keep the ticket (by its hash) for C{seconds}; fire when kept."""

    def take(ticket_hash):
        """Forget the ticket and fire with its key ID, or None if there is
        none (unknown, used or expired)."""


@implementer(ITicketStore)
class LocalTickets:
    def __init__(self, clock: IReactorTime, max_tickets: int = MAX_LOCAL_TICKETS) -> None:
        self._clock = clock
        self._max = max_tickets
        self._tickets: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def put(self, ticket_hash: str, key_id: str, seconds: float) -> Deferred[None]:
        now = self._clock.seconds()
        # Expired ones go first (they are in the order they were made).
        while self._tickets:
            oldest = next(iter(self._tickets.values()))
            if oldest[1] > now and len(self._tickets) < self._max:
                break
            self._tickets.popitem(last=False)
        self._tickets[ticket_hash] = (key_id, now + seconds)
        return succeed(None)

    def take(self, ticket_hash: str) -> Deferred[str | None]:
        found = self._tickets.pop(ticket_hash, None)
        if found is None or found[1] <= self._clock.seconds():
            return succeed(None)
        return succeed(found[0])


class NotifyTickets:
    def __init__(self, store: ITicketStore, auth: Authenticator, clock: IReactorTime) -> None:
        self._store = store
        self._auth = auth
        self._clock = clock

    async def issue(self, by: ApiKey) -> tuple[str, float]:
        """A new ticket for C{by}'s stream, and when it expires."""
        ticket = TICKET_PREFIX + secrets.token_urlsafe(32)
        seconds = TICKET_SECONDS
        if by.expires is not None:
            seconds = max(0.0, min(seconds, by.expires - self._clock.seconds()))
        await self._store.put(tokens.hash_secret(ticket), by.id, seconds)
        return ticket, self._clock.seconds() + seconds

    async def redeem(self, ticket: str, address: str | None = None) -> ApiKey:
        """The key a ticket was made for, once.
        @raise Unauthenticated: no such ticket (unknown, used, expired), or
            its key no longer works."""
        key_id: Any = None
        if ticket.startswith(TICKET_PREFIX) and len(ticket) < 100:
            key_id = await self._store.take(tokens.hash_secret(ticket))
        if key_id is None:
            raise self._auth.refused(Unauthenticated(
                "unknown, used or expired ticket: a ticket opens one stream, within %g s; ask "
                "POST /api/v2/notify/ticket for another" % TICKET_SECONDS), address)
        return await self._auth.api_key_by_id(key_id, address)
