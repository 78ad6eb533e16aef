"""
Which connection holds device X, and how to reach it.

The REST layer and the fleet logic talk to devices only through L{IRouter},
so that a multi-node router (the cluster's, L{dashd.cluster}, where the connection
may live on another node) plugs in without touching them. L{LocalRouter} is the
single-process implementation: a dictionary of live sessions.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Attribute, Interface, implementer

from dashd.domain import tokens
from dashd.domain.errors import Offline
from dashd.domain.model import Device


class ISession(Interface):
    """The live connection of one device, as the router sees it."""

    device_id = Attribute("the ID of the device on this connection")
    device = Attribute("the device's record, kept current through device_changed")
    closing = Attribute("True once the connection is being closed (no more calls)")
    base_url = Attribute("the HTTP address the device reached dashd at, or None")

    def call(method, params, timeout):
        """Send a JSON-RPC call; fire with the result, or fail with
        L{dashd.domain.errors.DeviceFailed}, L{dashd.domain.errors.Offline} or
        L{dashd.domain.errors.TimedOut}."""

    def replaced(by):
        """A newer connection of the same device took over (C{by} says
        which, e.g. "a new connection from ADDRESS"): close this one."""

    def disconnect(code, reason):
        """Close the connection (device deleted, token rotated, shutdown)."""

    def desired_changed(document):
        """The shadow's desired section changed: tell the device its delta."""

    def device_changed(device):
        """The device record changed (name, sharing)."""


class IRouter(Interface):
    node_id = Attribute("this node's ID, new at each start (queued calls' claims name it)")
    settle = Attribute("seconds after which every node that lives has been heard of")
    queue_observers = Attribute(
        "callables given the ID of a device calls were queued for, on the node holding it")

    def node_alive(node_id):
        """Whether the node C{node_id} lives (this one, or one heard of lately)."""

    def calls_queued(device_id):
        """Calls were queued for the device: tell the queue observers of
        every node (the one holding the device sends them)."""

    def attach(session):
        """C{session} now holds its device; a previous session of the same
        device held here is told it was replaced. Return that session's
        peer, or None."""

    def detach(session):
        """C{session} closed; return True if it was the one holding the
        device (False if a newer one had replaced it), or a Deferred firing
        with that once known (a cluster asks Redis)."""

    def is_online(device_id):
        """True if a live connection holds the device."""

    def device(device_id):
        """The record of a device a live connection holds here (kept current
        through device_changed), or None: lets a caller that needs only who
        may see the device skip a store read."""

    def record_mark():
        """A mark to take before reading a device's record from the store,
        for L{remember}."""

    def remember(device, mark):
        """The record of an online device, read from the store after
        C{mark}: a router that can tell when it changes may keep it for
        L{record} (a cluster keeps those of devices held elsewhere)."""

    def record(device_id):
        """The record of an online device known to be current here without
        a store read (L{device}'s, or one L{remember} kept), or None."""

    def online_count():
        """How many devices hold a live connection."""

    def online_ids():
        """The IDs of the devices that hold a live connection (the part of a
        device query about ``online``)."""

    def call(device_id, method, params, timeout, announce=False):
        """Call a method on the device wherever it is connected; fails at
        once with L{dashd.domain.errors.Offline} if it is not. C{announce}:
        the node holding the device tells subscribers (``rpc.in.METHOD``)
        once the call is sent, and only then."""

    def desired_changed(device_id, document):
        """Pass a changed shadow to the connection holding the device."""

    def device_changed(device):
        """Pass a changed device record to the connection holding it."""

    def disconnect(device_id, code, reason):
        """Close the device's connection, if it has one."""

    def sessions():
        """The sessions held here (for a graceful shutdown)."""

    def local_session(device_id):
        """The session holding the device on this node, or None."""

    def remote_device(device_id):
        """A Deferred firing with the record of the device as the node
        holding it has it, or None (held nowhere else, or not answering)."""


@implementer(IRouter)
class LocalRouter:
    settle = 0.0

    def __init__(self) -> None:
        self._sessions: dict[str, Any] = {}
        self.node_id = tokens.new_id("n")
        self.queue_observers: list[Callable[[str], None]] = []

    def node_alive(self, node_id: str) -> bool:
        return node_id == self.node_id

    def calls_queued(self, device_id: str) -> None:
        for observer in self.queue_observers:
            observer(device_id)

    def attach(self, session: Any) -> str | None:
        old = self._sessions.get(session.device_id)
        self._sessions[session.device_id] = session
        if old is not None and old is not session:
            old.replaced("a new connection from %s" % session.peer)
            return str(old.peer)
        return None

    def detach(self, session: Any) -> bool:
        if self._sessions.get(session.device_id) is session:
            del self._sessions[session.device_id]
            return True
        return False

    def is_online(self, device_id: str) -> bool:
        return device_id in self._sessions

    def online_count(self) -> int:
        return len(self._sessions)

    def online_ids(self) -> list[str]:
        return list(self._sessions)

    def device(self, device_id: str) -> Device | None:
        session = self._sessions.get(device_id)
        if session is None or session.closing:
            return None
        return session.device

    def record_mark(self) -> int:
        return 0

    def remember(self, device: Device, mark: int) -> None:
        pass  # every device online is held here

    def record(self, device_id: str) -> Device | None:
        return self.device(device_id)

    def call(self, device_id: str, method: str, params: Any, timeout: float,
             announce: bool = False) -> Deferred[Any]:
        session = self._sessions.get(device_id)
        if session is None:
            return fail(Offline("device %s is offline" % device_id))
        return session.call(method, params, timeout, announce)

    def desired_changed(self, device_id: str, document: dict[str, Any]) -> None:
        session = self._sessions.get(device_id)
        if session is not None:
            session.desired_changed(document)

    def device_changed(self, device: Device) -> None:
        session = self._sessions.get(device.id)
        if session is not None:
            session.device_changed(device)

    def disconnect(self, device_id: str, code: int, reason: str) -> None:
        session = self._sessions.get(device_id)
        if session is not None:
            session.disconnect(code, reason)

    def sessions(self) -> list[Any]:
        return list(self._sessions.values())

    def local_session(self, device_id: str) -> Any:
        return self._sessions.get(device_id)

    def remote_device(self, device_id: str) -> Deferred[Device | None]:
        return succeed(None)  # no other node
