"""
Failover: how long after a node's death its devices are usable through the
other node.

    .venv/bin/python bench/failover.py [--devices 1000] [--node-timeout 2] [--profile]

Starts two dashd nodes (``twistd -n dashd``) on a fresh PostgreSQL database
and Redis namespace (as bench/cluster.py does), connects simulated devices
to node A (each redials node B when its connection drops, 0.1 s later at
first, as devices behind a load balancer redial it), kills A with SIGKILL
and measures, from the kill:

- connected: every device has a new connection (to B);
- online: B's presence says every device is online;
- usable: a ``Sim.Echo`` through B's REST API answers for every device
  (each device is tried as soon as it has reconnected, 32 calls at a time
  in all; a call answered otherwise is tried again 50 ms later).

It then times as many calls again, every device usable: what the client
alone needs for them, a floor under the "usable" figure on this machine.

The issue's target: usable in under 5 s with 10,000 devices. Everything
(client, nodes, PostgreSQL, Redis) runs on this machine. ``--profile``
records node B with py-spy from the kill until every device is usable, and
prints where its samples fell (bench/profile.py).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import treq
from twisted.internet import defer, task
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.web.client import HTTPConnectionPool

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.cluster import Node, drop_cluster  # noqa: E402
from bench.profile import Recording, summarise  # noqa: E402
from dashd.simulator import SimulatedDevice  # noqa: E402


async def run(reactor: Any, args: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp(prefix="dashd-bench-failover-")
    name = "dashd_bench_%s" % secrets.token_hex(4)
    namespace = "dashdbench-%s" % secrets.token_hex(4)
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute("CREATE DATABASE %s" % name)
    store_url = urlunsplit(urlsplit(args.postgres)._replace(path="/" + name))
    a = Node(os.path.join(directory, "a"), store_url, args.redis, namespace)
    b = Node(os.path.join(directory, "b"), store_url, args.redis, namespace)
    for node in (a, b):
        with open(node.config, "a") as f:
            f.write("node_timeout = %g\n" % args.node_timeout)
    sims: list[SimulatedDevice] = []
    auth = {"Authorization": ["Bearer "]}
    try:
        a.start(wait_key=True)
        b.start(wait_key=False)
        with open(os.path.join(a.directory, "data", "admin.key")) as f:
            auth = {"Authorization": ["Bearer " + f.read().strip()]}
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 32
        limit = DeferredSemaphore(32)

        async def register(i: int) -> tuple[str, str]:
            response = await treq.post(a.url + "/api/v2/devices", json={"name": "fo-%d" % i},
                                       headers=auth, pool=pool)
            device = await response.json()
            return device["id"], device["token"]

        devices = await defer.gatherResults(
            [limit.run(lambda i=i: Deferred.fromCoroutine(register(i)))
             for i in range(args.devices)])
        ws_a = a.url.replace("http", "ws") + "/api/v2/rpc"
        ws_b = b.url.replace("http", "ws") + "/api/v2/rpc"
        for start in range(0, len(devices), 200):
            batch = []
            for device_id, token in devices[start:start + 200]:
                sim = SimulatedDevice(ws_a, token, reactor, reconnect_delay=(0.1, 1.0))
                sims.append(sim.start())
                batch.append(sim.wait_open())
            await defer.gatherResults(batch)

        async def online_on_b() -> int:
            response = await treq.get(b.url + "/metrics", pool=pool)
            text = (await response.text())
            line = [x for x in text.splitlines()
                    if x.startswith("dashd_cluster_devices_online ")][0]
            return int(float(line.split()[1]))

        while await online_on_b() < args.devices:
            await task.deferLater(reactor, 0.1)
        for sim in sims:
            sim.url = ws_b  # where it redials
        recording = None
        if args.profile:
            assert b.proc is not None
            recording = Recording(b.proc.pid, os.path.join(directory, "profile-b.txt"))
        refused: Counter[int] = Counter()

        async def echo(device_id: str) -> None:
            while True:
                response = await treq.post("%s/api/v2/devices/%s/rpc/Sim.Echo"
                                           % (b.url, device_id), json={"ok": 1},
                                           headers=auth, pool=pool)
                await response.content()
                if response.code == 200:
                    return
                refused[response.code] += 1
                await task.deferLater(reactor, 0.05)

        reconnected_at: list[float] = []
        usable_at: list[float] = []

        async def fail_over(sim: SimulatedDevice, device_id: str) -> None:
            # Each device is tried through B as soon as it has reconnected
            # (as its users would), 32 calls at a time in all.
            await sim.wait_closed()
            await sim.wait_open()
            reconnected_at.append(time.monotonic() - killed)
            await limit.run(lambda: Deferred.fromCoroutine(echo(device_id)))
            usable_at.append(time.monotonic() - killed)

        # (what the connections before cost reaches the statistics first)
        await task.deferLater(reactor, 11)
        commits = _commits(args.postgres, name)
        killed = time.monotonic()
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        # Each waits for its connection to drop from here (before the reactor
        # turns again).
        both = defer.gatherResults([Deferred.fromCoroutine(fail_over(sim, d))
                                    for sim, (d, _) in zip(sims, devices)])
        # A's devices count as online until B takes A for dead: from the
        # time all reconnected, B's presence has them all when it says so.
        while len(reconnected_at) < args.devices:
            await task.deferLater(reactor, 0.05)
        while await online_on_b() < args.devices:
            await task.deferLater(reactor, 0.05)
        online = time.monotonic() - killed
        await both
        connected = max(reconnected_at)
        done = max(usable_at)
        if recording is not None:
            recording.stop()
            print(summarise(recording.path, 40))
        # PostgreSQL's statistics reach pg_stat_database when a backend has
        # been idle a while (up to 10 s).
        await task.deferLater(reactor, 11)
        commits = _commits(args.postgres, name) - commits
        # What the client alone needs for as many calls, all devices usable.
        started = time.monotonic()
        await defer.gatherResults(
            [limit.run(lambda d=d: Deferred.fromCoroutine(echo(d))) for d, _ in devices])
        calls_alone = time.monotonic() - started
        print("failover of %d devices (node_timeout %g s), from node A's SIGKILL:"
              % (args.devices, args.node_timeout))
        print("  all reconnected to B  %6.2f s" % connected)
        print("  all online on B       %6.2f s" % online)
        print("  all usable through B  %6.2f s (half of them by %.2f s)"
              % (done, sorted(usable_at)[len(usable_at) // 2]))
        print("  PostgreSQL transactions meanwhile: %d (%.2f a device)"
              % (commits, commits / args.devices))
        print("  (%d calls through B, all devices usable: %.2f s; answers other than 200 "
              "while failing over: %s)" % (args.devices, calls_alone, dict(refused) or "none"))
        await pool.closeCachedConnections()
    finally:
        for sim in sims:
            sim.reconnect = False
            await sim.stop()
        b.stop()
        a.stop()
        drop_cluster(args, name, namespace, directory)


def _commits(url: str, database: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database"
                           " WHERE datname = %s", (database,)).fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--node-timeout", type=float, default=2.0)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--profile", action="store_true",
                        help="record node B with py-spy during the failover")
    args = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor, args)))


if __name__ == "__main__":
    main()
