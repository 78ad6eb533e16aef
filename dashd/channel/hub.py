"""
Live notifications: L{dashd.domain.events.Event}s fanned out to the
subscribers of ``/api/v2/notify``.

Publishers go through L{IHub} so that a cluster hub (relaying between
nodes) can replace L{LocalHub}. Each event is encoded once, whatever the
number of subscribers, and only if someone receives it.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface, implementer

from dashd.domain.events import Event

__all__ = ["Event", "IHub", "ISubscriber", "LocalHub"]

class ISubscriber(Interface):
    key = Attribute("the ApiKey the subscriber authenticated with")

    def deliver(event):
        """Send one L{Event}, or nothing if the subscriber's key may not see
        it (see L{dashd.domain.access.event_payload}); must not block."""

    def revoked():
        """Its key was revoked: close the stream."""


class IHub(Interface):
    def publish(event):
        """Deliver C{event} to every subscriber allowed to see it."""

    def subscribe(subscriber):
        """Start delivering events to C{subscriber}."""

    def unsubscribe(subscriber):
        """Stop delivering to it (unknown subscribers are ignored)."""

    def subscriber_count():
        """How many subscribers are attached here."""

    def revoke(key_id):
        """Close every stream opened with this key."""
    def subscribers():
        """The subscribers attached here (for a graceful shutdown)."""


@implementer(IHub)
class LocalHub:
    def __init__(self) -> None:
        self._subscribers: dict[int, Any] = {}

    def publish(self, event: Event) -> None:
        for subscriber in list(self._subscribers.values()):
            subscriber.deliver(event)

    def subscribe(self, subscriber: Any) -> None:
        self._subscribers[id(subscriber)] = subscriber

    def unsubscribe(self, subscriber: Any) -> None:
        self._subscribers.pop(id(subscriber), None)

    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def revoke(self, key_id: str) -> None:
        for subscriber in list(self._subscribers.values()):
            if subscriber.key.id == key_id:
                subscriber.revoked()
    def subscribers(self) -> list[Any]:
        return list(self._subscribers.values())
