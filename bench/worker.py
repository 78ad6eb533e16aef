"""
A load-generator process: thousands of lean devices, notification
subscribers, or an open-loop HTTP client, driven by the benchmark command
over its standard input and output, one JSON object a line each way.

    python -m bench.worker        (started by ``python -m bench``)

Commands (``{"cmd": NAME, ...}``), each answered by one line when done:

- ``connect``: connect devices (tokens, source addresses) all at once; the
  answer comes when every one has had its ``Dash.Heartbeat`` acknowledged
  (dashd acknowledges only once the info is on disk), with the time each
  took; refused or dropped connections are retried after about a second,
  like firmware would. ``fail_methods`` / ``fail_count``: the first N
  devices of the command answer those methods with an error (a job's
  failing phase).
  With ``fallback`` (host, port) a device whose open connection drops
  redials there instead, after a random delay in ``redial`` (like firmware
  with a second server address); ``failover`` then reports, per device,
  when its connection dropped, reopened, and had its heartbeat
  acknowledged, and times calls through the REST API on a sample of them.
- ``close``: close devices (by position) cleanly.
- ``shadow``: the first N devices send ``Dash.Shadow.Update`` in a closed
  loop, one outstanding each; counts the acknowledgements.
- ``shadow_start`` / ``shadow_durable``: the same loop, started without
  waiting, and the highest acknowledged (so durable) ``reported.seq`` of
  each device (for the restart-under-load test).
- ``fanout``: connect S subscribers to the notification stream; P devices
  publish ``Bench.Tick`` notifications, at most W not yet seen by the first
  subscriber; counts what every subscriber receives.
- ``register``: register devices through the REST API; writes the tokens.
- ``steady``: RPC calls through the REST API at a fixed rate (open loop:
  each call's latency counts from when it was due, not from when a
  connection was free), spread over the given devices.
"""

from __future__ import annotations

import json
import random
import resource
import sys
from typing import Any

from twisted.internet import protocol, reactor, ssl, stdio
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import LineReceiver

from bench.lean import (
    CountingSubscriber,
    HttpConnection,
    LeanDevice,
    http_request,
    now,
    ws_handshake,
)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "p999": None, "max": None, "n": 0}
    values = sorted(values)

    def at(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": values[-1],
        "n": len(values),
    }


# The TLS client options of every connection this worker makes, once a
# command asked for TLS (--tls): the server's certificate not checked (the
# load generator's CPU is not what is measured), OpenSSL's buffers released
# while a connection is idle (Twisted's default).
_tls: Any = None


def use_tls(c: dict[str, Any]) -> None:
    global _tls
    if c.get("tls") and _tls is None:
        _tls = ssl.CertificateOptions(verify=False)
        # Key exchange as devices do it (mbedTLS on an ESP32: X25519 or
        # P-256), not OpenSSL's default hybrid X25519MLKEM768 first, whose
        # key share the server keeps for the connection's life (6 KB).
        from OpenSSL.SSL import _lib  # pyOpenSSL has no wrapper for it

        if not _lib.SSL_CTX_set1_curves_list(_tls.getContext()._context, b"X25519:P-256"):
            raise RuntimeError("cannot limit TLS groups to X25519, P-256")


def connect(host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None) -> None:
    """connectTCP, or connectSSL once a command asked for TLS."""
    if _tls is not None:
        reactor.connectSSL(host, port, factory, _tls, timeout=timeout, bindAddress=bindAddress)
    else:
        reactor.connectTCP(host, port, factory, timeout=timeout, bindAddress=bindAddress)


class _Factory(protocol.ClientFactory):
    def __init__(self, build: Any, failed: Any) -> None:
        self._build = build
        self._failed = failed

    def buildProtocol(self, addr: Any) -> Any:
        return self._build()

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self._failed(reason)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class Slot:
    """One simulated device across its connection attempts."""

    __slots__ = ("index", "token", "bind", "proto", "started", "acked_at", "wanted", "attempts",
                 "fail_methods", "target", "dropped_at", "reopened_at", "back_at")

    def __init__(self, index: int, token: str, bind: str | None) -> None:
        self.index = index
        self.token = token
        self.bind = bind
        self.proto: LeanDevice | None = None
        self.started = 0.0
        self.acked_at: float | None = None
        self.wanted = False
        self.attempts = 0
        self.fail_methods: frozenset[str] = frozenset()
        # Failing over (cmd_connect's fallback): 0 while on the first
        # server, 1 once redialling the fallback; when the open connection
        # dropped, when one to the fallback opened (101), and when that one
        # had its heartbeat acknowledged.
        self.target = 0
        self.dropped_at: float | None = None
        self.reopened_at: float | None = None
        self.back_at: float | None = None


