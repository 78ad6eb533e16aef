"""
Firmware updates in a cluster: an update reaches ``committed`` whichever
node started it and whichever node the device comes back to, and survives
the node that drove the transfer dying while the device reboots. Real
nodes, PostgreSQL and Redis; simulated devices.
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted

from cluster_support import TestCluster
from support import Client, connect_device, device_online, eventually, sleep
from test_ota import make_bin

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


async def ota_state(client: Client, device_id: str, state: str, seconds: float = 20) -> dict:
    async def check():
        ota = (await client.device(device_id))["ota"]
        return ota if ota and ota["state"] in (state, "failed") else None
    ota = await eventually(check, seconds)
    assert ota["state"] == state, ota
    return ota


async def upload(client: Client, device_id: str, path: str, auto_commit: bool) -> dict:
    with open(path, "rb") as f:
        raw = f.read()
    reply = await client.request(
        "POST", "/api/v2/devices/%s/ota?filename=app.bin&auto_commit=%s"
        % (device_id, "true" if auto_commit else "false"),
        raw=raw, headers={"Content-Type": "application/octet-stream"})
    assert reply.status == 202, reply
    return reply.body


def fw_id_of(path: str) -> str:
    with open(path, "rb") as f:
        return "bin-" + hashlib.sha256(f.read()).hexdigest()[:12]


@pytest_twisted.ensureDeferred
async def test_an_update_started_on_another_node_is_committed(tmp_path):
    """Device on A, update through B with auto_commit: the device comes back
    to A with the new firmware, A commits it, and both nodes say
    committed (B's reboot timer does not fail it later)."""
    cluster = TestCluster(str(tmp_path), config={"ota": {"reboot_timeout": 6.0}})
    cluster.start()
    a_node, b_node = cluster.nodes
    sim = None
    try:
        a = Client(a_node, cluster.admin_key)
        b = Client(b_node, cluster.admin_key)
        device_id, token = await b.register()
        sim = await connect_device(a_node, token, dialect="mdash")
        await device_online(b, device_id)
        await eventually(lambda: sim.online and "fw_id" in sim.info)
        fw = make_bin(str(tmp_path / "app.bin"), 30_000 + 3)
        await upload(b, device_id, fw, auto_commit=True)
        status = await ota_state(b, device_id, "committed")
        assert status["fw_id"] == fw_id_of(fw)
        assert sim.ota_committed is True and sim.ota_reboots == 1
        assert (await a.device(device_id))["ota"]["state"] == "committed"
        # Past the reboot timeout: still committed, on both nodes.
        await sleep(7)
        for client in (a, b):
            assert (await client.device(device_id))["ota"]["state"] == "committed"
        reply = await b.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, {"ok": 1})
        assert (reply.status, reply.body) == (200, {"ok": 1})
    finally:
        if sim is not None:
            await sim.stop()
        problems = cluster.stop()
    assert not problems, "%s\n%s" % (problems, cluster.logs())


@pytest_twisted.ensureDeferred
async def test_an_update_survives_the_death_of_the_node_that_drove_it(tmp_path):
    """Device on A, update through B (no auto_commit); B is killed while the
    device reboots: A takes the device back to uncommitted, and a commit
    through A commits it."""
    cluster = TestCluster(str(tmp_path))
    cluster.start()
    a_node, b_node = cluster.nodes
    sim = None
    try:
        a = Client(a_node, cluster.admin_key)
        b = Client(b_node, cluster.admin_key)
        device_id, token = await b.register()
        # It comes back 2-3 s after its reboot: time to kill B meanwhile.
        sim = await connect_device(a_node, token, dialect="mdash", reconnect_delay=(2.5, 3.0))
        await device_online(b, device_id)
        await eventually(lambda: sim.online and "fw_id" in sim.info)
        fw = make_bin(str(tmp_path / "app.bin"), 20_000 + 5)
        await upload(b, device_id, fw, auto_commit=False)
        await eventually(lambda: sim.ota_reboots == 1, 20, 0.05)
        assert not sim.online
        b_node.kill9()

        status = await ota_state(a, device_id, "uncommitted")
        assert status["fw_id"] == fw_id_of(fw)
        assert sim.ota_committed is False
        reply = await a.post("/api/v2/devices/%s/ota/commit" % device_id, None)
        assert reply.status == 200, reply
        assert reply.body["state"] == "committed"
        assert sim.ota_committed is True
        assert (await a.device(device_id))["ota"]["state"] == "committed"
    finally:
        if sim is not None:
            await sim.stop()
        problems = cluster.stop()
    assert not problems, "%s\n%s" % (problems, cluster.logs())
