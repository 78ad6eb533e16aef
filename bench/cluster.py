"""
Cross-node RPC against same-node RPC, on a real two-node cluster.

    .venv/bin/python bench/cluster.py [--devices 20] [--calls 2000] [--concurrency 32]

Starts two dashd nodes (``twistd -n dashd``) on a fresh PostgreSQL
database and a fresh Redis namespace (the machine's servers unless
``--postgres`` / ``--redis`` say otherwise), connects simulated devices to
node A, then calls ``Sim.Echo`` on them through REST:

- latency: one call at a time, through A (same node) and through B (the
  call crosses Redis to A and back);
- throughput: C{--concurrency} calls in flight, spread over the devices.

Prints both, and the cross-node / same-node ratios; and, load-independent,
the CPU time (utime+stime from /proc) each node spent per call of the
throughput runs, and Redis' own count of commands and of reads from its
clients' sockets (round trips) per call. Those counts are Redis-wide: on a
Redis others use too, pass C{--private-redis} (a redis-server of this run,
on a free port). C{--rounds} alternates same- and cross-node runs.

``--fanout`` measures the notifications instead, on three nodes: devices
on A send notifications (``Heartbeat``, published and not stored) as fast
as they can, one subscriber (a key of the devices' account) listens on C,
none on B. Run twice, with ``cluster.route_events`` false (every event to
every node, as before) and true (only to nodes with an interested
subscriber): events per second received on C, and the CPU each node spent
per 1,000 events (from /proc). Prints a ``bench.cluster`` line. Everything runs on this
machine (client, both nodes, PostgreSQL, Redis), so the absolute numbers
say more about the machine than about dashd; the ratios are the point.
Removes its database, its Redis keys and its temporary directory at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
import treq
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dashd.simulator import SimulatedDevice  # noqa: E402

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, directory: str, store_url: str, redis_url: str, namespace: str,
                 extra: str = "") -> None:
        os.makedirs(directory)
        self.directory = directory
        self.port = free_port()
        self.config = os.path.join(directory, "dashd.toml")
        with open(self.config, "w") as f:
            f.write(
                'listen = ["tcp:%d:interface=127.0.0.1"]\n'
                'data_dir = %s\n'
                "[http]\naccess_log = false\n"
                "[device]\nmax_calls_in_flight = 1000\nframes_per_second = 0\n"
                # One key makes every call here: lift its rate limit.
                "[limits]\nrequests_per_second = 1000000.0\nburst = 1000000\n"
                "[store]\nurl = %s\n"
                "[cluster]\nredis_url = %s\nnamespace = %s\n%s"
                % (self.port, json.dumps(os.path.join(directory, "data")),
                   json.dumps(store_url), json.dumps(redis_url), json.dumps(namespace), extra)
            )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def start(self, wait_key: bool) -> None:
        log = open(os.path.join(self.directory, "dashd.log"), "wb")
        self.proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "dashd", "--config",
                                      self.config], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        key = os.path.join(self.directory, "data", "admin.key")
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0 and (
                        not wait_key or os.path.exists(key)):
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("dashd did not start; see %s" % log.name)
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


def drop_cluster(args: argparse.Namespace, name: str, namespace: str, directory: str) -> None:
    """Remove what a run made: its PostgreSQL database, its Redis keys and
    its directory."""
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
    client = redis.Redis.from_url(args.redis)
    for k in client.scan_iter(match=namespace + ":*"):
        client.delete(k)
    client.close()
    shutil.rmtree(directory, ignore_errors=True)


class PrivateRedis:
    """A redis-server of this run alone (no persistence), on a free port."""

    def __init__(self, directory: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return "redis://127.0.0.1:%d/0" % self.port

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def redis_counts(url: str) -> tuple[int, int]:
    """Redis' commands processed and reads from client sockets so far."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("stats")
    finally:
        client.close()
    return int(stats["total_commands_processed"]), int(stats.get("total_reads_processed", 0))


