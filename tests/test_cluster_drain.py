"""
A graceful stop in a cluster (a rolling restart): the calls other nodes
passed to the stopping node for its devices are drained as its own REST
calls are, within shutdown.grace_period, instead of failing at once.
"""

from __future__ import annotations

import signal

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from cluster_support import TestCluster
from lb import Balancer
from support import Client, connect_device, device_online, eventually, within

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def rpc(device_id: str, method: str) -> str:
    return "/api/v2/devices/%s/rpc/%s" % (device_id, method)


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_other_nodes_calls_in_flight_finish(tmp_path):
    cluster = TestCluster(str(tmp_path), config={"shutdown": {"grace_period": 10.0}})
    cluster.start()
    a_node, b_node = cluster.nodes
    lb = Balancer([a_node.port, b_node.port])
    lb_url = "ws://127.0.0.1:%d/api/v2/rpc" % lb.listen()
    sims = []
    try:
        b = Client(b_node, cluster.admin_key)
        devices = [await b.register("held-by-a-%d" % i) for i in range(2)]
        for _, token in devices:
            sim = await connect_device(a_node, token, reconnect_delay=(0.2, 1))
            sim.url = lb_url  # where it reconnects: the balancer
            sims.append(sim)
        for device_id, _ in devices:
            await device_online(b, device_id)

        # Four 2-second calls through B, two for each of A's devices.
        calls = [Deferred.fromCoroutine(
                     b.post(rpc(device_id, "Sim.Sleep") + "?timeout=20",
                            {"seconds": 2.0 + 0.1 * n}))
                 for device_id, _ in devices for n in range(2)]
        for sim in sims:
            await eventually(lambda: len([f for f in sim.frames
                                          if f.get("method") == "Sim.Sleep"]) == 2, 10)
        a_node.proc.send_signal(signal.SIGTERM)

        replies = await within(gatherResults(calls), 15)
        assert [(r.status, r.body) for r in replies] == [
            (200, {"slept": 2.0 + 0.1 * n}) for _ in devices for n in range(2)], \
            [(r.status, r.body) for r in replies]
        await eventually(lambda: a_node.proc.poll() is not None, 20)
        assert a_node.proc.returncode == -signal.SIGTERM
        a_node.proc = None
        log = a_node.log()
        assert "waiting up to 10.0s for 0 request(s) in flight and 4 call(s) from other " \
               "nodes" in log
        assert "the requests in flight are answered" in log

        # The devices are back, through the balancer, on B, and answer.
        for (device_id, _), sim in zip(devices, sims):
            await within(sim.wait_open(), 15)
            await device_online(b, device_id)
            reply = await b.post(rpc(device_id, "Sim.Echo"), {"back": device_id})
            assert (reply.status, reply.body) == (200, {"back": device_id})
    finally:
        for sim in sims:
            await sim.stop()
        await lb.stop()
        problems = cluster.stop()
    assert not problems, "%s\n%s" % (problems, cluster.logs())


@pytest_twisted.ensureDeferred
async def test_other_nodes_calls_beyond_the_grace_period_fail_at_its_end(tmp_path):
    cluster = TestCluster(str(tmp_path), config={"shutdown": {"grace_period": 1.0}})
    cluster.start()
    a_node, b_node = cluster.nodes
    sim = None
    try:
        b = Client(b_node, cluster.admin_key)
        device_id, token = await b.register()
        sim = await connect_device(a_node, token, reconnect=False)
        await device_online(b, device_id)
        call = Deferred.fromCoroutine(
            b.post(rpc(device_id, "Sim.Sleep") + "?timeout=30", {"seconds": 20}))
        await eventually(lambda: any(f.get("method") == "Sim.Sleep" for f in sim.frames), 10)
        a_node.proc.send_signal(signal.SIGTERM)
        reply = await within(call, 10)  # the grace period, not the 20 s of the call
        assert reply.status == 503, reply.body
        await eventually(lambda: a_node.proc.poll() is not None, 20)
        a_node.proc = None
        assert "0 request(s) and 1 call(s) from other nodes still in flight after 1.0s" \
            in a_node.log()
    finally:
        if sim is not None:
            await sim.stop()
        problems = cluster.stop()
    assert not problems, "%s\n%s" % (problems, cluster.logs())
