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

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from dashd.domain.access import CONSOLE_KIND
from dashd.jsontext import compact

log = Logger()

LINGER = 2.0
RETELL = 10.0
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
        # Events sent to some nodes only, to none, to all (for the metrics).
        self.routed = 0
        self.skipped = 0
        self.broadcast = 0

    # This node's

    def local(self) -> Any:
        accounts = set()
        for subscriber in self._cluster.hub.subscribers():
            key = subscriber.key
            if key.kind == CONSOLE_KIND:
                return ALL
            accounts.add(key.account_id)
        return frozenset(accounts)

    def subscribers_changed(self) -> None:
        if not self.enabled:
            return
        now = self.local()
        if now == self.mine:
            if self._linger is not None and self._linger.active():
                self._linger.cancel()
            return
        grown = now == ALL or (self.mine != ALL and not now <= self.mine)
        if grown:
            self._tell(now)
        elif self._linger is None or not self._linger.active():
            self._linger = self._cluster.clock.callLater(LINGER, self._shrink)

    def _shrink(self) -> None:
        self._linger = None
        now = self.local()
        if now != self.mine:
            self._tell(now)

    def _tell(self, value: Any) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self.mine = value
        wire = ALL if value == ALL else sorted(value)
        data = compact(wire)
        node_id = self._cluster.node_id
        # In order on the command thread: stored, then told.
        self._cluster.bus.call(lambda c: c.hset(self.key, node_id, data)).addErrback(
            lambda f: log.info("cluster: interest not stored now: {error}",
                               error=f.getErrorMessage()))
        self._cluster._broadcast({"t": "in", "v": wire})

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
