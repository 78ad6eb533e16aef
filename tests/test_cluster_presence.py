"""
Presence is the single truth of who is online, and the events and history
follow it, through node failures: a node paused (SIGSTOP) past
cluster.node_timeout behind HAProxy as shipped is taken for dead (its
devices said offline, in their history too), its devices reconnect to the
other node, and when it wakes it says nothing of the connections it closes
then (fencing): their history ends "online" and calls to them work.

B's Redis link goes through a proxy held (nothing relayed) from the pause
until a moment after B wakes: B then sees its connections closed before it
hears that A took the devices (as a node waking from a long pause may: the
others' messages arrive later, or over a new subscription). Without the
fencing (a closed connection said offline at once) B stores and publishes
"offline" for devices held by A, and this test fails; without the hold, B
heard of A's connections first and the test passed either way.
"""

from __future__ import annotations

import signal
from urllib.parse import urlsplit

import pytest
import pytest_twisted

import backends
from cluster_support import NODE_TIMEOUT, TestCluster
from cutter import Cutter
from haproxy import HAProxy
from twisted.internet import reactor

from dashd.simulator import SimulatedDevice
from support import (
    Client,
    device_online,
    eventually,
    sleep,
    subscribe,
    within,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


async def history(client: Client, device_id: str) -> list[dict]:
    reply = await client.post("/api/v2/logs", {"start": 0, "device_id": device_id,
                                               "limit": 1000})
    assert reply.status == 200, reply
    return [e for e in reply.body["events"] if e["name"] in ("online", "offline")]


@pytest_twisted.ensureDeferred
async def test_a_paused_node_does_not_say_offline_devices_now_elsewhere(tmp_path):
    cluster = TestCluster(str(tmp_path))
    agents = []
    for node in cluster.nodes:
        agents.append(backends.free_port())
        node.configure({"lb": {"agent_listen": ["tcp:%d:interface=127.0.0.1" % agents[-1]]}})
    a_node, b_node = cluster.nodes
    redis = urlsplit(backends.REDIS_URL)
    cutter = Cutter(redis.port or 6379)
    b_node.configure({"cluster": {"redis_url": redis._replace(
        netloc="127.0.0.1:%d" % cutter.port).geturl()}})
    cluster.start()
    lb = HAProxy(str(tmp_path), [(n.port, p) for n, p in zip(cluster.nodes, agents)])
    lb.start()
    lb_url = "ws://127.0.0.1:%d/api/v2/rpc" % lb.port
    sims = []
    paused = False
    try:
        await eventually(lambda: lb.servers() == {"node1": ("UP", 100), "node2": ("UP", 100)},
                         15)
        a = Client(a_node, cluster.admin_key)
        devices = [await a.register("on-b-%d" % i) for i in range(4)]
        # All on B, through the balancer (A drained meanwhile).
        lb.command("set server dashd_nodes/node1 state drain")
        for device_id, token in devices:
            sim = SimulatedDevice(lb_url, token, reactor, reconnect_delay=(0.3, 1)).start()
            sims.append(sim)
            await within(sim.wait_open(), 10)
        lb.command("set server dashd_nodes/node1 state ready")
        held_by_b = (await Client(b_node, None).get("/metrics", key=None)).raw.decode()
        assert "\ndashd_devices_connected 4.0\n" in held_by_b
        for device_id, _ in devices:
            await device_online(a, device_id)
        for device_id, _ in devices:  # B stored their online events
            async def stored(device_id: str = device_id) -> bool:
                return [e["name"] for e in await history(a, device_id)] == ["online"]
            await eventually(stored, 10, 0.2)
        sub = await subscribe(a_node, cluster.admin_key)

        b_node.proc.send_signal(signal.SIGSTOP)
        paused = True
        cutter.hold()  # what Redis tells B waits (see the module's docstring)
        # A takes B for dead: the devices are offline (said once, by A, and
        # stored), then HAProxy cuts B's connections and they come to A.
        ids = {device_id for device_id, _ in devices}

        def said(name: str) -> dict[str, dict]:
            return {e["id"]: e for e in sub.matching(lambda e: e["name"] == name
                                                     and e["id"] in ids)}
        await eventually(lambda: set(said("offline")) == ids, NODE_TIMEOUT + 10)
        assert all("stopped answering" in e["data"]["reason"]
                   for e in said("offline").values())
        await eventually(lambda: set(said("online")) == ids, 20)
        assert all(sim.online for sim in sims)

        b_node.proc.send_signal(signal.SIGCONT)
        paused = False
        # B sees its connections closed; Redis' answers reach it 0.6 s later
        # (within its Redis timeout, cluster.node_timeout / 2).
        await sleep(0.6)
        cutter.release()
        # B wakes, finds its connections gone, resyncs; give it the time.
        await sleep(2 * NODE_TIMEOUT + 1)
        for device_id, _ in devices:
            reply = await a.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, {"i": 1})
            assert (reply.status, reply.body) == (200, {"i": 1})
            assert (await a.device(device_id))["online"] is True
            events = await history(a, device_id)
            # online (B), offline (B taken for dead, said by A), online (A).
            assert [e["name"] for e in events] == ["online", "offline", "online"], events
            assert "stopped answering" in events[1]["data"]["reason"]
        sub.never(lambda e: e["name"] == "offline"
                  and e["data"]["reason"] != events[1]["data"]["reason"]
                  and "stopped answering" not in e["data"]["reason"],
                  "an offline event from the paused node")
        b = Client(b_node, cluster.admin_key)
        for device_id, _ in devices:  # and B sees them where they are
            async def routed(device_id: str = device_id) -> bool:
                reply = await b.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, {"j": 2})
                return reply.status == 200
            await eventually(routed, 10, 0.3)
        sub.close()
    finally:
        if paused:
            b_node.proc.send_signal(signal.SIGCONT)
        cutter.close()
        for sim in sims:
            await sim.stop()
        lb.stop()
        problems = cluster.stop()
    assert not problems, "%s\n%s" % (problems, cluster.logs())
