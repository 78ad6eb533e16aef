"""
A soak run: dashd under steady churn for a given number of minutes.

    python -m bench.soak --minutes 30

It starts a dashd (``twistd -n dashd``) of its own and, until the time is
up, keeps it busy the way a fleet and its users do:

- steady devices (``dashd.simulator``, both dialects) reporting state and
  answering calls, and devices that come and go every few seconds;
- REST calls to the devices, desired and tags changes, device lists;
- notification subscribers that stay, and others that come and go;
- misbehaving clients, one every few seconds: garbage on the device
  channel, an oversized value, a device that vanishes mid-call, a call that
  times out, a subscriber that stops reading, a wrong token, a bad JSON
  body.

Every REST answer is classified: what the scenario expects (a 200, or the
error a provoked fault must give) is fine; anything else is counted and
printed as unexplained. Each minute it prints dashd's RSS and the counts;
at the end, the RSS at the end against minute 5 (the goal: within 10%) and
whether anything unexplained happened. It exits 1 if so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from dashd.simulator import SimulatedDevice

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class _Sub(WebSocketClientProtocol):
    soak: "Soak"

    def onOpen(self) -> None:
        self.soak.subscribers.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.soak.counts["events received"] += 1

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.soak.subscribers.discard(self)
        expected = getattr(self, "expect_close", None)
        if expected is not None and code not in expected and code is not None:
            self.soak.unexplained("subscriber closed with %s (%s), expected %s"
                                  % (code, reason, expected))


class Soak:
    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.directory = tempfile.mkdtemp(prefix="dashd-soak-")
        self.port = free_port()
        self.base = "http://127.0.0.1:%d" % self.port
        self.counts: Counter[str] = Counter()
        self.problems: Counter[str] = Counter()
        self.subscribers: set[Any] = set()
        self.devices: dict[str, SimulatedDevice] = {}
        self.churners: set[str] = set()
        self.rss: list[tuple[float, float]] = []
        self.proc: subprocess.Popen[bytes] | None = None

    # dashd

    def start_dashd(self) -> None:
        config = os.path.join(self.directory, "dashd.toml")
        with open(config, "w") as f:
            f.write(
                'listen = ["tcp:%d:interface=127.0.0.1"]\ndata_dir = "%s"\n'
                "[device]\nping_interval = 10.0\nmax_frame_bytes = 8192\n"
                "write_stall_timeout = 5.0\n[http]\naccess_log = false\n"
                "[limits]\nrequests_per_second = 0\nfailed_auth_per_minute = 0\n"
                "[notify]\nmax_backlog = 200\n"
                % (self.port, os.path.join(self.directory, "data"))
            )
        log = open(os.path.join(self.directory, "dashd.log"), "ab")
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "dashd", "--config", config],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
        )

    async def wait_ready(self) -> None:
        key_path = os.path.join(self.directory, "data", "admin.key")
        for _ in range(400):
            if os.path.exists(key_path):
                try:
                    r = await treq.get(self.base + "/healthz")
                    await r.content()
                    if r.code == 200:
                        with open(key_path) as f:
                            self.key = f.read().strip()
                        return
                except Exception:
                    pass
            await task.deferLater(self.reactor, 0.05)
        raise RuntimeError("dashd did not start; see %s" % self.directory)

    # REST

    async def rest(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                   expect: tuple[int, ...] = (200,), what: str = "") -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        try:
            # A timeout well past dashd's own (RPC calls end by 30 s): a
            # request that outlives it is a hang worth reporting.
            r = await treq.request(method, self.base + path, data=data,
                                   headers={"Authorization": ["Bearer " + self.key]},
                                   timeout=60)
            content = await r.content()
        except Exception as e:
            self.unexplained("%s %s: %s" % (method, what or path, e))
            return 0, None
        try:
            parsed = json.loads(content) if content else None
        except ValueError:
            parsed = None
        if r.code in expect:
            self.counts["REST %d" % r.code] += 1
        else:
            message = parsed.get("error", {}).get("message") if isinstance(parsed, dict) else ""
            self.unexplained("%s %s answered %d: %s" % (method, what or path, r.code, message))
        return r.code, parsed

    def unexplained(self, what: str) -> None:
        # Group by the text without IDs and numbers.
        import re

        key = re.sub(r"\bd[a-z0-9]{12}\b", "DEVICE", what)
        key = re.sub(r"\d+(\.\d+)?", "N", key)
        if key not in self.problems:
            print("  unexplained, first seen: %s" % what, flush=True)
        self.problems[key] += 1

    async def register(self, count: int) -> list[tuple[str, str]]:
        out = []
        for i in range(count):
            code, body = await self.rest("POST", "/api/v2/devices", {"name": "soak-%d" % i})
            if code == 200:
                out.append((body["id"], body["token"]))
        return out

    # Devices

    def device_url(self) -> str:
        return "ws://127.0.0.1:%d/api/v2/rpc" % self.port

    def start_device(self, device_id: str, token: str, dialect: str) -> SimulatedDevice:
        sim = SimulatedDevice(self.device_url(), token, self.reactor, dialect=dialect,
                              heartbeat_interval=20 if dialect == "mos" else 0,
                              reconnect_delay=(1.0, 5.0))
        self.devices[device_id] = sim
        return sim.start()

    def online_ids(self, steady_only: bool = False) -> list[str]:
        return [i for i, d in self.devices.items()
                if d.online and not (steady_only and i in self.churners)]

    async def churn_device(self, device_id: str) -> None:
        sim = self.devices[device_id]
        while self.running:
            await task.deferLater(self.reactor, random.uniform(3, 15))
            await sim.stop()
            await task.deferLater(self.reactor, random.uniform(1, 5))
            if self.running:
                sim.start()

    # Traffic

    async def traffic(self) -> None:
        while self.running:
            await task.deferLater(self.reactor, 0.05)
            steady = self.online_ids(steady_only=True)
            if not steady:
                continue
            device_id = random.choice(steady)
            roll = random.random()
            if roll < 0.5:
                method, params = random.choice([("Sim.Echo", {"n": random.random()}),
                                                ("GPIO.Toggle", {"pin": random.randint(0, 5)}),
                                                ("Sys.GetInfo", None)])
                # A steady device may still be mid-reconnect (ping timeouts
                # under load): offline is a fair answer then.
                await self.rest("POST", "/api/v2/devices/%s/rpc/%s" % (device_id, method),
                                params, expect=(200, 503), what="rpc " + method)
            elif roll < 0.7:
                await self.rest("POST", "/api/v2/devices/" + device_id,
                                {"shadow": {"state": {"desired": {"level": random.randint(0, 9)}}}})
            elif roll < 0.8:
                sim = self.devices[device_id]
                try:
                    await sim.report({"temp": random.randint(15, 30)}).addTimeout(
                        60, self.reactor)
                    self.counts["device reports"] += 1
                except Exception as e:
                    if sim.online:
                        self.unexplained("device report failed: %s" % e)
            elif roll < 0.85:
                await self.rest("GET", "/api/v2/devices")
            else:
                churner = [i for i in self.churners if self.devices[i].online]
                if churner:
                    # May go offline under our feet: 503 is expected.
                    await self.rest("GET", "/api/v2/devices/%s/rpc/Sim.Echo" % churner[0],
                                    expect=(200, 503), what="rpc to a churning device")

    async def subscriber_churn(self) -> None:
        while self.running:
            self.subscribe(lifetime=random.uniform(5, 30))
            await task.deferLater(self.reactor, random.uniform(3, 10))

    def subscribe(self, lifetime: float | None = None, expect_close: tuple[int, ...] | None = None) -> Any:
        factory = WebSocketClientFactory(
            "ws://127.0.0.1:%d/api/v2/notify" % self.port,
            headers={"Authorization": "Bearer " + self.key}, reactor=self.reactor)
        soak = self

        class Proto(_Sub):
            pass

        Proto.soak = soak
        factory.protocol = Proto
        opened: Deferred[Any] = Deferred()
        original = Proto.onOpen

        def on_open(proto: Any) -> None:
            original(proto)
            proto.expect_close = expect_close
            if lifetime is not None:
                self.reactor.callLater(lifetime, proto.sendClose, 1000)
            if not opened.called:
                opened.callback(proto)

        Proto.onOpen = on_open  # type: ignore[method-assign]
        connectWS(factory)
        return opened

    # Misbehaviour

    async def misbehave(self) -> None:
        scenarios = [self.garbage, self.oversized, self.vanish_mid_call, self.timeout,
                     self.slow_subscriber, self.wrong_token, self.bad_body]
        while self.running:
            await task.deferLater(self.reactor, random.uniform(3, 8))
            scenario = random.choice(scenarios)
            self.counts["misbehaviour: " + scenario.__name__] += 1
            try:
                await scenario()
            except Exception as e:
                self.unexplained("scenario %s raised %s" % (scenario.__name__, e))

    async def garbage(self) -> None:
        steady = self.online_ids(steady_only=True)
        if steady:
            self.devices[random.choice(steady)].send_raw("\x00garbage{{{" + "x" * 100)

    async def oversized(self) -> None:
        steady = self.online_ids(steady_only=True)
        if steady:
            self.devices[random.choice(steady)].send_raw(
                json.dumps({"method": "Big", "params": "y" * 20000}))

    async def vanish_mid_call(self) -> None:
        churning = [i for i in self.churners if self.devices[i].online]
        if not churning:
            return
        device_id = churning[0]
        call = defer.ensureDeferred(self.rest(
            "POST", "/api/v2/devices/%s/rpc/Sim.Sleep" % device_id, {"seconds": 5},
            expect=(503,), what="call to a device that vanishes"))
        await task.deferLater(self.reactor, 0.5)
        self.devices[device_id].drop()
        await call

    async def timeout(self) -> None:
        steady = self.online_ids(steady_only=True)
        if steady:
            await self.rest("POST", "/api/v2/devices/%s/rpc/Sim.Sleep?timeout=0.5"
                            % random.choice(steady), {"seconds": 2},
                            expect=(504, 503), what="call that times out")

    async def slow_subscriber(self) -> None:
        proto = await self.subscribe(expect_close=(1008, 1006, 1000))
        proto.transport.pauseProducing()
        self.reactor.callLater(60, proto.transport.abortConnection)

    async def wrong_token(self) -> None:
        sim = SimulatedDevice(self.device_url(), "d000000000000-" + "0" * 64, self.reactor,
                              reconnect=False).start()
        await sim.wait_closed()
        if sim.connections:
            self.unexplained("a wrong token opened the device channel")

    async def bad_body(self) -> None:
        await self.rest("POST", "/api/v2/devices", raw=b"{not json", expect=(400,),
                        what="bad JSON body")

    # Running

    async def run(self) -> int:
        self.start_dashd()
        assert self.proc is not None
        try:
            await self.wait_ready()
            registered = await self.register(self.args.devices)
            churn_count = self.args.devices // 5
            mdash_count = self.args.devices // 10
            for n, (device_id, token) in enumerate(registered):
                if n < churn_count:
                    self.churners.add(device_id)
                self.start_device(device_id, token,
                                  "mdash" if churn_count <= n < churn_count + mdash_count
                                  else "mos")
            for _ in range(self.args.subscribers):
                await self.subscribe()
            self.running = True
            tasks = [defer.ensureDeferred(self.traffic()) for _ in range(self.args.clients)]
            tasks.append(defer.ensureDeferred(self.subscriber_churn()))
            tasks.append(defer.ensureDeferred(self.misbehave()))
            tasks += [defer.ensureDeferred(self.churn_device(i)) for i in self.churners]
            started = time.monotonic()
            print("minute  RSS MB  REST ok  events  devices online  subscribers  unexplained",
                  flush=True)
            for minute in range(1, self.args.minutes + 1):
                await task.deferLater(self.reactor, 60)
                rss = rss_mb(self.proc.pid)
                self.rss.append((minute, rss))
                print("%6d  %6.1f  %7d  %6d  %14d  %11d  %11d" % (
                    minute, rss, self.counts["REST 200"], self.counts["events received"],
                    len(self.online_ids()), len(self.subscribers), sum(self.problems.values())),
                    flush=True)
                if self.proc.poll() is not None:
                    self.unexplained("dashd exited with %s" % self.proc.returncode)
                    break
            self.running = False
            await defer.DeferredList(tasks, consumeErrors=True)
            elapsed = time.monotonic() - started
        finally:
            self.running = False
            for sim in self.devices.values():
                sim.reconnect = False
                if sim.online:
                    sim.drop()
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(30)
        return self.report(elapsed)

    def report(self, elapsed: float) -> int:
        with open(os.path.join(self.directory, "dashd.log"), errors="replace") as f:
            log = f.read()
        for marker in ("Traceback (most recent call last)", "Unhandled Error"):
            if marker in log:
                self.unexplained("dashd logged %r" % marker)
        print("\nafter %.0f minutes:" % (elapsed / 60))
        for name, count in sorted(self.counts.items()):
            print("  %-40s %d" % (name, count))
        verdict = 0
        if len(self.rss) >= 5:
            at5, last = self.rss[4][1], self.rss[-1][1]
            growth = (last - at5) / at5 * 100
            print("RSS at minute 5: %.1f MB, at the end: %.1f MB (%+.1f%%; goal: within 10%%)"
                  % (at5, last, growth))
            if abs(growth) > 10:
                verdict = 1
        if self.problems:
            print("unexplained:")
            for what, count in self.problems.most_common():
                print("  %5d  %s" % (count, what))
            verdict = 1
        else:
            print("unexplained: none")
        print("dashd's directory (log, store): %s" % self.directory)
        return verdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=int, default=30)
    p.add_argument("--devices", type=int, default=200, help="simulated devices [200]")
    p.add_argument("--subscribers", type=int, default=5, help="steady subscribers [5]")
    p.add_argument("--clients", type=int, default=4, help="concurrent REST loops [4]")
    args = p.parse_args(argv)
    outcome: list[int] = []

    async def go(reactor: Any) -> None:
        outcome.append(await Soak(reactor, args).run())

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
    return outcome[0] if outcome else 1


if __name__ == "__main__":
    sys.exit(main())
