"""
Which nodes want which notifications, so that a node sends each event only
to the nodes with a subscriber that may see it (L{ClusterHub.publish}),
instead of to every node, each of which decodes it and mostly drops it.

A node's interest is ``"*"`` when one of its subscribers has a console key
(it sees everything), else the accounts its subscribers' keys belong to
(an event is of interest where its account, or an account it is shared
with, is listed; each node still filters for its own subscribers,
L{dashd.domain.access.event_payload}). It is kept in Redis, in the hash
``P:interest`` (node ID -> JSON), read by a node when it (re)joins, and told
on ``P:all`` (``{"t": "in", "v": ...}``) when it changes: at once when it
grows, L{LINGER} seconds later when it shrinks (a subscriber that
reconnects causes no churn).

An event goes to every node (one broadcast) when some node heard from has
no known interest (it has not told it yet, or runs an older dashd), when
every other node wants it, and for the kinds in L{EVERY_NODE}:
``ota.status``, which every node keeps to finish firmware updates whichever
node drove them (L{dashd.app.firmware.OtaManager.remote_event}). A node
with a known interest gets what it wants even while it seems silent (a busy
node reads heartbeats late; a message to a dead node's channel costs
little); what a node wanted is forgotten when it is found gone, and each
node tells its interest again every L{RETELL} seconds, so that a node taken
for dead by mistake is soon routed to again rather than sent everything.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from dashd.domain.access import CONSOLE_KIND
from dashd.jsontext import compact


def encode(message: dict[str, Any]) -> bytes:
    return compact(message).encode("utf-8")

log = Logger()

LINGER = 2.0
RETELL = 10.0
# A new subscriber's stream opens once Redis took the node's grown interest,
# or after this many seconds (Redis slow or away) whatever.
READY_WAIT = 1.0
# Seconds a new subscriber's account counts before its stream is open.
PENDING = 3.0
EVERY_NODE = frozenset({"ota.status"})
ALL = "*"


class Interest:
    def __init__(self, cluster: Any, enabled: bool = True) -> None:
        self._cluster = cluster
        self.enabled = enabled
        self.key = "%s:interest" % cluster.keys.prefix
        # Other nodes' interest: node ID -> ALL or a frozenset of accounts.
        self.known: dict[str, Any] = {}
        # What this node told (ALL or a frozenset).
        self.mine: Any = frozenset()
        self._linger: IDelayedCall | None = None
        self._retell: IDelayedCall | None = None
        # Accounts (or ALL) of subscribers whose stream is opening.
        self._pending: dict[str, int] = {}
        # Other parts of this node that want events of some accounts
        # whether or not a subscriber is here: callables returning those
        # accounts (the jobs driven here, whose continuous targets and
        # cancels follow device and job events from every node); they call
        # L{subscribers_changed} when what they return changes.
        self.sources: list[Any] = []
        # Events sent to some nodes only, to none, to all (for the metrics).
        self.routed = 0
        self.skipped = 0
        self.broadcast = 0

    # This node's

    def local(self) -> Any:
        if ALL in self._pending:
            return ALL
        accounts = set(self._pending)
        for source in self.sources:
            accounts.update(source())
        for subscriber in self._cluster.hub.subscribers():
            key = subscriber.key
            if key.kind == CONSOLE_KIND:
                return ALL
            accounts.add(key.account_id)
        return frozenset(accounts)

    def ready_for(self, key: Any) -> Any:
        """A subscriber with C{key} is about to open a stream here: None if
        the other nodes already send what it may see, else a Deferred that
        fires once Redis has taken this node's grown interest (so that an
        event published elsewhere right after the stream opens comes here),
        or after L{READY_WAIT} seconds."""
        if not self.enabled:
            return None
        want = ALL if key.kind == CONSOLE_KIND else key.account_id
        if self.mine == ALL or (want != ALL and want in self.mine):
            return None
        self._pending[want] = self._pending.get(want, 0) + 1
        self._cluster.clock.callLater(PENDING, self._opened, want)
        told = self.subscribers_changed()
        if told is None:
            return None
        waited: Any = Deferred()
        timer = self._cluster.clock.callLater(READY_WAIT, lambda: waited.called or
                                              waited.callback(None))

        def done(_: Any) -> None:
            if timer.active():
                timer.cancel()
            if not waited.called:
                waited.callback(None)

        told.addBoth(done)
        return waited

    def _opened(self, want: str) -> None:
        left = self._pending.get(want, 0) - 1
        if left > 0:
            self._pending[want] = left
        else:
            self._pending.pop(want, None)
        self.subscribers_changed()

    def subscribers_changed(self) -> Any:
        """Fire (a Deferred, if the interest grew and was told) once Redis
        took it."""
        if not self.enabled:
            return None
        now = self.local()
        if now == self.mine:
            if self._linger is not None and self._linger.active():
                self._linger.cancel()
            return None
        grown = now == ALL or (self.mine != ALL and not now <= self.mine)
        if grown:
            return self._tell(now)
        if self._linger is None or not self._linger.active():
            self._linger = self._cluster.clock.callLater(LINGER, self._shrink)
        return None

    def _shrink(self) -> None:
        self._linger = None
        now = self.local()
        if now != self.mine:
            self._tell(now)

    def _tell(self, value: Any) -> Any:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self.mine = value
        wire = ALL if value == ALL else sorted(value)
        data = compact(wire)
        cluster = self._cluster
        # In order on the command thread: stored, then told.
        cluster.bus.call(lambda c: c.hset(self.key, cluster.node_id, data)).addErrback(
            lambda f: log.info("cluster: interest not stored now: {error}",
                               error=f.getErrorMessage()))
        told = cluster.bus.publish(cluster.keys.broadcast,
                                   encode({"t": "in", "v": wire, "o": cluster.node_id}))
        told.addErrback(lambda f: None)  # the others read it at their resync
        return told

    # The others'

    def heard(self, node: str, value: Any) -> None:
        if value == ALL:
            self.known[node] = ALL
        elif isinstance(value, list):
            self.known[node] = frozenset(str(v) for v in value)

    def forget(self, node: str) -> None:
        self.known.pop(node, None)

    def resync(self) -> Any:
        """(Re)joined: read every node's interest, drop those of dead nodes,
        and tell this node's again (the others may have missed it)."""
        node_id = self._cluster.node_id
        keys = self._cluster.keys

        def load(client: Any) -> Any:
            raw = client.hgetall(self.key)
            nodes = [n.decode() for n in raw if n.decode() != node_id]
            alive = client.mget([keys.node(n) for n in nodes]) if nodes else []
            dead = [n for n, v in zip(nodes, alive) if v is None]
            if dead:
                client.hdel(self.key, *dead)
            return {n: json.loads(raw[n.encode()]) for n, v in zip(nodes, alive)
                    if v is not None}

        def loaded(found: dict[str, Any]) -> None:
            self.known.clear()
            for node, value in found.items():
                self.heard(node, value)
            if self.enabled:
                self._tell(self.local())
                if self._retell is None or not self._retell.active():
                    self._retell = self._cluster.clock.callLater(RETELL, self._again)

        d = self._cluster.bus.call(load)
        d.addCallback(loaded)
        d.addErrback(lambda f: log.info("cluster: interest not read now: {error}",
                                        error=f.getErrorMessage()))
        return d

    def _again(self) -> None:
        self._retell = None
        if self._cluster._stopped:
            return
        if self._cluster.bus.connected:
            self._tell(self.mine)
        self._retell = self._cluster.clock.callLater(RETELL, self._again)

    def stop(self) -> None:
        for call in (self._linger, self._retell):
            if call is not None and call.active():
                call.cancel()

    # Routing

    def route(self, name: str, account_id: str, shared_with: tuple[str, ...]
              ) -> list[str] | None:
        """The other nodes to send an event to, or None for all of them."""
        if not self.enabled or name in EVERY_NODE:
            self.broadcast += 1
            return None
        me = self._cluster.node_id
        known = self.known
        for node in self._cluster.presence.heard:
            if node not in known and node != me:
                self.broadcast += 1
                return None  # not known yet: it gets everything
        targets = []
        for node, value in known.items():
            if value == ALL or account_id in value or (
                    shared_with and not value.isdisjoint(shared_with)):
                targets.append(node)
        if targets and len(targets) == len(known):
            self.broadcast += 1
            return None  # all of them: one message
        if targets:
            self.routed += 1
        else:
            self.skipped += 1
        return targets
