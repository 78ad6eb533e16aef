"""
Alarms in a cluster of two real dashd nodes on one PostgreSQL and Redis: a
rule made on one node is evaluated by the node holding the device, the
alarm is raised once (one notification, one webhook delivery) and cleared
by whichever node holds the device next.
"""

from __future__ import annotations

import re
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.web import server as web_server

from cluster_support import TestCluster
from support import Client, connect_device, eventually, subscribe
from test_alarms_e2e import Receiver, verify

CONFIG = {
    "alarms": {"refresh_interval": 0.3},
    "webhooks": {"allow_http": True, "allowed_networks": ["127.0.0.0/8"], "timeout": 2.0,
                 "retry_delay": 0.2},
}


async def _rules_known(client: Client) -> int:
    text = (await client.get("/metrics", key=None)).raw.decode()
    m = re.search(r"^dashd_alarm_rules (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else 0


@pytest_twisted.ensureDeferred
async def test_raised_once_by_the_node_holding_the_device(tmp_path):
    recv = Receiver()
    port = reactor.listenTCP(0, web_server.Site(recv), interface="127.0.0.1")
    cluster = TestCluster(str(tmp_path), nodes=2, config=CONFIG)
    node0, node1 = cluster.nodes
    devices: list[Any] = []
    sub = None
    try:
        cluster.start()
        a0, a1 = Client(node0, cluster.admin_key), Client(node1, cluster.admin_key)
        hook = (await a1.post("/api/v2/webhooks", {
            "url": "http://127.0.0.1:%d/cluster" % port.getHost().port})).body
        device_id, token = await a0.register("cold-room")
        reply = await a0.post("/api/v2/alarm-rules", {
            "name": "cold room warm", "severity": "major",
            "condition": {"kind": "threshold", "key": "temp", "above": 8, "clear": 5}})
        assert reply.status == 201, reply
        # Node 1 has read the rule (and node 0 the webhook).
        await eventually(lambda: _rules_known(a1))
        sub = await subscribe(node0, cluster.admin_key)
        # The device on node 1.
        device = await connect_device(node1, token)
        devices.append(device)
        await device.report({"temp": 10})
        raised = await sub.next(lambda e: e["name"] == "alarm.raised")
        assert raised["id"] == device_id
        await device.report({"temp": 12})
        await device.report({"temp": 4})
        await sub.next(lambda e: e["name"] == "alarm.cleared")
        sub.never(lambda e: e["name"] == "alarm.raised" and e["data"]["id"] !=
                  raised["data"]["id"], "a second alarm")
        assert len(sub.matching(lambda e: e["name"] == "alarm.raised")) == 1
        # Raised again; then the device moves to node 0, which clears it
        # (it reads the active alarm from the store).
        await device.report({"temp": 9})
        again = await sub.next(lambda e: e["name"] == "alarm.raised")
        await device.stop()
        device = await connect_device(node0, token)
        devices.append(device)
        await device.report({"temp": 9.5})  # still high: nothing new
        await device.report({"temp": 3})
        cleared = await sub.next(lambda e: e["name"] == "alarm.cleared")
        assert cleared["data"]["id"] == again["data"]["id"]
        assert len(sub.matching(lambda e: e["name"] == "alarm.raised")) == 2
        # The webhook (made on node 1) heard each once, from whichever node.
        await eventually(lambda: len(recv.got("/cluster")) == 4)
        kinds = [d["json"]["kind"] for d in recv.got("/cluster")]
        assert kinds == ["alarm.raised", "alarm.cleared", "alarm.raised", "alarm.cleared"]
        for d in recv.got("/cluster"):
            verify(hook["secret"], d)
        listed = (await a1.get("/api/v2/alarms?device=" + device_id)).body
        assert [a["state"] for a in listed] == ["cleared", "cleared"]
    finally:
        if sub is not None:
            sub.close()
        for device in devices:
            await device.stop()
        problems = cluster.stop()
        await port.stopListening()
    assert not problems, problems
