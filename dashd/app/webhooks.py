"""
Outbound webhooks: HTTP endpoints that are told of chosen kinds of events
(alarms, devices coming and going, firmware status, fleet jobs' state and
progress) as signed JSON POSTs.

What a receiver gets (documented in the README, "Webhooks")::

    POST <url>
    Content-Type: application/json
    X-Dashd-Event: alarm.raised
    X-Dashd-Delivery: wd...            (the same on every attempt)
    X-Dashd-Timestamp: 1764090000      (seconds, when this attempt was made)
    X-Dashd-Signature: v1=<hex HMAC-SHA256(secret, TIMESTAMP + "." + BODY)>

    {"id": "wd...", "kind": "alarm.raised", "time": 1764090000.25,
     "webhook": "wh...", "data": {...}}

Delivery (L{WebhookDispatcher}), per endpoint: one request at a time, in
the order the events happened; an answer other than 2xx, a refused or
broken connection or no answer within C{webhooks.timeout} is retried after
C{webhooks.retry_delay}, doubling each time up to
C{webhooks.max_retry_delay}, C{webhooks.max_attempts} times in all, then
given up. What waits is bounded (C{webhooks.backlog} a endpoint): beyond
it the oldest are dropped and counted. The requests are Twisted's
(L{twisted.web.client.Agent}): nothing blocks the reactor; a receiver
that hangs costs one connection until the timeout.

Where it may connect (L{GuardedEndpoints}): ``https://`` (the certificate
verified against the system's roots) or, where ``webhooks.allow_http``
says so, ``http://``; the host's addresses are resolved off the reactor
and a private, loopback, link-local, multicast or reserved one is refused
unless it is in ``webhooks.allowed_networks`` (the address checked is the
one connected to, so a name that resolves differently later gains
nothing).

In a cluster each node delivers the events that happened on it (a device's
on the node holding it). Each node keeps its figures of each endpoint in
Redis too (L{SharedStats}: a hash per endpoint, a field per node, written
at most every C{SHARE_EVERY} seconds), and what GET /webhooks/:id shows is
the cluster's: counts summed over the nodes, the backlogs of the nodes
alive, and the last deliveries of all, newest first.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
from collections import deque
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, error as net_error, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from dashd import __version__
from dashd.config import Config
from dashd.domain import access
from dashd.domain.alarms import Alarm, Rule, alarm_view
from dashd.domain.errors import Busy, Invalid, NotFound
from dashd.domain.model import ApiKey
from dashd.domain.tokens import new_id
from dashd.jsontext import compact
from dashd.store.alarms_sql import AlarmStore, OverLimit

log = Logger()

EVENT_KINDS = ("alarm.raised", "alarm.cleared", "alarm.acknowledged", "device.online",
               "device.offline", "ota.status", "job.state", "job.progress")
# Fleet job events webhooks may be told of (dashd.app.jobs: each published
# once, by the node that changed the job).
_JOB_EVENTS = ("job.state", "job.progress")
# Fleet events webhooks may be told of, by the kind they are sent as.
_DEVICE_EVENTS = {"online": "device.online", "offline": "device.offline",
                  "ota.status": "ota.status"}
LAST_DELIVERIES = 20
# Seconds between two writes of a node's delivery figures to Redis.
SHARE_EVERY = 0.1
# Figures of an endpoint no node wrote for this long are forgotten.
SHARE_TTL = 30 * 24 * 3600
MAX_URL = 2000
MAX_NAME = 200


class Refused(Exception):
    """The endpoint's address is one dashd may not connect to."""


# Where webhooks may go


def address_allowed(address: str, allowed: list[str]) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if getattr(ip, "ipv4_mapped", None) is not None:
        ip = ip.ipv4_mapped  # type: ignore[union-attr]
    if any(ip in ipaddress.ip_network(n, strict=False) for n in allowed):
        return True
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_reserved or ip.is_unspecified)


