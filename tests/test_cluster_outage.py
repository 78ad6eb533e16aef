"""
A PostgreSQL outage in a cluster behind HAProxy as shipped
(etc/haproxy.cfg): the devices stay connected and their calls keep working
from what the nodes hold, writes that must be durable fail fast with a
clear 503, readiness says "no new devices" without cutting anything, and
nothing acknowledged is lost (audit entries included). The PostgreSQL that
goes away is a private one, never the shared server.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted

import backends
from cluster_support import TestCluster
from haproxy import HAProxy
from twisted.internet import reactor

from dashd.simulator import SimulatedDevice
from support import Client, device_online, eventually, sleep, within

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OUTAGE = 9.0  # seconds: more than HAProxy's fall (2 checks, 2 s apart) and then some


def rpc(device_id: str, method: str) -> str:
    return "/api/v2/devices/%s/rpc/%s" % (device_id, method)


@pytest_twisted.ensureDeferred
async def test_a_database_outage_behind_the_shipped_haproxy_cuts_nothing(tmp_path):
    pg = backends.PrivatePostgres(str(tmp_path))
    pg.init()
    pg.start()
    cluster = lb = None
    sims = []
    try:
        url = backends.create_database(pg.url)
        cluster = TestCluster(str(tmp_path), store_url=url, config={"store": {"timeout": 2.0}})
        agents = []
        for node in cluster.nodes:
            agents.append(backends.free_port())
            node.configure({"lb": {"agent_listen": ["tcp:%d:interface=127.0.0.1" % agents[-1]]}})
        cluster.start()
        a_node, b_node = cluster.nodes
        lb = HAProxy(str(tmp_path), [(n.port, p) for n, p in zip(cluster.nodes, agents)])
        lb.start()

        def weights() -> dict[str, tuple[str, int]]:
            return lb.servers()

        await eventually(lambda: weights() == {"node1": ("UP", 100), "node2": ("UP", 100)}, 15)

        a = Client(a_node, cluster.admin_key)
        b = Client(b_node, cluster.admin_key)
        devices = [await a.register("fleet-%d" % i) for i in range(6)]
        lb_url = "ws://127.0.0.1:%d/api/v2/rpc" % lb.port
        closed: list[str] = []
        # Through the balancer: leastconn spreads them over both nodes.
        for device_id, token in devices:
            sim = SimulatedDevice(lb_url, token, reactor, reconnect_delay=(0.5, 2)).start()
            sims.append(sim)
            await within(sim.wait_open(), 10)
            sim.wait_closed().addCallback(lambda _, d=device_id: closed.append(d))
        for device_id, _ in devices:
            await device_online(b, device_id)
        held_a = int((await a.get("/metrics", key=None)).raw.decode().split(
            "\ndashd_devices_connected ")[1].split()[0].split(".")[0])
        assert 0 < held_a < len(devices), "leastconn put them all on one node"
        # Both nodes have served each device (and the key) once before.
        calls = 0
        for client in (a, b):
            for device_id, _ in devices:
                reply = await client.post(rpc(device_id, "Sim.Echo"), {"before": 1})
                assert reply.status == 200
                calls += 1

        pg.stop("immediate")
        started = time.monotonic()

        # HAProxy: both nodes stay UP (nothing is cut), each at 1% of its
        # weight (no node is better for new devices than the other).
        await eventually(lambda: weights() == {"node1": ("UP", 1), "node2": ("UP", 1)}, 10)
        for client, name in ((a, "A"), (b, "B")):
            ready = await client.get("/readyz", key=None)
            assert ready.status == 503, name
            assert "database is unreachable" in ready.error["message"], ready.error
            assert (await client.get("/healthz", key=None)).status == 200
        # Calls to every device, through both nodes, and answered at once.
        while time.monotonic() - started < OUTAGE:
            for client in (a, b):
                for device_id, _ in devices:
                    t = time.monotonic()
                    reply = await within(client.post(rpc(device_id, "Sim.Echo"), {"d": 1}), 5)
                    assert (reply.status, reply.body) == (200, {"d": 1}), reply
                    assert time.monotonic() - t < 1.0
                    calls += 1
            # A durable write: a clear 503, fast (not after store.timeout).
            t = time.monotonic()
            reply = await b.post("/api/v2/devices/" + devices[0][0],
                                 {"shadow": {"state": {"desired": {"lost": 1}}}})
            assert reply.status == 503 and "database is unreachable" in reply.error["message"]
            assert reply.headers.getRawHeaders("retry-after") == ["5"]
            assert time.monotonic() - t < 1.5
            await sleep(0.5)
        # The devices: still connected, all of them; a write of theirs is
        # refused, not acknowledged.
        assert closed == [] and all(sim.online for sim in sims)
        try:
            await within(sims[0].call("Dash.Shadow.Update",
                                      {"state": {"reported": {"lost": 1}}}), 5)
            raise AssertionError("a write was acknowledged without a database")
        except Exception as e:
            assert "unreachable" in str(e), e
        assert weights() == {"node1": ("UP", 1), "node2": ("UP", 1)}

        pg.start()
        await eventually(lambda: weights() == {"node1": ("UP", 100), "node2": ("UP", 100)}, 15)
        for client in (a, b):
            async def ready(client: Client = client) -> bool:
                return (await client.get("/readyz", key=None)).status == 200
            await eventually(ready, 10, 0.2)
        assert closed == []
        # Nothing acknowledged is lost; no audit entry either: those of the
        # calls made meanwhile were written once the database was back.
        view = await a.device(devices[0][0])
        assert "lost" not in view["shadow"]["state"]["reported"]
        assert "lost" not in view["shadow"]["state"]["desired"]

        async def audited() -> bool:
            reply = await a.get("/api/v2/audit?start=-2000&limit=1000")
            entries = [e for e in reply.body["entries"] if e["path"].endswith("/rpc/Sim.Echo")]
            return len(entries) == calls
        await eventually(audited, 15, 0.5)
        for node in cluster.nodes:
            assert "audit entries could not be stored" not in node.log()
    finally:
        for sim in sims:
            await sim.stop()
        if lb is not None:
            lb.stop()
        problems = cluster.stop() if cluster is not None else []
        pg.remove()
    assert not problems, "%s\n%s" % (problems, cluster.logs())
