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
- usable: a ``Sim.Echo`` through B's REST API answers for every device.

The issue's target: usable in under 5 s with 10,000 devices. Everything
(client, nodes, PostgreSQL, Redis) runs on this machine. ``--profile``
records node B with py-spy from the kill until every device is usable, and
prints where its samples fell (bench/profile.py).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
import treq
from twisted.internet import defer, task
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.web.client import HTTPConnectionPool

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.cluster import Node  # noqa: E402
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
        reconnected = [sim.wait_closed() for sim in sims]
        recording = None
        if args.profile:
            assert b.proc is not None
            recording = Recording(b.proc.pid, os.path.join(directory, "profile-b.txt"))
        killed = time.monotonic()
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        await defer.gatherResults(reconnected)
        await defer.gatherResults([sim.wait_open() for sim in sims])
        connected = time.monotonic() - killed
        while await online_on_b() < args.devices:
            await task.deferLater(reactor, 0.05)
        online = time.monotonic() - killed

        async def usable(device_id: str) -> None:
            while True:
                response = await treq.post("%s/api/v2/devices/%s/rpc/Sim.Echo"
                                           % (b.url, device_id), json={"ok": 1},
                                           headers=auth, pool=pool)
                await response.content()
                if response.code == 200:
                    return
                await task.deferLater(reactor, 0.05)

        await defer.gatherResults(
            [limit.run(lambda d=d: Deferred.fromCoroutine(usable(d))) for d, _ in devices])
        done = time.monotonic() - killed
        if recording is not None:
            recording.stop()
            print(summarise(recording.path, 40))
        print("failover of %d devices (node_timeout %g s), from node A's SIGKILL:"
              % (args.devices, args.node_timeout))
        print("  all reconnected to B  %6.2f s" % connected)
        print("  all online on B       %6.2f s" % online)
        print("  all usable through B  %6.2f s" % done)
        await pool.closeCachedConnections()
    finally:
        for sim in sims:
            sim.reconnect = False
            await sim.stop()
        b.stop()
        a.stop()
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
        client = redis.Redis.from_url(args.redis)
        for k in client.scan_iter(match=namespace + ":*"):
            client.delete(k)
        client.close()
        shutil.rmtree(directory, ignore_errors=True)


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
