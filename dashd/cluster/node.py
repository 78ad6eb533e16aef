"""
One node of a cluster: the L{IRouter} and L{IHub} that replace the local
ones when ``cluster.redis_url`` is set, and the service that keeps the node
in touch with the others. The messages are described in L{dashd.cluster}.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import redis
from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    fail,
    inlineCallbacks,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dashd.channel.hub import IHub, LocalHub
from dashd.channel.router import IRouter
from dashd.cluster.bus import BusUnavailable, RedisBus, redact
from dashd.cluster.interest import Interest
from dashd.cluster.presence import ATTACH, DETACH, REAP, Presence, parse_holder
from dashd.config import Config
from dashd.domain import tokens
from dashd.domain.errors import (
    Busy,
    DomainError,
    Internal,
    Offline,
    TimedOut,
    from_wire,
    to_wire,
)
from dashd.domain.events import Event
from dashd.domain.model import Device
from dashd.jsontext import compact

log = Logger()

# Seconds a caller waits for a call's answer beyond the call's own timeout
# (the time the request and answer take through Redis).
CALL_GRACE = 2.0
# Calls this node may have outstanding on devices held by other nodes.
MAX_REMOTE_CALLS = 10000
# Devices of a dead node whose offline events are published at once.
REAP_CONCURRENCY = 8
# Records of devices held by other nodes kept for calls through this one
# (see Cluster.remember); changes noted to judge reads in flight.
MAX_RECORDS = 10000



def encode(message: dict[str, Any]) -> bytes:
    return compact(message).encode("utf-8")


def device_from(value: dict[str, Any]) -> Device:
    value = dict(value)
    value["shared_with"] = tuple(value.get("shared_with", ()))
    return Device(**value)


class Keys:
    """The Redis keys and channels of one cluster namespace."""

    def __init__(self, namespace: str) -> None:
        self.prefix = namespace
        self.presence = "%s:presence" % namespace
        self.seq = "%s:seq" % namespace
        self.broadcast = ("%s:all" % namespace).encode()

    def node(self, node_id: str) -> str:
        return "%s:node:%s" % (self.prefix, node_id)

    def devices(self, node_id: str) -> str:
        return "%s:devices:%s" % (self.prefix, node_id)

    def inbox(self, node_id: str) -> bytes:
        return ("%s:to:%s" % (self.prefix, node_id)).encode()


class _MonotonicClock:
    def seconds(self) -> float:
        return time.monotonic()


@dataclass
class _Local:
    """A session this node holds."""

    session: Any
    conn: str
    since: float
    # The seq of its attach in Redis once known; the highest seq of another
    # node's attach of the same device seen before that.
    seq: int | None = None
    contender: int = 0


@dataclass
class _RemoteCall:
    deferred: Deferred[Any]
    timer: IDelayedCall
    node: str
    device_id: str
    method: str


class Cluster:
    """This node: its presence, routing and relaying of notifications."""

    def __init__(self, config: Config, reactor: Any, store: Any, auth: Any, *,
                 make_bus: Callable[..., Any] = RedisBus, monotonic: Any = None) -> None:
        """C{make_bus} makes the bus from L{RedisBus}'s arguments, and
        C{monotonic} (with C{seconds()}) is the clock that judges liveness;
        unit tests pass a fake bus and their Clock."""
        self.config = config
        self.clock = reactor
        self.store = store
        self.auth = auth
        self.node_id = tokens.new_id("n")
        self.keys = Keys(config["cluster.namespace"])
        self.timeout = float(config["cluster.node_timeout"])
        # Liveness is judged on the monotonic clock: a step of the wall clock
        # (NTP) must not make every other node look dead.
        self.presence = Presence(self.node_id, monotonic or _MonotonicClock(), self.timeout)
        self.router = ClusterRouter(self)
        self.hub = ClusterHub(self)
        self._local: dict[str, _Local] = {}
        self._conns = itertools.count(1)
        self._calls: dict[str, _RemoteCall] = {}
        self._call_ids = itertools.count(1)
        # Calls from other nodes waiting for a device held here: a graceful
        # stop lets them finish as it lets its own REST calls finish.
        self.serving = 0
        self._serving_waiters: list[Deferred[None]] = []
        # Detaches waiting for Redis' word (a stop waits for them).
        self._detaching: set[Deferred[bool]] = set()
        # How an event about a device this node does not hold (a dead node's
        # devices going offline) is told: by default to subscribers only;
        # dashd.assembly sets the fleet's publish, which stores it in the
        # devices' history too.
        self.announce: Callable[[Device, str, Any], None] | None = None
        # Other parts' own news for the other nodes (``ap`` messages, see
        # L{tell}): what to do with each kind heard from another node.
        self.app_handlers: dict[str, Callable[[Any], None]] = {}
        # For the metrics (dashd.cluster.metrics).
        self.calls_sent = 0
        self.calls_served = 0
        self.redis_losses = 0
        self._beating = False
        self._bus_down_logged = False
        self._reaping: set[str] = set()
        self._resyncing = False
        self._resync_again = False
        self._stopped = False
        self._retry_call: IDelayedCall | None = None
        self.bus = make_bus(
            config["cluster.redis_url"],
            reactor,
            channels=[self.keys.broadcast, self.keys.inbox(self.node_id)],
            on_messages=self._messages,
            on_connected=self._connected,
            on_disconnected=self._disconnected,
            timeout=min(2.0, self.timeout / 2),
            stale_after=self.timeout,
        )
        self._scripts = {"attach": ATTACH, "detach": DETACH, "reap": REAP}
        # Which nodes want which events (dashd.cluster.interest).
        self.interest = Interest(self, bool(config["cluster.route_events"]))
        self._script_objects: dict[str, Any] = {}
        # The records of devices held by other nodes that calls through here
        # read (who may see and call them), with the connection holding the
        # device then; a change of the record (dc), a new connection, or a
        # loss of Redis (changes may have been missed) drops one. Changes
        # are numbered, so that a record read before a change heard of
        # meanwhile is not kept (see remember).
        self._records: dict[str, tuple[str, Device]] = {}
        self._record_marks = itertools.count(1)
        self._record_changed: dict[str, int] = {}
        self._record_floor = 0
        # Presence scripts asked in this reactor turn (see _presence_write).
        self._presence_batch: list[tuple[str, list[str], list[Any], Deferred[Any]]] = []

    def service(self) -> Service:
        return ClusterService(self)

    # Talking to Redis

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        source = self._scripts[name]

        def run(client: Any) -> Any:
            # redis-py's Script uses EVALSHA and loads the script again if
            # Redis forgot it (after a restart).
            script = self._script_objects.get(name)
            if script is None:
                script = self._script_objects[name] = client.register_script(source)
            return script(keys=keys, args=args, client=client)

        return self.bus.call(run)

    def _presence_write(self, name: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        """Run a presence script (attach, detach) with the others asked in
        the same reactor turn: one pipeline, one round trip to Redis for
        all (a node taking over a dead node's thousands of devices made
        one round trip each, in line with its heartbeat)."""
        d: Deferred[Any] = Deferred()
        if not self._presence_batch:
            self.clock.callLater(0, self._presence_flush)
        self._presence_batch.append((name, keys, args, d))
        return d

    def _presence_flush(self) -> None:
        batch, self._presence_batch = self._presence_batch, []
        sources = {name: self._scripts[name] for name, _, _, _ in batch}

        def run(client: Any) -> Any:
            for name, source in sources.items():
                if name not in self._script_objects:
                    self._script_objects[name] = client.register_script(source)
            pipe = client.pipeline(transaction=False)
            for name, keys, args, _ in batch:
                self._script_objects[name](keys=keys, args=args, client=pipe)
            return pipe.execute(raise_on_error=False)

        def ran(results: list[Any]) -> None:
            for (_, _, _, d), result in zip(batch, results):
                if isinstance(result, redis.RedisError):
                    d.errback(BusUnavailable("Redis: %s" % result))
                elif isinstance(result, Exception):
                    d.errback(result)
                else:
                    d.callback(result)

        def failed(failure: Failure) -> None:
            for _, _, _, d in batch:
                d.errback(failure)

        self.bus.call(run).addCallbacks(ran, failed)

    def tell(self, kind: str, data: Any = None) -> None:
        """Tell the other nodes news of another part of dashd (a live
        notice: lost if Redis is away, so its receiver also polls)."""
        self._broadcast({"t": "ap", "k": kind, "d": data})

    def _broadcast(self, message: dict[str, Any]) -> None:
        message["o"] = self.node_id
        self.bus.publish_nowait(self.keys.broadcast, encode(message))

    # Devices held here (IRouter, through ClusterRouter)

    def attach(self, session: Any) -> str | None:
        device_id = session.device_id
        entry = _Local(session, "%s.%d" % (self.node_id, next(self._conns)), self.clock.seconds())
        old = self._local.get(device_id)
        self._local[device_id] = entry
        self._claim(entry, "new")
        if old is not None and old.session is not session:
            old.session.replaced("a new connection from %s" % session.peer)
            return str(old.session.peer)
        return None

    def _claim(self, entry: _Local, mode: str) -> None:
        device_id = entry.session.device_id
        d = self._presence_write(
            "attach",
            [self.keys.presence, self.keys.devices(self.node_id), self.keys.seq],
            [device_id, self.node_id, entry.conn, repr(entry.since),
             self.keys.broadcast, mode],
        )

        def claimed(seq: Any) -> None:
            if self._local.get(device_id) is not entry:
                return  # closed meanwhile; its detach follows in Redis
            seq = int(seq)
            if seq == 0 or entry.contender > seq:
                # A newer connection of the device, on another node, won.
                self._replaced_remotely(device_id, entry)
                return
            entry.seq = seq

        def not_claimed(failure: Failure) -> None:
            failure.trap(BusUnavailable)
            log.info("device {id}: presence not recorded ({error}); it will be when Redis "
                     "answers again", id=device_id, error=failure.getErrorMessage())

        d.addCallbacks(claimed, not_claimed)
        d.addErrback(lambda f: log.failure("device {id}: recording presence", f, id=device_id))

    def _replaced_remotely(self, device_id: str, entry: _Local) -> None:
        del self._local[device_id]
        log.info("device {id}: a newer connection on another node replaces this one",
                 id=device_id)
        entry.session.replaced("a new connection on another node")

    def detach(self, session: Any) -> bool | Deferred[bool]:
        """Fire with whether this connection still held the device in the
        cluster's presence (Redis decides), so that only then is the device
        said offline: a node that comes back from a pause (SIGSTOP, swap)
        finds its devices removed by the others, and reconnected elsewhere
        meanwhile; the connections it closes then are no news (fencing)."""
        device_id = session.device_id
        entry = self._local.get(device_id)
        if entry is None or entry.session is not session:
            return False
        del self._local[device_id]
        d = self._presence_write(
            "detach",
            [self.keys.presence, self.keys.devices(self.node_id), self.keys.seq],
            [device_id, entry.conn, self.keys.broadcast, self.node_id],
        )

        def detached(removed: Any) -> bool:
            if int(removed or 0):
                return True
            # Not held in Redis: someone else holds it now, or the others
            # removed it (this node was taken for dead and they said it
            # offline then). Unless this connection never made it to Redis
            # (it was away), and nobody else holds the device.
            return entry.seq is None and self.presence.holder(device_id) is None

        def unknown(failure: Failure) -> bool:
            # Redis cannot be told now (the next resync removes the entry):
            # as an island, this node says what it sees.
            failure.trap(BusUnavailable)
            return True

        def failed(failure: Failure) -> bool:
            log.failure("device {id}: removing presence", failure, id=device_id)
            return True

        d.addCallbacks(detached, unknown)
        d.addErrback(failed)
        self._detaching.add(d)
        d.addBoth(lambda held: (self._detaching.discard(d), held)[1])
        return d

    def is_online(self, device_id: str) -> bool:
        if device_id in self._local:
            return True
        holder = self.presence.holder(device_id)
        return holder is not None and holder.node != self.node_id

    def readiness_problem(self) -> str | None:
        """Why this node should take no new devices now, as far as the
        cluster goes: without Redis, its devices cannot be reached from the
        other nodes (and it hears nothing of theirs)."""
        if not self.bus.connected:
            return "Redis is unreachable (devices held here cannot be reached from other nodes)"
        return None

    def nodes_alive(self) -> int:
        """The nodes heard from within node_timeout, this one included."""
        return 1 + sum(1 for n in list(self.presence.heard)
                       if n != self.node_id and self.presence.alive(n))

    def local_count(self) -> int:
        return len(self._local)

    def remote_calls_in_flight(self) -> int:
        return len(self._calls)

    def online_count(self) -> int:
        remote = {d for d, h in self.presence.holders.items()
                  if h.node != self.node_id and self.presence.alive(h.node)}
        return len(remote | set(self._local))

    def online_ids(self) -> list[str]:
        remote = {d for d, h in self.presence.holders.items()
                  if h.node != self.node_id and self.presence.alive(h.node)}
        return list(remote | set(self._local))

    def sessions(self) -> list[Any]:
        return [entry.session for entry in self._local.values()]

    def local_session(self, device_id: str) -> Any:
        entry = self._local.get(device_id)
        return entry.session if entry is not None else None

    # Records of devices held elsewhere, for calls through this node

    def record_mark(self) -> int:
        return next(self._record_marks)

    def remember(self, device: Device, mark: int) -> None:
        """Keep the record of a device another node holds, read from the
        store after C{mark}, unless a change of it was heard of since (or
        Redis was lost): it is then as current as the record the holding
        node's connection keeps, which the changes reach the same way."""
        device_id = device.id
        if (device_id in self._local or mark <= self._record_floor
                or self._record_changed.get(device_id, 0) > mark or not self.bus.connected):
            return
        holder = self.presence.holder(device_id)
        if holder is None or holder.node == self.node_id:
            return
        if len(self._records) >= MAX_RECORDS and device_id not in self._records:
            del self._records[next(iter(self._records))]
        self._records[device_id] = (holder.conn, device)

    def record(self, device_id: str) -> Device | None:
        """The current record of an online device, without a store read:
        its session's here, or the one kept of a device held elsewhere
        while the same connection holds it."""
        session = self.local_session(device_id)
        if session is not None:
            return None if session.closing else session.device
        kept = self._records.get(device_id)
        if kept is None:
            return None
        holder = self.presence.holder(device_id)
        if holder is None or holder.conn != kept[0] or not self.bus.connected:
            del self._records[device_id]
            return None
        return kept[1]

    def _record_changes(self, device_id: str) -> None:
        self._records.pop(device_id, None)
        if len(self._record_changed) >= MAX_RECORDS:
            self._forget_records()
        self._record_changed[device_id] = next(self._record_marks)

    def _forget_records(self) -> None:
        self._records.clear()
        self._record_changed.clear()
        self._record_floor = next(self._record_marks)

    # Calls to devices, wherever they are

    def call(self, device_id: str, method: str, params: Any, timeout: float,
             announce: bool = False) -> Deferred[Any]:
        session = self.local_session(device_id)
        if session is not None:
            return session.call(method, params, timeout, announce)
        holder = self.presence.holder(device_id)
        if holder is None or holder.node == self.node_id:
            return fail(Offline("device %s is offline" % device_id))
        if len(self._calls) >= MAX_REMOTE_CALLS:
            return fail(Busy("too many calls in flight to devices on other nodes", retry_after=1))
        call_id = "%s.%d" % (self.node_id, next(self._call_ids))
        d: Deferred[Any] = Deferred(lambda _: self._forget_call(call_id))
        timer = self.clock.callLater(timeout + CALL_GRACE, self._call_timed_out, call_id, timeout)
        self._calls[call_id] = _RemoteCall(d, timer, holder.node, device_id, method)
        request = {"t": "call", "o": self.node_id, "r": call_id, "id": device_id,
                   "m": method, "p": params, "to": timeout}
        if announce:
            request["a"] = 1  # the holder tells subscribers once it sent it
        self.calls_sent += 1

        def unheard(failure: Failure | None) -> None:
            if failure is None:
                self._fail_call(call_id, Offline(
                    "device %s is offline (its node %s is not listening)"
                    % (device_id, holder.node)))
            else:
                self._fail_call(call_id, Offline(
                    "device %s is held by node %s, which cannot be reached now: %s"
                    % (device_id, holder.node, failure.getErrorMessage())))

        # Heard (the usual case): nothing more until the answer.
        self.bus.publish_unheard(self.keys.inbox(holder.node), encode(request), unheard)
        return d

    def remote_device(self, device_id: str) -> Deferred[Device | None]:
        """The record of a device held by another node, as its connection
        there holds it (for calls while the database is away: the
        connection authenticated the device, and record changes reach it);
        None if no live node holds it."""
        holder = self.presence.holder(device_id)
        if holder is None or holder.node == self.node_id or len(self._calls) >= MAX_REMOTE_CALLS:
            return succeed(None)
        call_id = "%s.%d" % (self.node_id, next(self._call_ids))
        d: Deferred[Any] = Deferred(lambda _: self._forget_call(call_id))
        timer = self.clock.callLater(CALL_GRACE, self._call_timed_out, call_id, CALL_GRACE)
        self._calls[call_id] = _RemoteCall(d, timer, holder.node, device_id, "(its record)")
        sent = self.bus.publish(self.keys.inbox(holder.node), encode(
            {"t": "rec", "o": self.node_id, "r": call_id, "id": device_id}))
        sent.addCallbacks(lambda receivers: None if receivers else self._fail_call(
            call_id, Offline("node %s is not listening" % holder.node)),
            lambda f: self._fail_call(call_id, Offline(f.getErrorMessage())))
        d.addCallback(lambda value: device_from(value) if isinstance(value, dict) else None)
        d.addErrback(lambda f: None if f.check(Offline, TimedOut) else f)
        return d

    def _serve_record(self, message: dict[str, Any]) -> None:
        """Another node asks for the record of a device held here."""
        session = self.local_session(str(message["id"]))
        reply: dict[str, Any] = {"t": "res", "r": message["r"]}
        if session is None or session.closing:
            reply["e"] = to_wire(Offline("device %s is offline" % message["id"]))
        else:
            reply["v"] = asdict(session.device)
        self.bus.publish_nowait(self.keys.inbox(str(message["o"])), encode(reply))

    def _forget_call(self, call_id: str) -> None:
        call = self._calls.pop(call_id, None)
        if call is not None and call.timer.active():
            call.timer.cancel()

    def _fail_call(self, call_id: str, error: Exception) -> None:
        call = self._calls.pop(call_id, None)
        if call is None:
            return
        if call.timer.active():
            call.timer.cancel()
        call.deferred.errback(error)

    def _call_timed_out(self, call_id: str, timeout: float) -> None:
        call = self._calls.get(call_id)
        if call is not None:
            self._fail_call(call_id, TimedOut(
                "device %s did not answer %s within %g s" % (call.device_id, call.method, timeout)))

    def _answered(self, message: dict[str, Any]) -> None:
        call = self._calls.pop(str(message.get("r")), None)
        if call is None:
            return  # timed out or cancelled meanwhile
        if call.timer.active():
            call.timer.cancel()
        error = message.get("e")
        if error is None:
            call.deferred.callback(message.get("v"))
            return
        call.deferred.errback(from_wire(error))

    def _serve_call(self, message: dict[str, Any]) -> None:
        """A call from another node for a device held here."""
        reply_to = str(message["o"])
        call_id = message["r"]
        device_id = str(message["id"])

        def answer(reply: dict[str, Any]) -> None:
            reply.update(t="res", r=call_id)
            self.bus.publish_nowait(self.keys.inbox(reply_to), encode(reply))

        def ok(result: Any) -> None:
            answer({"v": result})

        def failed(failure: Failure) -> None:
            e = failure.value
            if not isinstance(e, DomainError):
                log.failure("serving a call for node {node}", failure, node=reply_to)
                e = Internal("internal error")
            # DeviceFailed, Offline, TimedOut, Busy, TooLarge, Stalled...:
            # the caller raises the same.
            answer({"e": to_wire(e)})

        session = self.local_session(device_id)
        if session is None:
            failed(Failure(Offline("device %s is offline" % device_id)))
            return
        timeout = message.get("to")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            timeout = self.config["rpc.default_timeout"]
        timeout = min(float(timeout), self.config["rpc.max_timeout"])
        d = session.call(str(message["m"]), message.get("p"), timeout,
                         announce=bool(message.get("a")))
        self.serving += 1
        self.calls_served += 1
        d.addBoth(self._served)
        d.addCallbacks(ok, failed)

    def _served(self, result: Any) -> Any:
        self.serving -= 1
        if not self.serving:
            waiters, self._serving_waiters = self._serving_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return result

    def serving_idle(self) -> Deferred[None]:
        """Fire once no call from another node waits for a device here."""
        if not self.serving:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._serving_waiters.append(d)
        return d

    # Changes that must reach the device wherever it is

    def calls_queued(self, device_id: str) -> None:
        self._calls_queued_here(device_id)
        # The device may be held, or just connecting, anywhere.
        self._broadcast({"t": "cq", "id": device_id})

    def _calls_queued_here(self, device_id: str) -> None:
        for observer in self.router.queue_observers:
            try:
                observer(device_id)
            except Exception:
                log.failure("queue observer {observer}", observer=observer)

    def node_alive(self, node_id: str) -> bool:
        return node_id == self.node_id or self.presence.alive(node_id)

    def desired_changed(self, device_id: str, document: dict[str, Any]) -> None:
        session = self.local_session(device_id)
        if session is not None:
            session.desired_changed(document)
        # Also to every other node: the device may have just connected to
        # one of them (whichever holds it delivers).
        self._broadcast({"t": "ds", "id": device_id, "doc": document})

    def device_changed(self, device: Device) -> None:
        self._record_changes(device.id)
        session = self.local_session(device.id)
        if session is not None:
            session.device_changed(device)
        self._broadcast({"t": "dc", "device": asdict(device)})

    def disconnect(self, device_id: str, code: int, reason: str) -> None:
        self._record_changes(device_id)
        session = self.local_session(device_id)
        if session is not None:
            session.disconnect(code, reason)
        self._broadcast({"t": "dx", "id": device_id, "code": code, "reason": reason})

    def revoke(self, key_id: str) -> None:
        self.hub.revoke_here(key_id)
        message = encode({"t": "rv", "o": self.node_id, "key": key_id})
        d = self.bus.publish(self.keys.broadcast, message)

        def failed(failure: Failure) -> None:
            # The other nodes check their streams' keys when Redis answers
            # again (see _resync); their key caches forget within seconds.
            log.warn("revocation of key {key} could not reach the other nodes now: {error}",
                     key=key_id, error=failure.getErrorMessage())

        d.addErrback(failed)

    # Messages from Redis

    def _messages(self, batch: list[tuple[bytes, bytes]]) -> None:
        for channel, data in batch:
            try:
                message = json.loads(data)
                self._message(message)
            except Exception:
                log.failure("cluster message on {channel}", channel=channel)

    def _message(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        origin = message.get("o")
        if origin is not None and origin != self.node_id:
            self.presence.heard_from(str(origin))
        if kind in ("at", "dt"):
            self._presence_changed(kind, message)
            return
        if kind == "call":
            self._serve_call(message)
            return
        if kind == "res":
            self._answered(message)
            return
        if kind == "rec":
            self._serve_record(message)
            return
        if origin == self.node_id:
            return  # our own broadcast: already done here
        if kind == "hb":
            return
        if kind == "bye":
            self._node_gone(str(origin), "node %s stopped" % origin)
        elif kind == "ev":
            event = Event(str(message["n"]), str(message["id"]), message.get("d"),
                          str(message["a"]), tuple(message.get("s") or ()))
            self.hub.deliver_here(event)
            for observer in self.hub.remote_observers:
                try:
                    observer(event, str(origin))
                except Exception:
                    log.failure("remote event observer {observer}", observer=observer)
        elif kind == "ds":
            session = self.local_session(str(message["id"]))
            if session is not None:
                session.desired_changed(message["doc"])
        elif kind == "cq":
            self._calls_queued_here(str(message["id"]))
        elif kind == "dc":
            device = device_from(message["device"])
            self._record_changes(device.id)
            session = self.local_session(device.id)
            if session is not None:
                session.device_changed(device)
        elif kind == "dx":
            self._record_changes(str(message["id"]))
            session = self.local_session(str(message["id"]))
            if session is not None:
                session.disconnect(int(message["code"]), str(message["reason"]))
        elif kind == "in":
            self.interest.heard(str(origin), message.get("v"))
        elif kind == "ap":
            handler = self.app_handlers.get(str(message.get("k")))
            if handler is not None:
                handler(message.get("d"))
        elif kind == "rv":
            key_id = str(message["key"])
            self.auth.forget(key_id)
            self.hub.revoke_here(key_id)

    def _presence_changed(self, kind: str, message: dict[str, Any]) -> None:
        device_id, node, conn, seq = (str(message["id"]), str(message["n"]),
                                      str(message["c"]), int(message["s"]))
        self.presence.apply(kind, device_id, node, conn, seq)
        self._records.pop(device_id, None)
        if kind != "at" or node == self.node_id:
            return
        entry = self._local.get(device_id)
        if entry is None or entry.conn == conn:
            return
        # Another node took a connection of a device held here.
        if entry.seq is None:
            entry.contender = max(entry.contender, seq)
        elif seq > entry.seq:
            self._replaced_remotely(device_id, entry)

    # Staying in touch

    def _connected(self) -> None:
        log.info("cluster node {node}: subscribed to Redis at {url}", node=self.node_id,
                 url=redact(self.config["cluster.redis_url"]))
        self._bus_down_logged = False
        self._forget_records()
        self._resync()

    def _disconnected(self, why: str) -> None:
        self.redis_losses += 1
        self._forget_records()
        log.warn("cluster node {node}: lost Redis ({why}); devices held elsewhere show "
                 "offline until it is back", node=self.node_id, why=why)

    def _resync(self) -> None:
        """Announce again every device held here, then load who holds what
        (one resync at a time; asked again meanwhile, it runs once more)."""
        if self._resyncing:
            self._resync_again = True
            return
        self._resyncing = True
        self._resync_again = False

        def finished(_: Any) -> None:
            self._resyncing = False
            if self._resync_again:
                self._resync()

        d = self._resync_once()
        d.addErrback(lambda f: log.failure("cluster resync", f))
        d.addBoth(finished)

    @inlineCallbacks
    def _resync_once(self) -> Any:
        self.presence.begin_sync()
        for entry in self._local.values():
            entry.seq = None
            entry.contender = 0
        try:
            yield self._heartbeat_once()
            yield self.bus.call(lambda c: c.delete(self.keys.devices(self.node_id)))
            for entry in list(self._local.values()):
                self._claim(entry, "reclaim")

            def snapshot(client: Any) -> Any:
                pipe = client.pipeline(transaction=True)
                pipe.hgetall(self.keys.presence)
                pipe.get(self.keys.seq)
                return pipe.execute()

            raw, seq = yield self.bus.call(snapshot)
            holders = {k.decode(): parse_holder(v) for k, v in raw.items()}
            nodes = sorted({h.node for h in holders.values()} - {self.node_id})
            live: set[str] = set()
            if nodes:
                found = yield self.bus.call(lambda c: c.mget([self.keys.node(n) for n in nodes]))
                live = {n for n, v in zip(nodes, found) if v is not None}
            self.presence.load(holders, int(seq or 0), live)
        except BusUnavailable as e:
            log.info("cluster node {node}: resync failed ({error}); trying again",
                     node=self.node_id, error=str(e))
            # If the subscription broke too, the reader resyncs when it is
            # back; otherwise try again shortly.
            if not self._stopped and self.bus.connected:
                self._retry_call = self.clock.callLater(1.0, self._resync)
            return
        for node in nodes:
            if node not in live:
                self._reap(node)
        # Entries of this node that no session here matches (a detach that
        # Redis missed while it was away).
        mine = {e.conn for e in self._local.values()}
        for device_id, holder in holders.items():
            if holder.node == self.node_id and holder.conn not in mine:
                self._script("detach", [self.keys.presence, self.keys.devices(self.node_id),
                                        self.keys.seq],
                             [device_id, holder.conn, self.keys.broadcast, self.node_id]
                             ).addErrback(lambda f: None)
        self._check_subscribers()
        self.interest.resync()
        log.info("cluster node {node}: {n} devices online in the cluster, {here} here",
                 node=self.node_id, n=self.online_count(), here=len(self._local))

    def _check_subscribers(self) -> None:
        """After a time without Redis, a revocation may have been missed:
        check the keys of the notification streams held here."""
        for key_id in self.hub.key_ids():
            d = self.store.key_credentials(key_id)

            def checked(found: Any, key_id: str = key_id) -> None:
                if found is None:
                    self.auth.forget(key_id)
                    self.hub.revoke_here(key_id)

            d.addCallbacks(checked, lambda f: None)

    def _heartbeat_once(self) -> Deferred[Any]:
        ms = int(self.timeout * 1000)
        return self.bus.call(lambda c: c.set(self.keys.node(self.node_id), b"1", px=ms, get=True))

    def heartbeat(self) -> None:
        """Periodic: tell the others this node lives; notice nodes that died."""
        self._broadcast({"t": "hb"})
        d = self._heartbeat_once()

        def beat(previous: Any) -> None:
            if self._bus_down_logged:
                self._bus_down_logged = False
            if previous is None and self._beating and not self.presence.syncing:
                # Our key had expired: the others may have taken this node
                # for dead and removed its devices. Announce them again.
                log.warn("cluster node {node}: was taken for dead; announcing its devices "
                         "again", node=self.node_id)
                self._resync()
            self._beating = True

        def no_beat(failure: Failure) -> None:
            failure.trap(BusUnavailable)
            self._beating = False
            if not self._bus_down_logged:
                self._bus_down_logged = True
                log.warn("cluster node {node}: Redis does not answer: {error}",
                         node=self.node_id, error=failure.getErrorMessage())

        d.addCallbacks(beat, no_beat)
        d.addErrback(lambda f: log.failure("cluster heartbeat", f))
        if not self.presence.syncing:
            for node in self.presence.silent_nodes():
                self._node_gone(node, "node %s stopped answering" % node)

    def _node_gone(self, node: str, why: str) -> None:
        self.presence.heard.pop(node, None)
        self.interest.forget(node)
        for call_id, call in list(self._calls.items()):
            if call.node == node:
                self._fail_call(call_id, Offline(
                    "device %s went offline before answering %s (%s)"
                    % (call.device_id, call.method, why)))
        self._reap(node)

    def _reap(self, node: str) -> None:
        if node in self._reaping or node == self.node_id:
            return
        self._reaping.add(node)
        d = self._script(
            "reap",
            [self.keys.presence, self.keys.devices(node), self.keys.seq, self.keys.node(node)],
            [node, self.keys.broadcast],
        )

        def reaped(devices: Any) -> Any:
            if not devices:
                return None
            ids = [d.decode() if isinstance(d, bytes) else str(d) for d in devices]
            log.info("cluster node {node}: node {dead} is gone; {n} of its devices are offline",
                     node=self.node_id, dead=node, n=len(ids))
            return self._announce_offline(ids, "node %s stopped answering" % node)

        d.addCallback(reaped)
        d.addErrback(lambda f: log.info("reaping node {dead}: {error}", dead=node,
                                        error=f.getErrorMessage()))
        d.addBoth(lambda _: self._reaping.discard(node))

    def _announce_offline(self, device_ids: list[str], reason: str) -> Deferred[Any]:
        semaphore = DeferredSemaphore(REAP_CONCURRENCY)

        def one(device_id: str) -> Deferred[Any]:
            if self.is_online(device_id):
                return succeed(None)  # back already
            d = self.store.get_device(device_id)

            def publish(device: Device | None) -> None:
                if device is None or self.is_online(device_id):
                    return
                if self.announce is not None:
                    self.announce(device, "offline", {"reason": reason})
                else:
                    self.hub.publish(Event("offline", device.id, {"reason": reason},
                                           device.account_id, device.shared_with))

            return d.addCallback(publish)

        return DeferredList([semaphore.run(one, i) for i in device_ids], consumeErrors=True)

    # Life cycle

    def start(self) -> None:
        log.info("cluster node {node} starting (Redis {url}, namespace {ns})",
                 node=self.node_id, url=redact(self.config["cluster.redis_url"]),
                 ns=self.keys.prefix)
        self.bus.start()

    @inlineCallbacks
    def stop(self) -> Any:
        self._stopped = True
        self.interest.stop()
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        for call_id in list(self._calls):
            self._fail_call(call_id, Offline("this node is shutting down"))
        if self._detaching:
            # The devices closed on the way down: their offline events wait
            # for Redis' word (bounded by the bus' own timeouts).
            yield DeferredList(list(self._detaching), consumeErrors=True)
        try:
            yield self.bus.call(lambda c: c.delete(self.keys.node(self.node_id)))
            yield self.bus.publish(self.keys.broadcast,
                                   encode({"t": "bye", "o": self.node_id}))
        except BusUnavailable:
            pass
        yield self.bus.stop()


@implementer(IRouter)
class ClusterRouter:
    """L{IRouter} over the cluster: a device may be held by any node."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self.queue_observers: list[Any] = []

    @property
    def node_id(self) -> str:
        return self._cluster.node_id

    @property
    def settle(self) -> float:
        # A node that lives beats a few times each node_timeout.
        return 2 * self._cluster.timeout

    def node_alive(self, node_id: str) -> bool:
        return self._cluster.node_alive(node_id)

    def calls_queued(self, device_id: str) -> None:
        self._cluster.calls_queued(device_id)

    def attach(self, session: Any) -> str | None:
        return self._cluster.attach(session)

    def detach(self, session: Any) -> bool:
        return self._cluster.detach(session)

    def is_online(self, device_id: str) -> bool:
        return self._cluster.is_online(device_id)

    def online_count(self) -> int:
        return self._cluster.online_count()

    def online_ids(self) -> list[str]:
        return self._cluster.online_ids()

    def record_mark(self) -> int:
        return self._cluster.record_mark()

    def remember(self, device: Device, mark: int) -> None:
        self._cluster.remember(device, mark)

    def record(self, device_id: str) -> Device | None:
        return self._cluster.record(device_id)

    def device(self, device_id: str) -> Device | None:
        # Only a session held here is known to be current (device_changed
        # reaches every node); elsewhere the caller reads the store.
        session = self._cluster.local_session(device_id)
        if session is None or session.closing:
            return None
        return session.device

    def call(self, device_id: str, method: str, params: Any, timeout: float,
             announce: bool = False) -> Deferred[Any]:
        return self._cluster.call(device_id, method, params, timeout, announce)

    def remote_device(self, device_id: str) -> Deferred[Device | None]:
        return self._cluster.remote_device(device_id)

    def desired_changed(self, device_id: str, document: dict[str, Any]) -> None:
        self._cluster.desired_changed(device_id, document)

    def device_changed(self, device: Device) -> None:
        self._cluster.device_changed(device)

    def disconnect(self, device_id: str, code: int, reason: str) -> None:
        self._cluster.disconnect(device_id, code, reason)

    def sessions(self) -> list[Any]:
        return self._cluster.sessions()

    def local_session(self, device_id: str) -> Any:
        return self._cluster.local_session(device_id)


@implementer(IHub)
class ClusterHub(LocalHub):
    """L{IHub} over the cluster: events reach subscribers on every node (each
    node filters for its own subscribers, see L{dashd.domain.access.event_payload})."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__()
        self._cluster = cluster
        # Called with (event, node ID) for each event another node
        # published (e.g. the firmware updates other nodes drive).
        self.remote_observers: list[Callable[[Event, str], None]] = []

    def publish(self, event: Event) -> None:
        LocalHub.publish(self, event)
        cluster = self._cluster
        targets = cluster.interest.route(event.name, event.account_id, event.shared_with)
        if targets is not None and not targets:
            return  # no other node wants it (its data is not even made)
        message = {"t": "ev", "n": event.name, "id": event.device_id, "d": event.data,
                   "a": event.account_id, "s": list(event.shared_with)}
        if targets is None:
            cluster._broadcast(message)
            return
        if targets:
            # Only the nodes with a subscriber that may see it.
            message["o"] = cluster.node_id
            data = encode(message)
            for node in targets:
                cluster.bus.publish_nowait(cluster.keys.inbox(node), data)

    def subscribe(self, subscriber: Any) -> None:
        LocalHub.subscribe(self, subscriber)
        self._cluster.interest.subscribers_changed()

    def unsubscribe(self, subscriber: Any) -> None:
        LocalHub.unsubscribe(self, subscriber)
        self._cluster.interest.subscribers_changed()

    def ready_for(self, key: Any) -> Deferred[None] | None:
        """Before a subscriber's stream opens: see L{Interest.ready_for}."""
        return self._cluster.interest.ready_for(key)

    def deliver_here(self, event: Event) -> None:
        LocalHub.publish(self, event)

    def revoke(self, key_id: str) -> None:
        self._cluster.revoke(key_id)

    def revoke_here(self, key_id: str) -> None:
        LocalHub.revoke(self, key_id)

    def key_ids(self) -> set[str]:
        return {s.key.id for s in self._subscribers.values()}


class ClusterService(Service):
    """Starts after the store and stops before it: joins the cluster, beats
    the heart, and on the way out tells the others this node is gone."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        interval = max(0.1, cluster.timeout / 4)
        self._loop = LoopingCall(self._beat)
        self._loop.clock = cluster.clock
        self._interval = interval

    def _beat(self) -> None:
        try:
            self.cluster.heartbeat()
        except Exception:
            log.failure("cluster heartbeat")

    def startService(self) -> None:
        super().startService()
        self.cluster.start()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return self.cluster.stop()