def cpu_seconds(node: Node) -> float:
    assert node.proc is not None
    with open("/proc/%d/stat" % node.proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Counter(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if b'"rpc.out.Heartbeat"' in payload:
            self.factory.count += 1
            if self.factory.count >= self.factory.expect and not self.factory.done.called:
                self.factory.done.callback(time.perf_counter())


async def fanout_round(reactor: Any, args: argparse.Namespace, route: bool) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="dashd-bench-fanout-")
    name = "dashd_bench_%s" % secrets.token_hex(4)
    namespace = "dashdbench-%s" % secrets.token_hex(4)
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute("CREATE DATABASE %s" % name)
    store_url = urlunsplit(urlsplit(args.postgres)._replace(path="/" + name))
    extra = "route_events = %s\n" % ("true" if route else "false")
    nodes = [Node(os.path.join(directory, n), store_url, args.redis, namespace, extra)
             for n in "abc"]
    a, b, c = nodes
    sims: list[SimulatedDevice] = []
    counter = None
    try:
        a.start(wait_key=True)
        b.start(wait_key=False)
        c.start(wait_key=False)
        with open(os.path.join(a.directory, "data", "admin.key")) as f:
            console = f.read().strip()
        pool = HTTPConnectionPool(reactor, persistent=True)
        response = await treq.post(a.url + "/api/v2/accounts", json={"name": "fanout"},
                                   headers={"Authorization": ["Bearer " + console]}, pool=pool)
        key = (await response.json())["admin_key"]["key"]
        for i in range(args.devices):
            response = await treq.post(a.url + "/api/v2/devices", json={"name": "fan-%d" % i},
                                       headers={"Authorization": ["Bearer " + key]}, pool=pool)
            device = await response.json()
            sim = SimulatedDevice(a.url.replace("http", "ws") + "/api/v2/rpc", device["token"],
                                  reactor)
            sims.append(sim.start())
        await defer.gatherResults([s.wait_open() for s in sims])
        total = args.events * len(sims)
        factory = WebSocketClientFactory(c.url.replace("http", "ws") + "/api/v2/notify",
                                         headers={"Authorization": "Bearer " + key})
        factory.protocol = _Counter
        factory.opened, factory.done = Deferred(), Deferred()
        factory.count, factory.expect = 0, total
        connectWS(factory)
        counter = await factory.opened
        await task.deferLater(reactor, 3.0)  # interest told, nodes settled
        before = [cpu_seconds(n) for n in nodes]
        started = time.perf_counter()
        per_tick = max(1, args.events // 200)
        for k in range(0, args.events, per_tick):
            for sim in sims:
                for j in range(k, min(k + per_tick, args.events)):
                    sim.notify("Heartbeat", {"n": j})
            await task.deferLater(reactor, 0)
        try:
            ended = await defer.Deferred.fromCoroutine(_wait(reactor, factory.done, 120))
        except defer.TimeoutError:
            ended = time.perf_counter()
        after = [cpu_seconds(n) for n in nodes]
        received = factory.count
        await pool.closeCachedConnections()
        return {"route": route, "events": total, "received": received,
                "rate": received / (ended - started),
                "cpu_ms_per_1000": [round(1e6 * (y - x) / max(1, total), 1)
                                    for x, y in zip(before, after)]}
    finally:
        if counter is not None:
            counter.sendClose(1000)
        for sim in sims:
            await sim.stop()
        for node in nodes:
            node.stop()
        drop_cluster(args, name, namespace, directory)


async def _wait(reactor: Any, d: Deferred[Any], seconds: float) -> Any:
    d.addTimeout(seconds, reactor)
    return await d


async def fanout(reactor: Any, args: argparse.Namespace) -> None:
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for route in (False, True):
            r = await fanout_round(reactor, args, route)
            results[route].append(r)
            print("%-9s events %6d received on C %6d  %8.0f events/s  CPU ms per 1000 "
                  "events A %s B %s C %s" % ("routed" if route else "broadcast", r["events"],
                                             r["received"], r["rate"],
                                             *r["cpu_ms_per_1000"]), flush=True)
    best = {k: max(v, key=lambda r: r["rate"]) for k, v in results.items()}
    before, after = best[False], best[True]
    print("bench.cluster fanout nodes=3 devices=%d events=%d: %.0f -> %.0f events/s "
          "(%.2fx); node B (no subscriber) CPU per 1000 events %.1f -> %.1f ms, "
          "node C %.1f -> %.1f ms, node A %.1f -> %.1f ms" % (
              args.devices, before["events"], before["rate"], after["rate"],
              after["rate"] / before["rate"], before["cpu_ms_per_1000"][1],
              after["cpu_ms_per_1000"][1], before["cpu_ms_per_1000"][2],
              after["cpu_ms_per_1000"][2], before["cpu_ms_per_1000"][0],
              after["cpu_ms_per_1000"][0]))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def call(pool: Any, node: Node, key: str, device_id: str, i: int) -> float:
    started = time.perf_counter()
    response = await treq.post(
        "%s/api/v2/devices/%s/rpc/Sim.Echo" % (node.url, device_id),
        data=json.dumps({"i": i}).encode(),
        headers={"Authorization": ["Bearer " + key], "Content-Type": ["application/json"]},
        pool=pool,
    )
    body = await response.content()
    if response.code != 200 or json.loads(body) != {"i": i}:
        raise RuntimeError("call failed: %s %r" % (response.code, body[:200]))
    return time.perf_counter() - started


async def latency(pool: Any, node: Node, key: str, devices: list[str], n: int) -> list[float]:
    return [await call(pool, node, key, devices[i % len(devices)], i) for i in range(n)]


async def throughput(pool: Any, node: Node, key: str, devices: list[str], n: int,
                     concurrency: int, nodes: list[Node], redis_url: str) -> dict[str, Any]:
    """Calls per second; CPU µs per call of each of C{nodes}; Redis
    commands and reads (round trips) per call."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await call(pool, node, key, devices[i % len(devices)], i)

    cpu = [cpu_seconds(x) for x in nodes]
    commands, reads = redis_counts(redis_url)
    started = time.perf_counter()
    await defer.gatherResults([Deferred.fromCoroutine(worker()) for _ in range(concurrency)],
                              consumeErrors=True)
    elapsed = time.perf_counter() - started
    cpu_after = [cpu_seconds(x) for x in nodes]
    commands_after, reads_after = redis_counts(redis_url)
    return {"rate": n / elapsed,
            "cpu_us": [1e6 * (y - x) / n for x, y in zip(cpu, cpu_after)],
            "commands": (commands_after - commands - 1) / n,  # less our own INFO
            "reads": (reads_after - reads - 1) / n}


async def run(reactor: Any, args: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp(prefix="dashd-bench-cluster-")
    name = "dashd_bench_%s" % secrets.token_hex(4)
    namespace = "dashdbench-%s" % secrets.token_hex(4)
    private = PrivateRedis(directory) if args.private_redis else None
    if private is not None:
        args.redis = private.url
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute("CREATE DATABASE %s" % name)
    store_url = urlunsplit(urlsplit(args.postgres)._replace(path="/" + name))
    a = Node(os.path.join(directory, "a"), store_url, args.redis, namespace)
    b = Node(os.path.join(directory, "b"), store_url, args.redis, namespace)
    sims: list[SimulatedDevice] = []
    try:
        a.start(wait_key=True)
        b.start(wait_key=False)
        with open(os.path.join(a.directory, "data", "admin.key")) as f:
            key = f.read().strip()
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = args.concurrency
        devices = []
        for i in range(args.devices):
            response = await treq.post(a.url + "/api/v2/devices", json={"name": "bench-%d" % i},
                                       headers={"Authorization": ["Bearer " + key]}, pool=pool)
            device = await response.json()
            devices.append(device["id"])
            sim = SimulatedDevice(a.url.replace("http", "ws") + "/api/v2/rpc", device["token"],
                                  reactor)
            sims.append(sim.start())
        await defer.gatherResults([s.wait_open() for s in sims])
        # Wait until B sees every device (presence has crossed).
        for device_id in devices:
            while True:
                response = await treq.get("%s/api/v2/devices/%s" % (b.url, device_id),
                                          headers={"Authorization": ["Bearer " + key]},
                                          pool=pool)
                if (await response.json())["online"]:
                    break
                await task.deferLater(reactor, 0.05)
        # Warm up both paths.
        await latency(pool, a, key, devices, 50)
        await latency(pool, b, key, devices, 50)

        print("cluster RPC benchmark: %d devices on node A, Sim.Echo through REST"
              % args.devices)
        print("%-20s %9s %9s %9s %12s %16s %14s %12s" % (
            "", "p50 ms", "p90 ms", "p99 ms", "calls/s", "CPU µs/call A/B", "Redis cmd/call",
            "round trips"))
        rows: dict[str, list[tuple[list[float], dict[str, Any]]]] = {}
        for _ in range(args.rounds):
            for label, node in (("same-node (via A)", a), ("cross-node (via B)", b)):
                load = os.getloadavg()[0]
                times = await latency(pool, node, key, devices, args.calls // 4)
                r = await throughput(pool, node, key, devices, args.calls, args.concurrency,
                                     [a, b], args.redis)
                r["load"] = load
                rows.setdefault(label, []).append((times, r))
                print("%-20s %9.2f %9.2f %9.2f %12.0f %16s %14.2f %12.2f   (load %.2f)" % (
                    label, 1000 * statistics.median(times), 1000 * percentile(times, 90),
                    1000 * percentile(times, 99), r["rate"],
                    "%.0f / %.0f" % tuple(r["cpu_us"]), r["commands"], r["reads"], load),
                    flush=True)
        same, cross = rows["same-node (via A)"], rows["cross-node (via B)"]
        for k, ((same_t, same_r), (cross_t, cross_r)) in enumerate(zip(same, cross)):
            print("round %d: cross/same p50 latency %.2f, throughput %.2f (concurrency %d); "
                  "CPU per call A+B %.0f µs cross against %.0f same (%.2fx)" % (
                      k + 1, statistics.median(cross_t) / statistics.median(same_t),
                      cross_r["rate"] / same_r["rate"], args.concurrency,
                      sum(cross_r["cpu_us"]), sum(same_r["cpu_us"]),
                      sum(cross_r["cpu_us"]) / sum(same_r["cpu_us"])))
        # The best round of each (the least disturbed by the machine's others).
        same_t, same_r = max(same, key=lambda x: x[1]["rate"])
        cross_t, cross_r = max(cross, key=lambda x: x[1]["rate"])
        print("bench.cluster rpc: cross/same p50 latency %.2f, throughput %.2f (%d devices, "
              "concurrency %d, load %.2f); CPU µs per call cross A %.0f B %.0f, same A %.0f; "
              "Redis commands / round trips per cross call %.2f / %.2f" % (
                  statistics.median(cross_t) / statistics.median(same_t),
                  cross_r["rate"] / same_r["rate"], args.devices, args.concurrency,
                  os.getloadavg()[0], cross_r["cpu_us"][0], cross_r["cpu_us"][1],
                  same_r["cpu_us"][0], cross_r["commands"], cross_r["reads"]))
        await pool.closeCachedConnections()
    finally:
        for sim in sims:
            await sim.stop()
        b.stop()
        a.stop()
        drop_cluster(args, name, namespace, directory)
        if private is not None:
            private.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2000,
                        help="calls per throughput run (a quarter of it for latency)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="a PostgreSQL database to connect to and create the bench's in")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--fanout", action="store_true",
                        help="measure notifications fanned out over three nodes instead")
    parser.add_argument("--events", type=int, default=2000,
                        help="notifications each device sends (--fanout)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds (default 1, or 2 with --fanout)")
    parser.add_argument("--private-redis", action="store_true",
                        help="run a redis-server of this run (so that Redis' counts are "
                             "this run's alone)")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 2 if args.fanout else 1
    job = fanout if args.fanout else run
    task.react(lambda reactor: Deferred.fromCoroutine(job(reactor, args)))


if __name__ == "__main__":
    main()
