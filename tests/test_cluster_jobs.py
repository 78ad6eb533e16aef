"""
Fleet jobs in a cluster of two real nodes: one node drives a job (its lease
in PostgreSQL), its calls reach devices held by either node through the
router, and when the driving node dies the other takes the job over and
finishes it, sending nothing twice.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from cluster_support import NODE_TIMEOUT, TestCluster
from support import Client, connect_device, device_online, eventually

pytestmark = pytest.mark.cluster


@pytest_twisted.ensureDeferred
async def test_the_other_node_takes_a_job_over_when_its_driver_dies(tmp_path):
    cluster = TestCluster(str(tmp_path))
    cluster.start()
    nodes = cluster.nodes
    clients = [Client(n, cluster.admin_key) for n in nodes]
    sims = []
    try:
        ids = []
        for i in range(6):
            device_id, token = await clients[0].register("cj-%d" % i)
            # Alternately on each node.
            sim = await connect_device(nodes[i % 2], token,
                                       reconnect_delay=(NODE_TIMEOUT + 1, 4))
            sims.append(sim)
            ids.append(device_id)
            await device_online(clients[0], device_id)
        reply = await clients[1].post("/api/v2/jobs", {
            "name": "across nodes", "target": {"devices": ids}, "concurrency": 1,
            "rate": {"per_minute": 60}, "action": {"type": "rpc", "method": "Sim.Echo",
                                                   "params": {"n": 1}}})
        assert reply.status == 201, reply
        job_id = reply.body["id"]

        async def two_done():
            found = (await clients[0].get("/api/v2/jobs/%s/executions?state=succeeded"
                                          % job_id)).body
            return found if len(found) >= 2 else None

        await eventually(two_done, 15)
        # Calls went to devices held by both nodes, whichever drove the job.
        assert sims[0].methods.count("Sim.Echo") == 1
        assert sims[1].methods.count("Sim.Echo") == 1
        line = "job %s: driven by this node" % job_id
        drivers = [i for i, n in enumerate(nodes) if line in n.log()]
        assert len(drivers) == 1, drivers
        dead, alive = drivers[0], 1 - drivers[0]
        for i, sim in enumerate(sims):
            if i % 2 == dead:
                sim.url = nodes[alive].device_url
        nodes[dead].kill9()

        async def completed():
            body = (await clients[alive].get("/api/v2/jobs/" + job_id)).body
            return body if body["state"] == "completed" else None

        done = await eventually(completed, 60)
        assert line in nodes[alive].log()
        progress = done["progress"]
        assert progress["succeeded"] + progress["failed"] == 6, progress
        # Nothing twice: a call cut off by the kill is lost (failed), never re-sent.
        assert all(s.methods.count("Sim.Echo") <= 1 for s in sims)
        executions = (await clients[alive].get("/api/v2/jobs/%s/executions" % job_id)).body
        for e, sim in zip(executions, sims):
            assert e["device_id"] == ids[executions.index(e)]
            if e["state"] == "succeeded":
                assert sim.methods.count("Sim.Echo") == 1
            else:
                assert e["error"]["message"].startswith("lost: "), e
    finally:
        for sim in sims:
            await sim.stop()
        problems = cluster.stop()
    assert not problems, "%s\n%s" % (problems, cluster.logs())


@pytest_twisted.ensureDeferred
async def test_a_continuous_job_takes_devices_changed_through_either_node(tmp_path):
    cluster = TestCluster(str(tmp_path))
    cluster.start()
    nodes = cluster.nodes
    clients = [Client(n, cluster.admin_key) for n in nodes]
    try:
        reply = await clients[0].post("/api/v2/jobs", {
            "name": "joiners", "target": {"where": 'shadow.tags.run = "ccj"',
                                          "continuous": True},
            "action": {"type": "shadow", "tags": {"seen": True}}})
        assert reply.status == 201, reply
        job_id = reply.body["id"]

        async def driven():
            return [i for i, n in enumerate(nodes)
                    if "job %s: driven by this node" % job_id in n.log()] or None

        (driver,) = await eventually(driven, 10)
        # A device tagged through each node joins as its change is heard of
        # (the job's whole query is read only every 10 minutes).
        joined = []
        for client in (clients[1 - driver], clients[driver]):
            device_id, _ = await client.register()
            reply = await client.post("/api/v2/devices/" + device_id,
                                      {"shadow": {"tags": {"run": "ccj"}}})
            assert reply.status == 200, reply
            joined.append(device_id)

        async def both():
            found = (await clients[0].get("/api/v2/jobs/%s/executions?state=succeeded"
                                          % job_id)).body
            return found if len(found) == 2 else None

        found = await eventually(both, 8)
        assert sorted(e["device_id"] for e in found) == sorted(joined)
        assert (await clients[1].device(joined[0]))["shadow"]["tags"]["seen"] is True
        assert (await clients[1].post("/api/v2/jobs/%s/cancel" % job_id)).status == 200
    finally:
        problems = cluster.stop()
    assert not problems, "%s\n%s" % (problems, cluster.logs())