def check_url(url: Any, config: Config) -> str:
    """The URL, if webhooks may go there (its address is checked again at
    each connection). @raise Invalid: saying why not."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise Invalid("url must be an https:// URL of at most %d characters" % MAX_URL, "url")
    parts = urlsplit(url)
    schemes = ("https", "http") if config["webhooks.allow_http"] else ("https",)
    if parts.scheme not in schemes:
        raise Invalid("url must start with %s" % " or ".join(s + "://" for s in schemes)
                      + ("" if config["webhooks.allow_http"] else
                         " (http:// is refused unless webhooks.allow_http is set)"), "url")
    if not parts.hostname or parts.username or parts.password:
        raise Invalid("url must name a host (and no user or password)", "url")
    try:
        parts.port
    except ValueError:
        raise Invalid("url has a port that is not a number from 0 to 65535", "url") from None
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None and not address_allowed(str(literal),
                                                   config["webhooks.allowed_networks"]):
        raise Invalid("url is a private, loopback or reserved address, which webhooks may "
                      "not be sent to unless webhooks.allowed_networks includes it", "url")
    return url


@implementer(IAgentEndpointFactory)
class GuardedEndpoints:
    """The Agent's way to connect: resolve the host off the reactor, refuse
    addresses that are not allowed, connect to the address checked (TLS
    verified for the host's name on https)."""

    def __init__(self, reactor: Any, allowed: list[str], timeout: float) -> None:
        self._reactor = reactor
        self._allowed = allowed
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> Any:
        return _GuardedEndpoint(self, uri.scheme.decode("ascii"), uri.host.decode("idna"),
                                uri.port)


class _GuardedEndpoint:
    def __init__(self, owner: GuardedEndpoints, scheme: str, host: str, port: int) -> None:
        self._owner = owner
        self._scheme = scheme
        self._host = host
        self._port = port

    def _addresses(self) -> defer.Deferred[list[str]]:
        host = self._host.strip("[]")
        try:
            ipaddress.ip_address(host)
            return defer.succeed([host])
        except ValueError:
            pass
        reactor = self._owner._reactor

        def lookup() -> list[str]:
            infos = socket.getaddrinfo(host, self._port, type=socket.SOCK_STREAM)
            return [str(info[4][0]) for info in infos]

        return deferToThreadPool(reactor, reactor.getThreadPool(), lookup)

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        owner = self._owner

        def chosen(addresses: list[str]) -> Any:
            allowed = [a for a in addresses if address_allowed(a, owner._allowed)]
            if not allowed:
                raise Refused("%s resolves to %s, which webhooks may not be sent to (private, "
                              "loopback or reserved; see webhooks.allowed_networks)"
                              % (self._host, ", ".join(addresses) or "nothing"))
            address = allowed[0]
            kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint: Any = kind(owner._reactor, address, self._port, timeout=owner._timeout)
            if self._scheme == "https":
                endpoint = wrapClientTLS(optionsForClientTLS(self._host), endpoint)
            return endpoint.connect(factory)

        return self._addresses().addCallback(chosen)


class _Discard(protocol.Protocol):
    """Reads a response's body and forgets it; fires when it ends."""

    def __init__(self, done: defer.Deferred[None]) -> None:
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)


# Deliveries


@dataclass
class Delivery:
    id: str
    kind: str
    body: bytes
    created: float
    attempts: int = 0


@dataclass
class _Endpoint:
    hook: dict[str, Any]
    backlog: deque[Delivery]
    in_flight: Delivery | None = None
    request: defer.Deferred[Any] | None = None
    retry: IDelayedCall | None = None
    dropped: int = 0
    delivered: int = 0
    failed: int = 0
    last: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=LAST_DELIVERIES))


def _timed_out(result: Any, timeout: float) -> Failure:
    # Whatever the cancelled request failed with (the Agent wraps it).
    return Failure(defer.TimeoutError("no answer within %g s" % timeout))


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body,
                   hashlib.sha256)
    return "v1=" + mac.hexdigest()


def _merge(figures: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"backlog": 0, "dropped": 0, "delivered": 0, "failed": 0}
    last: list[dict[str, Any]] = []
    for f in figures:
        for k in out:
            out[k] += int(f.get(k, 0))
        last.extend(f.get("last", ()))
    last.sort(key=lambda d: d.get("t", 0), reverse=True)
    out["last"] = last[:LAST_DELIVERIES]
    return out


