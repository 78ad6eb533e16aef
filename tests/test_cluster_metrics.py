"""
A cluster's metrics and readiness: per-node device counts (their sum is the
fleet), the cluster's own figures (Redis, nodes alive, calls passed between
nodes), and /readyz on a node that lost Redis (its devices cannot be reached
from the others, so it should take no new ones). Redis is cut for one node
only, through a proxy of the test's own (never the shared server).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import pytest_twisted

import backends
from cluster_support import NODE_TIMEOUT, TestCluster
from cutter import Cutter
from support import Client, connect_device, device_online, eventually
from test_ops import sample

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


async def metrics(client: Client) -> str:
    reply = await client.get("/metrics", key=None)  # loopback: no key needed
    assert reply.status == 200
    return reply.raw.decode()


@pytest_twisted.ensureDeferred
async def test_per_node_and_cluster_metrics_and_readiness_without_redis(tmp_path):
    cutter = Cutter(urlsplit(backends.REDIS_URL).port or 6379)
    cluster = TestCluster(str(tmp_path))
    a_node, b_node = cluster.nodes
    a_node.configure({"cluster": {"redis_url": "redis://127.0.0.1:%d/0" % cutter.port}})
    cluster.start()
    sims = []
    try:
        a = Client(a_node, cluster.admin_key)
        b = Client(b_node, cluster.admin_key)
        devices = [await a.register("m%d" % i) for i in range(3)]
        for i, (_, token) in enumerate(devices):
            sims.append(await connect_device(a_node if i < 2 else b_node, token))
        for device_id, _ in devices:
            await device_online(b, device_id)
        for _ in range(2):  # through B, to A's device
            reply = await b.post("/api/v2/devices/%s/rpc/Sim.Echo" % devices[0][0], {"x": 1})
            assert reply.status == 200

        async def figures():
            return await metrics(a), await metrics(b)

        async def settled():
            ma, mb = await figures()
            return (ma, mb) if sample(ma, "dashd_cluster_nodes_alive") == 2 \
                and sample(mb, "dashd_cluster_nodes_alive") == 2 else None
        ma, mb = await eventually(settled, NODE_TIMEOUT + 3)
        # Each node its own devices: the sum is the fleet, not twice it.
        assert sample(ma, "dashd_devices_connected") == 2
        assert sample(mb, "dashd_devices_connected") == 1
        for text in (ma, mb):
            assert sample(text, "dashd_cluster_devices_online") == 3
            assert sample(text, "dashd_cluster_redis_connected") == 1
            assert sample(text, "dashd_cluster_redis_losses_total") == 0
            assert sample(text, "dashd_cluster_calls_in_flight") == 0
            assert sample(text, "dashd_cluster_calls_serving") == 0
        assert sample(mb, "dashd_cluster_calls_sent_total") == 2
        assert sample(ma, "dashd_cluster_calls_served_total") == 2
        assert sample(ma, "dashd_cluster_calls_sent_total") == 0
        for client in (a, b):
            assert (await client.get("/readyz", key=None)).status == 200

        cutter.cut()  # A alone loses Redis

        async def a_not_ready():
            reply = await a.get("/readyz", key=None)
            return reply if reply.status == 503 else None
        reply = await eventually(a_not_ready, NODE_TIMEOUT + 5)
        assert "Redis is unreachable" in reply.error["message"]
        assert reply.headers.getRawHeaders("retry-after") == ["5"]
        assert (await b.get("/readyz", key=None)).status == 200
        ma = await metrics(a)
        assert sample(ma, "dashd_cluster_redis_connected") == 0
        assert sample(ma, "dashd_cluster_redis_losses_total") == 1
        assert sample(ma, "dashd_devices_connected") == 2  # still held, still served
        reply = await a.post("/api/v2/devices/%s/rpc/Sim.Echo" % devices[0][0], {"y": 2})
        assert (reply.status, reply.body) == (200, {"y": 2})
        # /healthz (liveness) is unchanged: the process answers.
        assert (await a.get("/healthz", key=None)).status == 200

        cutter.restore()

        async def a_ready():
            return (await a.get("/readyz", key=None)).status == 200
        await eventually(a_ready, 15, 0.2)
        ma = await metrics(a)
        assert sample(ma, "dashd_cluster_redis_connected") == 1
        reply = await b.post("/api/v2/devices/%s/rpc/Sim.Echo" % devices[1][0], {"z": 3})
        assert (reply.status, reply.body) == (200, {"z": 3})
    finally:
        for sim in sims:
            await sim.stop()
        problems = cluster.stop()
        cutter.close()
    assert not problems, "%s\n%s" % (problems, cluster.logs())
