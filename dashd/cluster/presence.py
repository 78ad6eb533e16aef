"""
Presence: which node holds which device, in Redis and in each node's memory.

In Redis (C{P} is C{cluster.namespace}):

- ``P:presence``, a hash: device ID -> ``{"n": node, "c": connection,
  "t": since, "s": seq}`` (JSON), the connection that holds the device;
- ``P:seq``: a counter; every change of ``P:presence`` takes the next
  number;
- ``P:node:NODE``: exists while node NODE lives (it renews it, with a time
  to live of C{cluster.node_timeout});
- ``P:devices:NODE``: a set, the devices NODE attached, so that a dead
  node's devices are found without scanning everything.

Changes are made only by the Lua scripts below, each atomic, and each
publishes what it changed (``at``: attached, ``dt``: detached, with the
change's seq) on the broadcast channel. Every node keeps a replica
(L{Presence}) from those messages, so that "is device X online" (asked on
every REST view of a device) costs no round trip. Redis delivers messages
to every subscriber in the order it ran the scripts, so all replicas agree;
a node that (re)connects loads a snapshot (``HGETALL`` and the seq, read
together) and applies the messages that came after it.

A holder whose node has not been heard from for C{node_timeout} seconds
does not count: its devices show offline at once, everywhere, and the
first node to notice runs L{REAP}, which removes them (only if the node's
``P:node:NODE`` key is really gone) and tells who did it which devices it
removed, so that exactly one node publishes their ``offline``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# KEYS: presence, devices:NODE, seq. ARGV: device, node, conn, since,
# channel, mode. mode "new": a new connection, which takes the device from
# whoever held it. mode "reclaim": a node re-announcing a connection it
# already had (after Redis restarted, or after it was cut off): it keeps
# the device only if no newer connection took it meanwhile. Returns the
# change's seq, or 0 when a reclaim lost.
ATTACH = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[6] == 'reclaim' and cur then
  local c = cjson.decode(cur)
  if c.c ~= ARGV[3] and tonumber(c.t) > tonumber(ARGV[4]) then
    return 0
  end
end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1],
  cjson.encode({n=ARGV[2], c=ARGV[3], t=tonumber(ARGV[4]), s=seq}))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[5],
  cjson.encode({t='at', id=ARGV[1], n=ARGV[2], c=ARGV[3], s=seq}))
return seq
"""

# KEYS: presence, devices:NODE, seq. ARGV: device, conn, channel, node.
# Removes the device if that connection still holds it; returns 1 if so.
DETACH = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 0
end
local c = cjson.decode(cur)
if c.c ~= ARGV[2] then
  if c.n ~= ARGV[4] then
    redis.call('SREM', KEYS[2], ARGV[1])
  end
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
local seq = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[3],
  cjson.encode({t='dt', id=ARGV[1], n=ARGV[4], c=ARGV[2], s=seq}))
return 1
"""

# KEYS: presence, devices:NODE, seq, node:NODE. ARGV: node, channel.
# If NODE is gone, remove every device it still holds; return their IDs
# (false if the node is alive after all).
REAP = """
if redis.call('EXISTS', KEYS[4]) == 1 then
  return false
end
local reaped = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local cur = redis.call('HGET', KEYS[1], id)
  if cur then
    local c = cjson.decode(cur)
    if c.n == ARGV[1] then
      redis.call('HDEL', KEYS[1], id)
      local seq = redis.call('INCR', KEYS[3])
      redis.call('PUBLISH', ARGV[2],
        cjson.encode({t='dt', id=id, n=c.n, c=c.c, s=seq}))
      table.insert(reaped, id)
    end
  end
end
redis.call('DEL', KEYS[2])
return reaped
"""


@dataclass(frozen=True)
class Holder:
    node: str
    conn: str
    seq: int


def parse_holder(raw: bytes | str) -> Holder:
    value = json.loads(raw)
    return Holder(str(value["n"]), str(value["c"]), int(value["s"]))


class Presence:
    """This node's replica of ``P:presence`` and of which nodes are alive."""

    def __init__(self, node_id: str, clock: Any, node_timeout: float) -> None:
        """C{clock} has C{seconds()}: a monotonic clock in dashd, a
        L{twisted.internet.task.Clock} in tests."""
        self.node_id = node_id
        self._clock = clock
        self._timeout = node_timeout
        self.holders: dict[str, Holder] = {}
        # node -> when it was last heard from (clock seconds)
        self.heard: dict[str, float] = {}
        self.syncing = True
        self._buffer: list[tuple[str, str, str, str, int]] = []

    # Nodes

    def heard_from(self, node: str) -> None:
        self.heard[node] = self._clock.seconds()

    def alive(self, node: str) -> bool:
        if node == self.node_id:
            return True
        last = self.heard.get(node)
        return last is not None and self._clock.seconds() - last <= self._timeout

    def silent_nodes(self) -> list[str]:
        """Nodes not heard from within the timeout; they are forgotten (and
        their devices count as offline) from now on."""
        now = self._clock.seconds()
        gone = [n for n, t in self.heard.items() if now - t > self._timeout]
        for node in gone:
            del self.heard[node]
        return gone

    # Devices

    def holder(self, device_id: str) -> Holder | None:
        """The holder of the device if its node is alive."""
        holder = self.holders.get(device_id)
        if holder is None or not self.alive(holder.node):
            return None
        return holder

    def online_devices(self) -> set[str]:
        return {d for d, h in self.holders.items() if self.alive(h.node)}

    def apply(self, kind: str, device_id: str, node: str, conn: str, seq: int) -> Holder | None:
        """An ``at``/``dt`` message; returns the new holder after an ``at``."""
        if self.syncing:
            self._buffer.append((kind, device_id, node, conn, seq))
            return None
        return self._apply(kind, device_id, node, conn, seq)

    def _apply(self, kind: str, device_id: str, node: str, conn: str, seq: int) -> Holder | None:
        current = self.holders.get(device_id)
        if current is not None and current.seq >= seq:
            return None  # older than what we know
        if kind == "at":
            holder = Holder(node, conn, seq)
            self.holders[device_id] = holder
            return holder
        if current is not None and current.conn == conn:
            del self.holders[device_id]
        return None

    def begin_sync(self) -> None:
        """The subscription is (re)established: hold ``at``/``dt`` messages
        until the snapshot is loaded."""
        self.syncing = True
        self._buffer = []

    def load(
        self, snapshot: dict[str, Holder], seq: int, live_nodes: set[str]
    ) -> list[tuple[str, Holder]]:
        """Replace the replica with a snapshot read at C{seq}, then apply the
        messages held meanwhile that are newer. Returns the ``at`` changes
        among those (device, holder)."""
        self.holders = dict(snapshot)
        now = self._clock.seconds()
        for node in live_nodes:
            self.heard[node] = now
        buffered, self._buffer = self._buffer, []
        self.syncing = False
        changes = []
        for kind, device_id, node, conn, s in buffered:
            if s > seq:
                holder = self._apply(kind, device_id, node, conn, s)
                if holder is not None:
                    changes.append((device_id, holder))
        return changes
