"""
Issue 19 in cluster mode (two real dashd nodes on PostgreSQL and Redis): a
dashboard session minted on one node works on the other, and signing out or
revoking its key on one ends it on both; data a device reports through one
node is charted (time-range buckets) through the other.
"""

from __future__ import annotations

from typing import Iterator

import pytest
import pytest_twisted

from cluster_support import TestCluster
from support import SECRETS, Client, connect_device, device_online, eventually, within
from test_sessions import browser, mint, new_key

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = TestCluster(str(tmp_path_factory.mktemp("cluster")))
    c.start()
    yield c
    problems = c.stop()
    assert not problems, "%s\n%s" % (problems, c.logs())


@pytest_twisted.ensureDeferred
async def test_a_session_works_on_every_node_and_ends_on_every_node(cluster: TestCluster):
    a = Client(cluster.nodes[0], cluster.admin_key)
    _, session, csrf = await mint(a)
    for node in cluster.nodes:
        client, headers = browser(node, session, csrf)
        reply = await client.get("/api/v2/whoami", headers=headers)
        assert reply.status == 200, reply
    # Signing out on the first node: the second (which may trust what it
    # found for a few seconds) refuses it soon.
    client, headers = browser(cluster.nodes[0], session, csrf)
    assert (await client.delete("/api/v2/session", headers=headers)).body == {"ended": True}
    other, headers = browser(cluster.nodes[1], session, csrf)

    async def ended() -> bool:
        return (await other.get("/api/v2/whoami", headers=headers)).status == 401

    await eventually(ended, 15, 0.5)
    # Revoking the key on one node ends its sessions on the other.
    key_id, secret = await new_key(a, kind="admin")
    _, session, csrf = await mint(Client(cluster.nodes[1], secret))
    other, headers = browser(cluster.nodes[1], session, csrf)
    assert (await other.get("/api/v2/whoami", headers=headers)).status == 200
    assert (await a.delete("/api/v2/keys/" + key_id)).status == 200

    async def revoked() -> bool:
        return (await other.get("/api/v2/whoami", headers=headers)).status == 401

    await eventually(revoked, 15, 0.5)


@pytest_twisted.ensureDeferred
async def test_data_reported_through_one_node_is_charted_through_the_other(
        cluster: TestCluster):
    a = Client(cluster.nodes[0], cluster.admin_key)
    b = Client(cluster.nodes[1], cluster.admin_key)
    device_id, token = await a.register("cluster-chart")
    SECRETS.add(token)
    reply = await a.post("/api/v2/devices/" + device_id, {"shadow": {"tags": {"save": ["temp"]}}})
    assert reply.status == 200, reply
    sim = await connect_device(cluster.nodes[0], token)
    try:
        await device_online(a, device_id)
        for i in range(4):
            await within(sim.report({"temp": 10 + i}))
        reply = await b.get("/api/v2/devices/%s/data?from=-3600&bucket=3600" % device_id)
        assert reply.status == 200, reply
        [series] = reply.body["series"]
        assert (sum(series["count"]), min(series["min"]), max(series["max"])) == (4, 10, 13)
    finally:
        await sim.stop()