class SharedStats:
    """The nodes' delivery figures in Redis: ``P:webhook:HOOK``, a hash of
    node ID -> that node's figures (JSON), through the cluster's bus."""

    def __init__(self, bus: Any, namespace: str, node_id: str, alive: Any) -> None:
        self._bus = bus
        self._prefix = "%s:webhook:" % namespace
        self.node_id = node_id
        self._alive = alive

    def write(self, figures: dict[str, dict[str, Any]]) -> defer.Deferred[Any]:
        values = {self._prefix + hook_id: compact(f) for hook_id, f in figures.items()}

        def run(client: Any) -> Any:
            pipe = client.pipeline(transaction=False)
            for key, value in values.items():
                pipe.hset(key, self.node_id, value)
                pipe.expire(key, SHARE_TTL)
            return pipe.execute()

        return self._bus.call(run)

    def read(self, hook_id: str, mine: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        key = self._prefix + hook_id

        def merged(raw: dict[bytes, bytes]) -> dict[str, Any]:
            figures = [mine]
            for node, value in raw.items():
                node_id = node.decode()
                if node_id == self.node_id:
                    continue  # this node's own are fresher in memory
                try:
                    f = json.loads(value)
                except ValueError:
                    continue
                if not self._alive(node_id):
                    f["backlog"] = 0  # what a dead node held is lost
                figures.append(f)
            return _merge(figures)

        return self._bus.call(lambda client: client.hgetall(key)).addCallback(merged)

    def forget(self, hook_id: str) -> defer.Deferred[Any]:
        return self._bus.call(lambda client: client.delete(self._prefix + hook_id))


class WebhookDispatcher:
    def __init__(self, store: AlarmStore, reactor: Any, config: Config,
                 engine_rule: Any = None) -> None:
        self._store = store
        self._reactor = reactor
        self._config = config
        # The rules' webhooks: rule ID -> Rule (the alarm engine's).
        self._rule = engine_rule
        self._hooks: dict[str, _Endpoint] = {}
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = Agent.usingEndpointFactory(
            reactor, GuardedEndpoints(reactor, config["webhooks.allowed_networks"],
                                      config["webhooks.timeout"]), pool=self._pool)
        self._stopped = False
        self.sent = 0
        self.dropped = 0
        # In a cluster (set by dashd.assembly): where the figures are shared.
        self.shared: SharedStats | None = None
        self._dirty: set[str] = set()
        self._share_call: IDelayedCall | None = None

    # Life cycle

    async def start(self) -> None:
        await self.reload()

    async def reload(self) -> None:
        """Read the endpoints from the store (made or changed on another node)."""
        hooks = await self._store.list_webhooks()
        seen = set()
        for hook in hooks:
            seen.add(hook["id"])
            self.put(hook)
        for hook_id in list(self._hooks):
            if hook_id not in seen:
                self.remove(hook_id)

    def stop(self) -> defer.Deferred[Any]:
        self._stopped = True
        if self._share_call is not None and self._share_call.active():
            self._share_call.cancel()
        for endpoint in self._hooks.values():
            if endpoint.retry is not None and endpoint.retry.active():
                endpoint.retry.cancel()
            if endpoint.request is not None:
                endpoint.request.cancel()
        return self._pool.closeCachedConnections()

    def put(self, hook: dict[str, Any]) -> None:
        endpoint = self._hooks.get(hook["id"])
        if endpoint is None:
            self._hooks[hook["id"]] = _Endpoint(hook, deque())
        else:
            endpoint.hook = hook

    def remove(self, hook_id: str) -> None:
        self._dirty.discard(hook_id)
        endpoint = self._hooks.pop(hook_id, None)
        if endpoint is not None:
            if endpoint.retry is not None and endpoint.retry.active():
                endpoint.retry.cancel()
            if endpoint.request is not None:
                endpoint.request.cancel()

    def stats(self, hook_id: str) -> dict[str, Any]:
        endpoint = self._hooks.get(hook_id)
        if endpoint is None:
            return {"backlog": 0, "dropped": 0, "delivered": 0, "failed": 0, "last": []}
        return {"backlog": len(endpoint.backlog) + (1 if endpoint.in_flight else 0),
                "dropped": endpoint.dropped, "delivered": endpoint.delivered,
                "failed": endpoint.failed, "last": list(reversed(endpoint.last))}

    def stats_all(self, hook_id: str) -> defer.Deferred[dict[str, Any]]:
        """The endpoint's figures over the cluster (this node's alone if
        not in one, or if Redis does not answer)."""
        mine = self.stats(hook_id)
        if self.shared is None:
            return defer.succeed(mine)

        def alone(failure: Failure) -> dict[str, Any]:
            log.info("webhook {id}: the other nodes' figures are not readable now: {error}",
                     id=hook_id, error=failure.getErrorMessage())
            return dict(mine, partial=True)

        return self.shared.read(hook_id, mine).addErrback(alone)

    def _changed(self, endpoint: _Endpoint) -> None:
        """Its figures changed: share them soon (in a cluster)."""
        if self.shared is None or self._stopped:
            return
        self._dirty.add(endpoint.hook["id"])
        if self._share_call is None or not self._share_call.active():
            self._share_call = self._reactor.callLater(SHARE_EVERY, self._share)

    def _share(self) -> None:
        self._share_call = None
        dirty, self._dirty = self._dirty, set()
        figures = {hook_id: self.stats(hook_id) for hook_id in dirty if hook_id in self._hooks}
        if not figures or self.shared is None:
            return
        self.shared.write(figures).addErrback(
            lambda f: log.info("webhooks: delivery figures not shared now: {error}",
                               error=f.getErrorMessage()))

    def backlog(self) -> int:
        return sum(len(e.backlog) + (1 if e.in_flight else 0) for e in self._hooks.values())

    # What happens

    # The names of the events L{device_event} acts on.
    DEVICE_EVENTS = tuple(_DEVICE_EVENTS)

    def device_event(self, event: Any) -> None:
        kind = _DEVICE_EVENTS.get(event.name)
        if kind is None or not self._hooks:
            return
        data = {"device_id": event.device_id}
        if event.data is not None:
            data["data"] = event.data
        for endpoint in list(self._hooks.values()):
            hook = endpoint.hook
            if hook["account_id"] == event.account_id and kind in hook["events"]:
                self.enqueue(endpoint, kind, data)

    def job_event(self, job: dict[str, Any], name: str, data: Any) -> None:
        if name not in _JOB_EVENTS or not self._hooks:
            return
        body = {"job_id": job["id"], "data": data}
        for endpoint in list(self._hooks.values()):
            hook = endpoint.hook
            if hook["account_id"] == job["account_id"] and name in hook["events"]:
                self.enqueue(endpoint, name, body)

    def alarm_event(self, name: str, rule: Rule | None, alarm: Alarm) -> None:
        if not self._hooks:
            return
        named = set(rule.webhooks) if rule is not None else set()
        data = alarm_view(alarm)
        if rule is not None:
            data["rule"] = rule.name
        for endpoint in list(self._hooks.values()):
            hook = endpoint.hook
            if hook["account_id"] != alarm.account_id:
                continue
            if name in hook["events"] or hook["id"] in named:
                self.enqueue(endpoint, name, data)

    def test(self, hook_id: str) -> str:
        endpoint = self._hooks.get(hook_id)
        if endpoint is None:
            raise NotFound("no such webhook: %s" % hook_id)
        return self.enqueue(endpoint, "test", {"message": "a test event from dashd"},
                            force=True)

    def enqueue(self, endpoint: _Endpoint, kind: str, data: Any, force: bool = False) -> str:
        if not endpoint.hook["enabled"] and not force:
            return ""
        delivery_id = new_id("wd")
        now = self._reactor.seconds()
        body = compact({"id": delivery_id, "kind": kind, "time": now,
                        "webhook": endpoint.hook["id"], "data": data}).encode("utf-8")
        if len(endpoint.backlog) >= self._config["webhooks.backlog"]:
            lost = endpoint.backlog.popleft()
            endpoint.dropped += 1
            self.dropped += 1
            endpoint.last.append({"id": lost.id, "kind": lost.kind, "t": now,
                                  "attempt": lost.attempts, "status": None,
                                  "error": "dropped: the backlog is full"})
        endpoint.backlog.append(Delivery(delivery_id, kind, body, now))
        self._pump(endpoint)
        self._changed(endpoint)
        return delivery_id

    # Sending

    def _pump(self, endpoint: _Endpoint) -> None:
        if self._stopped or endpoint.in_flight is not None or not endpoint.backlog:
            return
        if self._hooks.get(endpoint.hook["id"]) is not endpoint:
            return
        delivery = endpoint.backlog.popleft()
        endpoint.in_flight = delivery
        self._attempt(endpoint, delivery)

    def _attempt(self, endpoint: _Endpoint, delivery: Delivery) -> None:
        endpoint.retry = None
        delivery.attempts += 1
        hook = endpoint.hook
        timestamp = "%d" % int(self._reactor.seconds())
        headers = Headers({
            b"Content-Type": [b"application/json"],
            b"User-Agent": [("dashd/%s" % __version__).encode("ascii")],
            b"X-Dashd-Event": [delivery.kind.encode("ascii")],
            b"X-Dashd-Delivery": [delivery.id.encode("ascii")],
            b"X-Dashd-Timestamp": [timestamp.encode("ascii")],
            b"X-Dashd-Signature": [sign(hook["secret"], timestamp, delivery.body)
                                   .encode("ascii")],
        })
        started = self._reactor.seconds()
        timeout = self._config["webhooks.timeout"]
        d = self._agent.request(b"POST", hook["url"].encode("utf-8"), headers,
                                FileBodyProducer(BytesIO(delivery.body)))

        def answered(response: Any) -> defer.Deferred[int]:
            # Cancelled (the timeout) while the body still streams: the
            # connection is dropped.
            done: defer.Deferred[None] = defer.Deferred(
                lambda _: reader.transport.stopProducing() if reader.transport else None)
            reader = _Discard(done)
            response.deliverBody(reader)
            return done.addCallback(lambda _: int(response.code))

        d.addCallback(answered)
        d.addTimeout(timeout, self._reactor, onTimeoutCancel=_timed_out)
        endpoint.request = d
        d.addBoth(self._ended, endpoint, delivery, started)

    def _ended(self, result: Any, endpoint: _Endpoint, delivery: Delivery,
               started: float) -> None:
        endpoint.request = None
        now = self._reactor.seconds()
        status = result if isinstance(result, int) else None
        error = None
        if isinstance(result, Failure):
            if result.check(defer.TimeoutError, defer.CancelledError):
                error = "no answer within %g s" % self._config["webhooks.timeout"]
            elif result.check(Refused):
                error = str(result.value)
            elif result.check(net_error.ConnectError, net_error.DNSLookupError):
                error = "could not connect: %s" % result.getErrorMessage()
            else:
                reasons = getattr(result.value, "reasons", None)
                if reasons:
                    error = "; ".join(r.getErrorMessage() or r.type.__name__ for r in reasons)
                else:
                    error = result.getErrorMessage() or result.type.__name__
        elif not 200 <= result < 300:
            error = "answered %d" % result
        endpoint.last.append({"id": delivery.id, "kind": delivery.kind, "t": now,
                              "attempt": delivery.attempts, "status": status, "error": error,
                              "ms": round((now - started) * 1000, 1)})
        self._changed(endpoint)
        if self._stopped or self._hooks.get(endpoint.hook["id"]) is not endpoint:
            endpoint.in_flight = None
            return
        if error is None:
            endpoint.delivered += 1
            self.sent += 1
        elif delivery.attempts < self._config["webhooks.max_attempts"] and not (
                isinstance(result, Failure) and result.check(Refused)):
            delay = min(self._config["webhooks.retry_delay"] * 2 ** (delivery.attempts - 1),
                        self._config["webhooks.max_retry_delay"])
            endpoint.retry = self._reactor.callLater(delay, self._attempt, endpoint, delivery)
            return
        else:
            endpoint.failed += 1
            log.info("webhook {id}: gave up delivery {delivery} ({kind}) after {n} attempts: "
                     "{error}", id=endpoint.hook["id"], delivery=delivery.id,
                     kind=delivery.kind, n=delivery.attempts, error=error)
        endpoint.in_flight = None
        self._pump(endpoint)


# The use cases


def webhook_view(hook: dict[str, Any], stats: dict[str, Any] | None = None,
                 secret: bool = False) -> dict[str, Any]:
    out = {k: hook[k] for k in ("id", "account_id", "name", "url", "events", "enabled",
                                "created", "updated")}
    if secret:
        out["secret"] = hook["secret"]
    if stats is not None:
        out["deliveries"] = stats
    return out


class Webhooks:
    def __init__(self, store: AlarmStore, dispatcher: WebhookDispatcher | None, clock: Any,
                 config: Config) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._clock = clock
        self._config = config
        # Told when a webhook was made, changed or deleted here (in a
        # cluster, the other nodes hear of it: dashd.assembly).
        self.changed: Any = None

    def _tell(self) -> None:
        if self.changed is not None:
            try:
                self.changed(None)
            except Exception:
                log.failure("telling the cluster of a webhook change")

    @property
    def dispatcher(self) -> WebhookDispatcher | None:
        return self._dispatcher

    async def stats(self, hook_id: str) -> dict[str, Any] | None:
        if self._dispatcher is None:
            return None
        return await self._dispatcher.stats_all(hook_id)

    async def _own(self, by: ApiKey, hook_id: str) -> dict[str, Any]:
        access.require_admin(by, "manage webhooks")
        hook = await self._store.get_webhook(hook_id)
        if hook is None or not (access.is_console(by) or hook["account_id"] == by.account_id):
            raise NotFound("no such webhook: %s" % hook_id)
        return hook

    async def list(self, by: ApiKey) -> list[dict[str, Any]]:
        access.require_admin(by, "manage webhooks")
        return await self._store.list_webhooks(None if access.is_console(by)
                                               else by.account_id)

    async def get(self, by: ApiKey, hook_id: str) -> dict[str, Any]:
        return await self._own(by, hook_id)

    async def put(self, by: ApiKey, hook_id: str | None, body: dict[str, Any]
                  ) -> dict[str, Any]:
        access.require_admin(by, "manage webhooks")
        old = await self._own(by, hook_id) if hook_id is not None else None
        if old is None and "url" not in body:
            raise Invalid("url is required", "url")
        now = self._clock.seconds()
        hook = dict(old) if old else {
            "id": new_id("wh"), "account_id": by.account_id, "name": "", "events": [],
            "secret": secrets.token_urlsafe(32), "enabled": True, "created": now}
        if "url" in body:
            hook["url"] = check_url(body["url"], self._config)
        if "name" in body:
            name = body["name"]
            if not isinstance(name, str) or len(name) > MAX_NAME:
                raise Invalid("name must be a string of at most %d characters" % MAX_NAME,
                              "name")
            hook["name"] = name
        if "events" in body or old is None:
            events = body.get("events", ["alarm.raised", "alarm.cleared"])
            if not isinstance(events, list) or not all(e in EVENT_KINDS for e in events):
                raise Invalid("events must be a list of %s" % ", ".join(EVENT_KINDS), "events")
            hook["events"] = list(dict.fromkeys(events))
        if "enabled" in body:
            if not isinstance(body["enabled"], bool):
                raise Invalid("enabled must be true or false", "enabled")
            hook["enabled"] = body["enabled"]
        if body.get("rotate_secret") is True:
            hook["secret"] = secrets.token_urlsafe(32)
        hook["updated"] = now
        try:
            await self._store.put_webhook(hook, self._config["webhooks.max_per_account"])
        except OverLimit as e:
            raise Busy(str(e)) from None
        if self._dispatcher is not None:
            self._dispatcher.put(hook)
        self._tell()
        return hook

    async def delete(self, by: ApiKey, hook_id: str) -> None:
        await self._own(by, hook_id)
        await self._store.delete_webhook(hook_id)
        if self._dispatcher is not None:
            self._dispatcher.remove(hook_id)
            if self._dispatcher.shared is not None:
                self._dispatcher.shared.forget(hook_id).addErrback(lambda f: None)
        self._tell()

    async def test(self, by: ApiKey, hook_id: str) -> str:
        hook = await self._own(by, hook_id)
        if self._dispatcher is None:
            raise NotFound("webhooks are not sent from here")
        self._dispatcher.put(hook)
        return self._dispatcher.test(hook_id)