class Worker:
    def __init__(self, out: Any) -> None:
        self.out = out
        self.slots: list[Slot] = []
        self.host = "127.0.0.1"
        self.port = 0
        self.handshake_path = "/api/v2/rpc"
        self._connect_wait: Deferred[None] | None = None
        self._pending_ack = 0
        self.retries = 0
        self.refusals: dict[str, int] = {}
        self.lost_open = 0
        # failover: the second server, the redial delay, the devices whose
        # heartbeat the fallback has not acknowledged yet, who waits for
        # that, and the probes (calls through the REST API) of a sample.
        self.fallback: tuple[str, int] | None = None
        self.redial = (0.1, 1.0)
        self._not_back = 0
        self._back_wait: Deferred[None] | None = None
        self._probe: dict[str, Any] | None = None
        # shadow
        self.shadow_acked = 0
        self.shadow_errors = 0
        self.durable: dict[str, int] = {}
        # fanout
        self.subscribers: list[CountingSubscriber] = []
        self._sub_wait: Deferred[None] | None = None
        self._sub_pending = 0
        self._fan: dict[str, Any] | None = None

    def reply(self, value: dict[str, Any]) -> None:
        self.out.sendLine(json.dumps(value).encode())

    # Devices

    def _open(self, slot: Slot) -> None:
        slot.attempts += 1
        proto = LeanDevice(slot.index, slot.token, self)
        proto.slot = slot
        proto.fail_methods = slot.fail_methods
        host, port = (self.host, self.port) if slot.target == 0 else self.fallback  # type: ignore[misc]
        proto.handshake = ws_handshake(
            "%s:%d" % (host, port), self.handshake_path, slot.token, "dash.mongoose-os.com"
        )
        slot.proto = proto
        bind = (slot.bind, 0) if slot.bind else None
        connect(
            host,
            port,
            _Factory(lambda: proto, lambda reason: self._failed(slot, proto, reason)),
            timeout=30,
            bindAddress=bind,
        )

    def _retry_later(self, slot: Slot) -> None:
        if not slot.wanted:
            return
        self.retries += 1
        reactor.callLater(random.uniform(0.5, 1.5), self._retry_now, slot)

    def _retry_now(self, slot: Slot) -> None:
        if slot.wanted and (slot.proto is None or not slot.proto.is_open):
            self._open(slot)

    def _failed(self, slot: Slot, proto: LeanDevice, reason: Any) -> None:
        key = reason.type.__name__
        self.refusals[key] = self.refusals.get(key, 0) + 1
        if slot.proto is proto:
            slot.proto = None
            self._retry_later(slot)

    def device_opened(self, proto: LeanDevice) -> None:
        slot = proto.slot
        if slot.target == 1 and slot.reopened_at is None:
            slot.reopened_at = now()

    def device_refused(self, proto: LeanDevice, status: int) -> None:
        key = "HTTP %d" % status
        self.refusals[key] = self.refusals.get(key, 0) + 1

    def device_lost(self, proto: LeanDevice, was_open: bool) -> None:
        slot = proto.slot
        if slot.proto is not proto:
            return
        slot.proto = None
        if was_open:
            self.lost_open += 1
            if slot.target == 0 and self.fallback is not None and slot.wanted:
                # Its server is gone: on to the fallback, shortly.
                slot.target = 1
                slot.dropped_at = now()
                self.retries += 1
                reactor.callLater(random.uniform(*self.redial), self._retry_now, slot)
                return
        # Like firmware: a device that is wanted keeps trying, whether its
        # connection was refused, cut mid-handshake, or dropped once open.
        self._retry_later(slot)

    def device_info_acked(self, proto: LeanDevice, ok: bool) -> None:
        slot = proto.slot
        if slot.target == 1 and slot.back_at is None:
            slot.back_at = now()
            self._not_back -= 1
            probe = self._probe
            if probe is not None and slot.index in probe["sample"]:
                self._probe_call(slot)
            self._check_back()
        if slot.acked_at is None:
            slot.acked_at = now()
            self._pending_ack -= 1
            if self._pending_ack == 0 and self._connect_wait is not None:
                d, self._connect_wait = self._connect_wait, None
                d.callback(None)

    def cmd_connect(self, c: dict[str, Any]) -> Deferred[dict[str, Any]] | dict[str, Any]:
        self.host, self.port = c["host"], c["port"]
        self.handshake_path = c.get("path", "/api/v2/rpc")
        if c.get("fallback"):
            self.fallback = (c["fallback"]["host"], c["fallback"]["port"])
            self.redial = tuple(c.get("redial", self.redial))  # type: ignore[assignment]
        binds = c.get("binds") or [None]
        first = len(self.slots)
        new = [
            Slot(first + i, token, binds[i % len(binds)]) for i, token in enumerate(c["tokens"])
        ]
        # The first fail_count devices of this command answer fail_methods
        # with an error.
        failing = frozenset(c.get("fail_methods", ()))
        for slot in new[: c.get("fail_count", 0)]:
            slot.fail_methods = failing
        self.slots.extend(new)
        self._pending_ack += len(new)
        self.retries = 0
        self.refusals = {}
        started = now()
        for slot in new:
            slot.wanted = True
            slot.started = started
            self._open(slot)
        d: Deferred[None] = Deferred()
        self._connect_wait = d
        timeout = c.get("timeout", 120)
        timer = reactor.callLater(timeout, self._connect_timeout, d)

        def done(_: Any) -> dict[str, Any]:
            if timer.active():
                timer.cancel()
            times = [s.acked_at - s.started for s in new if s.acked_at is not None]
            ended = max((s.acked_at for s in new if s.acked_at is not None), default=now())
            return {
                "started": started,
                "ended": ended,
                "acked": len(times),
                "count": len(new),
                "retries": self.retries,
                "refusals": self.refusals,
                "times": percentiles(times),
                "total_devices": len(self.slots),
            }

        return d.addCallback(done)

    def _connect_timeout(self, d: Deferred[None]) -> None:
        if self._connect_wait is d:
            self._connect_wait = None
            d.callback(None)

    def cmd_close(self, c: dict[str, Any]) -> Deferred[dict[str, Any]]:
        first, last = c.get("first", 0), c.get("last", len(self.slots))
        closing = self.slots[first:last]
        for slot in closing:
            slot.wanted = False
            if slot.proto is not None:
                slot.proto.close()
        del self.slots[first:last]
        d: Deferred[dict[str, Any]] = Deferred()

        def check(deadline: float) -> None:
            if all(s.proto is None for s in closing) or now() > deadline:
                d.callback({"closed": len(closing), "left": len(self.slots)})
            else:
                reactor.callLater(0.1, check, deadline)

        reactor.callLater(0.1, check, now() + c.get("timeout", 30))
        return d

    def cmd_status(self, c: dict[str, Any]) -> dict[str, Any]:
        return {
            "devices": len(self.slots),
            "open": sum(1 for s in self.slots if s.proto is not None and s.proto.is_open),
            "lost_open": self.lost_open,
        }

    # Failing over to the fallback (see cmd_connect)

    def cmd_failover(self, c: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """
        Sent before the first server is killed. Answers once every device
        has had its heartbeat acknowledged by the fallback (or after
        C{timeout} seconds), with each device's times (CLOCK_MONOTONIC, the
        same in every process here): when its connection dropped, when one
        to the fallback opened, when its heartbeat was acknowledged there
        (dashd answers once the device's info is on disk). Meanwhile
        C{sample} devices, picked at random, each get one call
        (C{method}, through the fallback's REST API, C{key}) as soon as
        their heartbeat is acknowledged, retried 50 ms after any answer
        but 200: when it first succeeded, and the other answers.
        """
        for slot in self.slots:
            slot.target = 0
            slot.dropped_at = slot.reopened_at = slot.back_at = None
        self._not_back = len(self.slots)
        self.retries = 0
        self.refusals = {}
        assert self.fallback is not None
        host, port = self.fallback
        picked = random.sample(range(len(self.slots)), min(c.get("sample", 0), len(self.slots)))
        self._probe = {
            "sample": set(picked),
            "pool": HttpPool(host, port, c.get("conns", 8), initial=0),
            "request": lambda device_id: http_request(
                "POST", "%s:%d" % (host, port),
                "/api/v2/devices/%s/rpc/%s" % (device_id, c.get("method", "Sim.Echo")),
                c.get("key"), b'{"ok":1}'),
            "pending": len(picked),
            "usable": {},
            "answers": {},
            "first_try": {},
        }
        d: Deferred[None] = Deferred()
        self._back_wait = d
        timer = reactor.callLater(c.get("timeout", 300), self._back_timeout, d)

        def done(_: Any) -> dict[str, Any]:
            if timer.active():
                timer.cancel()
            probe = self._probe
            assert probe is not None
            probe["pool"].close()
            self._probe = None
            return {
                "devices": [
                    [s.token.split("-", 1)[0], s.dropped_at, s.reopened_at, s.back_at]
                    for s in self.slots
                ],
                "usable": probe["usable"],
                "first_try": probe["first_try"],
                "answers": probe["answers"],
                "retries": self.retries,
                "refusals": self.refusals,
            }

        return d.addCallback(done)

    def _probe_call(self, slot: Slot) -> None:
        probe = self._probe
        assert probe is not None
        device_id = slot.token.split("-", 1)[0]
        probe["first_try"].setdefault(device_id, now())

        def answered(status: int, body: bytes) -> None:
            if self._probe is not probe:
                return
            if status == 200 and _json_or_none(body) == {"ok": 1}:
                probe["usable"][device_id] = now()
                probe["pending"] -= 1
                self._check_back()
                return
            key = str(status) if status != 200 else "200, other body"
            probe["answers"][key] = probe["answers"].get(key, 0) + 1
            reactor.callLater(0.05, self._probe_call, slot)

        probe["pool"].submit(probe["request"](device_id), answered)

    def _check_back(self) -> None:
        probe = self._probe
        if self._not_back == 0 and (probe is None or probe["pending"] == 0):
            d, self._back_wait = self._back_wait, None
            if d is not None:
                d.callback(None)

    def _back_timeout(self, d: Deferred[None]) -> None:
        if self._back_wait is d:
            self._back_wait = None
            d.callback(None)

    # Shadow updates

    def shadow_reply(self, proto: LeanDevice, error: bool) -> None:
        if error:
            self.shadow_errors += 1
        else:
            self.shadow_acked += 1

    def shadow_durable(self, proto: LeanDevice, seq: int) -> None:
        if seq > self.durable.get(proto.device_id, 0):
            self.durable[proto.device_id] = seq

    def cmd_shadow_start(self, c: dict[str, Any]) -> dict[str, Any]:
        """Start shadow updates on the first N devices and answer at once;
        they run until the devices' connections end."""
        devices = [s.proto for s in self.slots[: c["count"]] if s.proto is not None and s.proto.is_open]
        for proto in devices:
            proto.shadow_running = True
            proto.send_shadow_update()
        return {"devices": len(devices)}

    def cmd_shadow_durable(self, c: dict[str, Any]) -> dict[str, Any]:
        """The highest acknowledged shadow update (its reported.seq) of each
        device that had one."""
        return {"durable": self.durable}

    def cmd_shadow(self, c: dict[str, Any]) -> Deferred[dict[str, Any]]:
        devices = [s.proto for s in self.slots[: c["count"]] if s.proto is not None and s.proto.is_open]
        self.shadow_acked = self.shadow_errors = 0
        for proto in devices:
            proto.shadow_running = True
            proto.send_shadow_update()
        d: Deferred[dict[str, Any]] = Deferred()
        marks: dict[str, Any] = {}

        def start() -> None:
            marks["t0"], marks["n0"], marks["e0"] = now(), self.shadow_acked, self.shadow_errors

        def stop() -> None:
            t1, n1, e1 = now(), self.shadow_acked, self.shadow_errors
            for proto in devices:
                proto.shadow_running = False
            # Let the last outstanding updates come back before the next test.
            reactor.callLater(
                2.0,
                d.callback,
                {
                    "devices": len(devices),
                    "acked": n1 - marks["n0"],
                    "errors": e1 - marks["e0"],
                    "seconds": t1 - marks["t0"],
                    "sample_device": devices[0].device_id if devices else None,
                },
            )

        reactor.callLater(c.get("warmup", 1.0), start)
        reactor.callLater(c.get("warmup", 1.0) + c["duration"], stop)
        return d

    # Reports at a fixed rate, and one device tripping a threshold (bench.alarms)

    def _report(self, proto: LeanDevice, temp: int) -> None:
        proto.next_id += 1
        proto.send_text(
            ('{"id":%d,"method":"Dash.Shadow.Update","params":{"state":{"reported":'
             '{"temp":%d}}},"src":%s}' % (proto.next_id, temp, proto._src_json)).encode())

    def cmd_rate(self, c: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """The first N devices each report {"temp": 20..29} every
        C{interval} seconds, spread evenly (open loop), for C{duration}."""
        devices = [s.proto for s in self.slots[: c["count"]] if s.proto is not None and s.proto.is_open]
        tick = 0.02
        per_tick = len(devices) * tick / c.get("interval", 1.0)
        state = {"carry": 0.0, "pos": 0, "sent": 0}
        self.shadow_acked = self.shadow_errors = 0

        def step() -> None:
            state["carry"] += per_tick
            n = int(state["carry"])
            state["carry"] -= n
            for _ in range(n):
                proto = devices[state["pos"] % len(devices)]
                state["pos"] += 1
                if proto.is_open:
                    self._report(proto, 20 + state["pos"] % 10)
                    state["sent"] += 1

        loop = LoopingCall(step)
        loop.start(tick)
        d: Deferred[dict[str, Any]] = Deferred()
        started = now()

        def stop() -> None:
            loop.stop()
            seconds = now() - started
            reactor.callLater(2.0, lambda: d.callback({
                "devices": len(devices), "sent": state["sent"], "acked": self.shadow_acked,
                "errors": self.shadow_errors, "seconds": seconds}))

        reactor.callLater(c["duration"], stop)
        return d

    def cmd_trip(self, c: dict[str, Any]) -> dict[str, Any]:
        """Device at C{position} reports C{temp} now: when (time.time())."""
        proto = self.slots[c["position"]].proto
        if proto is None or not proto.is_open:
            return {"device_id": None}
        self._report(proto, c["temp"])
        import time

        return {"device_id": proto.device_id, "t": time.time()}

    # Notification fan-out

    def subscriber_opened(self, sub: CountingSubscriber) -> None:
        self._sub_pending -= 1
        if self._sub_pending == 0 and self._sub_wait is not None:
            d, self._sub_wait = self._sub_wait, None
            d.callback(None)

    def subscriber_refused(self, sub: CountingSubscriber, status: int) -> None:
        if self._sub_wait is not None:
            d, self._sub_wait = self._sub_wait, None
            d.errback(RuntimeError("subscriber refused with HTTP %d" % status))

    def subscriber_lost(self, sub: CountingSubscriber) -> None:
        if self._fan is not None and self._fan.get("running"):
            self._fan["lost"] += 1

    def ticks_received(self, sub: CountingSubscriber, found: int) -> None:
        fan = self._fan
        if fan is not None and sub is self.subscribers[0] and fan["running"]:
            self._pump()

    def _pump(self) -> None:
        fan = self._fan
        assert fan is not None
        first = self.subscribers[0]
        publishers = fan["publishers"]
        while fan["sent"] - first.count < fan["window"]:
            proto = publishers[fan["sent"] % len(publishers)]
            fan["sent"] += 1
            proto.send_tick(fan["sent"])

    def cmd_fanout(self, c: dict[str, Any]) -> Deferred[dict[str, Any]]:
        self.subscribers = []
        self._sub_pending = c["subscribers"]
        wait: Deferred[None] = Deferred()
        self._sub_wait = wait
        handshake = ws_handshake(
            "%s:%d" % (c["host"], c["port"]), c["path"], c.get("key"), None
        )
        for _ in range(c["subscribers"]):
            sub = CountingSubscriber(self)
            sub.handshake = handshake
            self.subscribers.append(sub)
            connect(
                c["host"], c["port"], _Factory(lambda sub=sub: sub, lambda r: None), timeout=30
            )
        publishers = [
            s.proto for s in self.slots[: c["publishers"]] if s.proto is not None and s.proto.is_open
        ]
        d: Deferred[dict[str, Any]] = Deferred()
        marks: dict[str, Any] = {}

        def counts() -> list[int]:
            return [s.count for s in self.subscribers]

        def run(_: Any) -> None:
            self._fan = {
                "running": True,
                "sent": 0,
                "window": c["window"],
                "publishers": publishers,
                "lost": 0,
            }
            self._pump()
            reactor.callLater(c.get("warmup", 1.0), start)
            reactor.callLater(c.get("warmup", 1.0) + c["duration"], stop)

        def start() -> None:
            marks["t0"], marks["c0"] = now(), counts()

        def stop() -> None:
            t1, c1 = now(), counts()
            fan = self._fan
            assert fan is not None
            fan["running"] = False
            got = [b - a for a, b in zip(marks["c0"], c1)]
            seconds = t1 - marks["t0"]
            result = {
                "subscribers": len(self.subscribers),
                "publishers": len(publishers),
                "seconds": seconds,
                "events_min": min(got),
                "events_max": max(got),
                "deliveries": sum(got),
                "lost": fan["lost"],
            }
            for sub in self.subscribers:
                sub.close()
            self._fan = None
            reactor.callLater(1.0, d.callback, result)

        def failed(f: Any) -> None:
            d.callback({"error": f.getErrorMessage()})

        timer = reactor.callLater(30, self._sub_timeout, wait)
        wait.addCallback(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        wait.addCallbacks(run, failed)
        return d

    def _sub_timeout(self, d: Deferred[None]) -> None:
        if self._sub_wait is d:
            self._sub_wait = None
            d.errback(RuntimeError("subscribers did not all connect within 30 s"))

    # HTTP

    def cmd_register(self, c: dict[str, Any]) -> Deferred[dict[str, Any]]:
        pool = HttpPool(c["host"], c["port"], c.get("concurrency", 32))
        host = "%s:%d" % (c["host"], c["port"])
        count = c["count"]
        tokens: list[str] = []
        errors: dict[int, int] = {}
        d: Deferred[dict[str, Any]] = Deferred()
        started = now()
        state = {"done": 0}

        def got(status: int, body: bytes) -> None:
            state["done"] += 1
            if status == 200:
                tokens.append(json.loads(body)["token"])
            else:
                errors[status] = errors.get(status, 0) + 1
            if state["done"] == count:
                with open(c["out"], "w") as f:
                    f.write("\n".join(tokens) + "\n")
                pool.close()
                d.callback(
                    {"registered": len(tokens), "errors": errors, "seconds": now() - started}
                )

        for i in range(count):
            body = json.dumps({"name": "bench-%d" % i}).encode()
            pool.submit(http_request("POST", host, "/api/v2/devices", c["key"], body), got)
        return d

    def cmd_steady(self, c: dict[str, Any]) -> Deferred[dict[str, Any]]:
        pool = HttpPool(c["host"], c["port"], c.get("max_conns", 256), initial=c.get("conns", 32))
        host = "%s:%d" % (c["host"], c["port"])
        ids = c["ids"]
        rate = float(c["rate"])
        duration = float(c["duration"])
        method = c.get("method", "Sys.GetInfo")
        requests = [
            http_request("GET", host, "/api/v2/devices/%s/rpc/%s" % (i, method), c.get("key"), None)
            for i in ids
        ]
        latencies: list[float] = []
        samples: list[tuple[float, float]] = []
        errors: dict[str, int] = {}
        state = {"issued": 0, "done": 0}
        total = int(rate * duration)
        d: Deferred[dict[str, Any]] = Deferred()

        def finish() -> None:
            if loop.running:
                loop.stop()
            pool.close()
            elapsed = now() - t0
            d.callback(
                {
                    "rate": rate,
                    "issued": state["issued"],
                    "ok": len(latencies),
                    "errors": errors,
                    "seconds": elapsed,
                    "latency": percentiles(latencies),
                    "connections": pool.opened,
                    **({"samples": samples} if c.get("samples") else {}),
                }
            )

        def completed(due: float, status: int, body: bytes) -> None:
            state["done"] += 1
            if status == 200:
                latencies.append(now() - due)
                if c.get("samples"):
                    samples.append((round(due - t0, 4), round(now() - due, 4)))
            else:
                key = str(status)
                errors[key] = errors.get(key, 0) + 1
            if state["done"] == total:
                finish()

        def tick() -> None:
            t = now()
            due_count = min(total, int((t - t0) * rate) + 1)
            while state["issued"] < due_count:
                n = state["issued"]
                state["issued"] += 1
                due = t0 + n / rate
                pool.submit(
                    random.choice(requests), lambda s, b, due=due: completed(due, s, b)
                )
            if state["issued"] >= total and loop.running:
                loop.stop()

        t0 = now() + 0.5  # let the first connections open
        loop = LoopingCall(tick)
        reactor.callLater(0.5, loop.start, 0.001)
        # Whatever has not come back 30 s after the end counts as lost.
        reactor.callLater(duration + 31, lambda: None if d.called else finish())
        return d


class HttpPool:
    """Keep-alive connections; requests wait in a queue for a free one, and
    new connections are opened (up to a limit) while requests wait."""

    def __init__(self, host: str, port: int, max_conns: int, initial: int | None = None) -> None:
        self.host, self.port = host, port
        self.max_conns = max_conns
        self.free: list[HttpConnection] = []
        self.queue: list[tuple[bytes, Any]] = []
        self.qpos = 0
        self.conns: set[HttpConnection] = set()
        self.opened = 0
        self.connecting = 0
        self.closed = False
        for _ in range(initial if initial is not None else max_conns):
            self._connect()

    def _connect(self) -> None:
        self.opened += 1
        self.connecting += 1
        conn = HttpConnection(self)
        self.conns.add(conn)

        def failed(reason: Any) -> None:
            self.connecting -= 1
            self.conns.discard(conn)

        connect(self.host, self.port, _Factory(lambda: conn, failed), timeout=30)

    def submit(self, raw: bytes, callback: Any) -> None:
        if self.free:
            self.free.pop().request(raw, callback)
            return
        self.queue.append((raw, callback))
        waiting = len(self.queue) - self.qpos
        if waiting > self.connecting and len(self.conns) < self.max_conns:
            self._connect()

    def connection_ready(self, conn: HttpConnection) -> None:
        if conn.fresh:
            conn.fresh = False
            self.connecting -= 1
        if self.closed:
            conn.transport.loseConnection()
            return
        if self.qpos < len(self.queue):
            raw, callback = self.queue[self.qpos]
            self.qpos += 1
            if self.qpos > 4096:
                del self.queue[: self.qpos]
                self.qpos = 0
            conn.request(raw, callback)
        else:
            self.free.append(conn)

    def connection_lost(self, conn: HttpConnection) -> None:
        self.conns.discard(conn)
        if conn in self.free:
            self.free.remove(conn)

    def close(self) -> None:
        self.closed = True
        for conn in list(self.free):
            conn.transport.loseConnection()
        self.free = []


class Control(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024 * 1024

    def connectionMade(self) -> None:
        self.worker = Worker(self)

    def lineReceived(self, line: bytes) -> None:
        command = json.loads(line)
        name = command["cmd"]
        use_tls(command)
        if name == "quit":
            reactor.stop()
            return
        try:
            result = getattr(self.worker, "cmd_" + name)(command)
        except Exception as e:  # reported to the benchmark, which stops
            self.worker.reply({"error": "%s: %s" % (type(e).__name__, e)})
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                self.worker.reply,
                lambda f: self.worker.reply({"error": f.getErrorMessage()}),
            )
        else:
            self.worker.reply(result)

    def connectionLost(self, reason: Any = None) -> None:
        if reactor.running:
            reactor.stop()


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stdio.StandardIO(Control())
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
