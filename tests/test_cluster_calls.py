"""
Queued calls in a cluster of two real nodes: the node holding the device
delivers, once, wherever the call was made; a device moving between nodes
loses only what was under way on the connection it left (lost, never sent
again); a node killed mid-call leaves its call lost, not sent for ever.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from cluster_support import NODE_TIMEOUT, TestCluster
from support import Client, connect_device, device_online, eventually, within

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = TestCluster(str(tmp_path_factory.mktemp("cluster")))
    c.start()
    yield c
    problems = c.stop()
    assert not problems, "%s\n%s" % (problems, c.logs())


async def queue(client: Client, device_id: str, method: str, **body: Any) -> dict[str, Any]:
    reply = await client.post("/api/v2/devices/%s/calls" % device_id,
                              dict(body, method=method))
    assert reply.status == 202, reply
    return reply.body


async def final(client: Client, call_id: str, seconds: float = 20) -> dict[str, Any]:
    async def check() -> Any:
        reply = await client.get("/api/v2/calls/" + call_id)
        assert reply.status == 200, reply
        return reply.body if reply.body["state"] not in ("queued", "sent") else None

    return await eventually(check, seconds)


def slow_handler(seconds: float) -> Any:
    def slow(params: Any) -> Deferred:
        return deferLater(reactor, seconds, lambda: params)

    return slow


@pytest_twisted.ensureDeferred
async def test_the_node_holding_the_device_delivers_once_wherever_the_call_was_made(cluster):
    a = Client(cluster.nodes[0], cluster.admin_key)
    b = Client(cluster.nodes[1], cluster.admin_key)
    device_id, token = await a.register()
    # Queued on both nodes while the device is away, then more while it is
    # held by A, made on B and on A in turn.
    made = [await queue((a, b)[i % 2], device_id, "Sim.Echo", params=i) for i in range(6)]
    sim = await connect_device(cluster.nodes[0], token)
    try:
        await device_online(b, device_id)
        made += [await queue((b, a)[i % 2], device_id, "Sim.Echo", params=i)
                 for i in range(6, 12)]
        for call in made:
            done = await final(b, call["id"])
            assert done["state"] == "succeeded" and done["result"] == call["params"]
            assert len(done["attempts"]) == 1
        echoed = [f["params"] for f in sim.frames if f.get("method") == "Sim.Echo"]
        assert echoed == list(range(12))
        # A device query on B knows the device A holds is online.
        reply = await b.get("/api/v2/devices?where=online%%20and%%20id%%20=%%20%%22%s%%22"
                            % device_id)
        assert [d["id"] for d in reply.body] == [device_id]
        # The bridge's ?queue= on the node that does not hold it: at once.
        reply = await b.post("/api/v2/devices/%s/rpc/Sim.Echo?queue=60" % device_id, {"z": 1})
        assert (reply.status, reply.body) == (200, {"z": 1})
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_device_moving_between_nodes_gets_each_call_at_most_once(cluster):
    a_node, b_node = cluster.nodes
    a = Client(a_node, cluster.admin_key)
    b = Client(b_node, cluster.admin_key)
    device_id, token = await b.register()
    made = [await queue(b, device_id, "Test.Slow", params=i) for i in range(12)]
    sim = await connect_device(a_node, token, reconnect_delay=(0.2, 0.5))
    sim.handlers["Test.Slow"] = slow_handler(0.3)
    try:
        await eventually(lambda: sim.methods.count("Test.Slow") >= 3)
        # The device moves to B: what A had sent and not had answered is
        # lost; the rest goes out from B.
        sim.url = b_node.device_url
        closed = sim.wait_closed()
        sim.drop()
        await within(closed, 10)
        await within(sim.wait_open(), 10)
        ended = [await final(a, call["id"]) for call in made]
        states = [e["state"] for e in ended]
        assert set(states) <= {"succeeded", "lost"}, states
        # At most calls.in_flight_per_device (4) were under way on A.
        assert 1 <= states.count("lost") <= 4, states
        sent = [f["params"] for f in sim.frames if f.get("method") == "Test.Slow"]
        # Each at most once, in the order they were made, and every one
        # sent exactly when its record says so.
        assert sent == sorted(set(sent)), sent
        assert sorted(sent) == [e["params"] for e in ended if e["attempts"]]
        for e in ended:
            if e["state"] == "lost":
                assert e["error"]["message"].startswith("device %s disconnected" % device_id)
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_killed_mid_call_leaves_it_lost(tmp_path):
    cluster = TestCluster(str(tmp_path))
    cluster.start()
    a_node, b_node = cluster.nodes
    sim = None
    try:
        b = Client(b_node, cluster.admin_key)
        device_id, token = await b.register()
        sim = await connect_device(a_node, token, reconnect_delay=(NODE_TIMEOUT + 1, 5))
        sim.handlers["Test.Silent"] = lambda params: Deferred()
        await device_online(b, device_id)
        call = await queue(b, device_id, "Test.Silent", timeout=30)
        behind = await queue(b, device_id, "Sim.Echo", params="behind")
        await eventually(lambda: "Test.Silent" in sim.methods)
        sim.url = b_node.device_url
        a_node.kill9()
        done = await final(b, call["id"], NODE_TIMEOUT * 3 + 10)
        assert done["state"] == "lost", done
        assert done["error"]["message"] == (
            "sent, then the node that sent it is gone before an answer: whether the device "
            "did it is unknown")
        # The device comes back through B: the call behind it goes out,
        # the lost one never again.
        after = await final(b, behind["id"], 20)
        assert after["state"] == "succeeded", after
        assert sim.methods.count("Test.Silent") == 1
    finally:
        if sim is not None:
            await sim.stop()
        problems = cluster.stop()
    assert not problems, "%s\n%s" % (problems, cluster.logs())
