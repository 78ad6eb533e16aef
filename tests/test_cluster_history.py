"""
A device's history (``POST /logs``) across a database outage of one node,
in a cluster: node A loses PostgreSQL (its link goes through a proxy the
test cuts; B keeps it) while the device, connected to A, sends log lines
and then moves to B. A keeps the lines and the device's ``offline`` in
memory and stores them when its database is back, after B stored the
device's ``online`` there: the history has every event, listed in the
order they happened (not the order they were stored), with the times they
happened. Before, A's events were lost (only counted in a warning), and
they would have been listed after B's later ``online``.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from twisted.internet import reactor

from cluster_support import TestCluster
from cutter import Cutter
from dashd.simulator import SimulatedDevice
from support import Client, device_online, eventually, sleep, within

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


async def history(client: Client, device_id: str) -> list[dict[str, Any]]:
    reply = await client.post("/api/v2/logs", {"start": 0, "device_id": device_id,
                                               "limit": 1000})
    assert reply.status == 200, reply
    return reply.body["events"]


@pytest_twisted.ensureDeferred
async def test_history_kept_through_one_node_s_database_outage_in_event_order(tmp_path):
    cluster = TestCluster(str(tmp_path), config={"store": {"timeout": 2.0}})
    a_node, b_node = cluster.nodes
    store = urlsplit(cluster.store_url)
    cutter = Cutter(store.port or 5432)
    a_node.configure({"store": {"url": store._replace(
        netloc="%s127.0.0.1:%d" % (store.netloc.rpartition("@")[0] + "@" if "@" in store.netloc
                                   else "", cutter.port)).geturl()}})
    sims: list[SimulatedDevice] = []
    try:
        cluster.start()
        b = Client(b_node, cluster.admin_key)
        device_id, token = await b.register("moves")
        on_a = SimulatedDevice(a_node.device_url, token, reactor, reconnect=False).start()
        sims.append(on_a)
        await within(on_a.wait_open(), 10)
        await device_online(b, device_id)
        await eventually(lambda: _names(history(b, device_id), ["online"]), 10, 0.2)

        cutter.cut()  # A alone loses its database
        outage = time.time()
        for i in range(3):
            on_a.notify("Dash.Log", {"msg": "line %d" % i})
            await sleep(0.05)
        await on_a.stop()  # A says it offline (kept for later too)
        await sleep(0.2)
        on_b = SimulatedDevice(b_node.device_url, token, reactor, reconnect=False).start()
        sims.append(on_b)
        await within(on_b.wait_open(), 10)
        # B stores the device's online now; A's events wait for A's database.
        await eventually(lambda: _names(history(b, device_id), ["online", "online"]), 10, 0.2)
        cutter.restore()

        expected = ["online", "rpc.out.Log", "rpc.out.Log", "rpc.out.Log", "offline", "online"]
        events = await eventually(lambda: _names(history(b, device_id), expected), 15, 0.3)
        assert [e["data"]["msg"] for e in events if e["name"] == "rpc.out.Log"] == \
            ["line 0", "line 1", "line 2"]
        times = [e["timestamp"] for e in events]
        assert times == sorted(times)
        assert all(outage - 1 < t < time.time() for t in times[1:])
        # Stored after B's online: the offsets say the order they were stored.
        offsets = {e["name"]: e["offset"] for e in events}
        assert offsets["offline"] > events[-1]["offset"]
        metrics = (await Client(a_node, None).get("/metrics", key=None)).raw.decode()
        assert "\ndashd_history_events_lost_total 0.0\n" in metrics
    finally:
        for sim in sims:
            await sim.stop()
        cutter.close()
        problems = cluster.stop()
    assert not problems, "%s\n%s" % (problems, cluster.logs())


async def _names(events: Any, names: list[str]) -> Any:
    found = await events
    return found if [e["name"] for e in found] == names else None
