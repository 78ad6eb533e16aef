"""
Notification tickets on a Clock: single use, short-lived, no longer than
their key, bounded in number; kept as hashes only.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from dashd.app.auth import Authenticator
from dashd.app.keys import mint
from dashd.app.tickets import TICKET_SECONDS, LocalTickets, NotifyTickets
from dashd.domain import tokens
from dashd.domain.errors import Unauthenticated
from test_auth import FakeStore, _outcome


def _tickets(expires: float | None = None) -> tuple[NotifyTickets, LocalTickets, Any, Clock]:
    clock = Clock()
    clock.advance(1000)
    store = FakeStore()
    key, secret = mint("a1", "k", "admin", 0.0, expires=expires)
    store.keys[key.id] = (key, tokens.hash_secret(secret))
    local = LocalTickets(clock, max_tickets=3)
    return NotifyTickets(local, Authenticator(store, clock), clock), local, key, clock


def _issue(tickets: NotifyTickets, key: Any) -> tuple[str, float]:
    from twisted.internet.defer import ensureDeferred

    return _outcome(ensureDeferred(tickets.issue(key)))


def _redeem(tickets: NotifyTickets, ticket: str) -> Any:
    from twisted.internet.defer import ensureDeferred

    return _outcome(ensureDeferred(tickets.redeem(ticket, "10.0.0.1")))


def test_a_ticket_opens_once_within_its_time():
    tickets, local, key, clock = _tickets()
    ticket, expires = _issue(tickets, key)
    assert expires == clock.seconds() + TICKET_SECONDS
    assert ticket not in str(local._tickets)  # only its hash is kept
    assert _redeem(tickets, ticket).id == key.id
    assert isinstance(_redeem(tickets, ticket), Unauthenticated)
    late, _ = _issue(tickets, key)
    clock.advance(TICKET_SECONDS)
    assert isinstance(_redeem(tickets, late), Unauthenticated)


def test_a_ticket_lives_no_longer_than_its_key_and_tickets_are_bounded():
    tickets, local, key, clock = _tickets(expires=1010.0)
    ticket, expires = _issue(tickets, key)
    assert expires == 1010.0
    clock.advance(10)
    assert isinstance(_redeem(tickets, ticket), Unauthenticated)
    tickets, local, key, clock = _tickets()
    made = [_issue(tickets, key)[0] for _ in range(5)]
    assert len(local._tickets) == 3
    assert isinstance(_redeem(tickets, made[0]), Unauthenticated)
    assert _redeem(tickets, made[-1]).id == key.id
