"""
Events go only to the nodes with a subscriber that may see them (issue 21
item 6, L{dashd.cluster.interest}): checked on two real nodes by listening
to every channel of the cluster's Redis namespace.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import redis

from cluster_support import TestCluster
from support import SECRETS, Client, connect_device, device_online, sleep, subscribe

pytestmark = pytest.mark.cluster

# (With route_events false, every event goes to every node: the test fails.)
CONFIG: dict[str, Any] = {}


class Tap:
    """Every ``ev`` message published in the namespace, by channel."""

    def __init__(self, url: str, namespace: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe(namespace + ":*")
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def events(self, device_id: str) -> list[tuple[str, dict[str, Any]]]:
        while True:
            message = self.pubsub.get_message(timeout=0)
            if message is None:
                break
            if message["type"] == "pmessage" and b'"t":"ev"' in message["data"]:
                self.seen.append((message["channel"].decode(), json.loads(message["data"])))
        return [(c, m) for c, m in self.seen if m["id"] == device_id]

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


async def _account(admin: Client, name: str) -> tuple[Client, str]:
    reply = await admin.post("/api/v2/accounts", {"name": name})
    assert reply.status in (200, 201), reply
    key = reply.body["admin_key"]["key"]
    SECRETS.add(key)
    return Client(admin.server, key), reply.body["id"]


@pytest_twisted.ensureDeferred
async def test_events_go_only_to_nodes_that_want_them(tmp_path):
    cluster = TestCluster(str(tmp_path), nodes=2, config=CONFIG)
    node0, node1 = cluster.nodes
    tap = Tap(cluster.redis_url, cluster.namespace)
    subs: list[Any] = []
    device = None
    try:
        cluster.start()
        admin = Client(node0, cluster.admin_key)
        x, _ = await _account(admin, "routing x")
        y, y_id = await _account(admin, "routing y")
        device_id, token = await x.register("router")
        device = await connect_device(node0, token)
        await device_online(x, device_id)
        here = await subscribe(node0, x.key)
        subs.append(here)
        # Nobody on node 1 wants account x's events: none leaves node 0.
        device.notify("Ping", {"n": 1})
        await here.next(lambda e: e["name"] == "rpc.out.Ping")
        await sleep(0.3)
        assert tap.events(device_id) == []
        # Another account's subscriber on node 1 changes nothing.
        subs.append(await subscribe(node1, y.key))
        await sleep(0.3)
        device.notify("Ping", {"n": 2})
        await here.next(lambda e: e["name"] == "rpc.out.Ping" and e["data"]["n"] == 2)
        await sleep(0.3)
        assert tap.events(device_id) == []
        # A subscriber of account x on node 1: from now on it gets them.
        there = await subscribe(node1, x.key)
        subs.append(there)
        # (At once: its stream opens once node 0 is to send them.)
        device.notify("Ping", {"n": 3})
        got = await there.next(lambda e: e["name"] == "rpc.out.Ping", seconds=10)
        assert got["data"] == {"n": 3}
        assert [m["d"] for _, m in tap.events(device_id)] == [{"n": 3}]
        # It leaves: a moment later (cluster.interest.LINGER) nothing goes again.
        there.close()
        n = 3
        for _ in range(20):
            await sleep(0.5)
            tap.events(device_id)
            tap.seen.clear()
            n += 1
            device.notify("Ping", {"n": n})
            await here.next(lambda e: e["name"] == "rpc.out.Ping" and e["data"]["n"] == n)
            await sleep(0.2)
            if not tap.events(device_id):
                break
        else:
            raise AssertionError("events still sent to node 1 10 s after its subscriber left")
        # Shared with account y, whose subscriber is on node 1: sent there.
        reply = await x.post("/api/v2/devices/" + device_id, {"shared_with": y_id})
        assert reply.status == 200, reply
        device.notify("Ping", {"n": 99})
        await subs[1].next(lambda e: e["id"] == device_id and e["name"] == "rpc.out.Ping",
                           seconds=10)
        assert [m["d"] for _, m in tap.events(device_id) if m["n"] == "rpc.out.Ping"] == \
            [{"n": 99}]
    finally:
        for s in subs:
            s.close()
        if device is not None:
            await device.stop()
        tap.close()
        problems = cluster.stop()
    assert not problems, problems
