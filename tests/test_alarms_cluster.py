"""
Alarms in a cluster of two real dashd nodes on one PostgreSQL and Redis: a
rule made on one node is evaluated by the node holding the device, the
alarm is raised once (one notification, one webhook delivery) and cleared
by whichever node holds the device next.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.web import server as web_server

from cluster_support import NODE_TIMEOUT, TestCluster
from support import Client, connect_device, device_online, eventually, merge, sleep, subscribe
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


@pytest_twisted.ensureDeferred
async def test_a_dead_nodes_devices_offline_rules_run_on_a_survivor(tmp_path):
    """Node 1 is killed with its device: node 0, which finds it dead, starts
    the device's offline timer (it is not heard of again) and raises."""
    cluster = TestCluster(str(tmp_path), nodes=2, config=CONFIG)
    node0, node1 = cluster.nodes
    device = sub = None
    try:
        cluster.start()
        a0 = Client(node0, cluster.admin_key)
        device_id, token = await a0.register("pump")
        other_id, _ = await a0.register("never connected")
        reply = await a0.post("/api/v2/alarm-rules", {
            "name": "pump gone", "severity": "critical", "where": 'name = "pump"',
            "condition": {"kind": "offline", "seconds": 1}})
        assert reply.status == 201, reply
        sub = await subscribe(node0, cluster.admin_key)
        device = await connect_device(node1, token)
        await device_online(a0, device_id)
        await device.report({"flow": 3})
        # Made once the device is on node 1 (node 0 leaves it to node 1).
        reply = await a0.post("/api/v2/alarm-rules", {
            "name": "pump silent", "severity": "minor", "where": 'name = "pump"',
            "condition": {"kind": "stale", "key": "flow", "seconds": 4}})
        assert reply.status == 201, reply
        await sleep(1.5)
        node1.kill9()
        killed = time.monotonic()
        offline = await sub.next(lambda e: e["id"] == device_id and e["name"] == "offline",
                                 seconds=NODE_TIMEOUT + 5)
        assert "stopped answering" in offline["data"]["reason"]
        raised = await sub.next(lambda e: e["id"] == device_id and
                                e["name"] == "alarm.raised" and
                                e["data"]["rule"] == "pump gone", seconds=5)
        assert "offline for more than 1 s" in raised["data"]["message"]
        assert time.monotonic() - killed < NODE_TIMEOUT + 4
        # Its stale key too, whose timer died with node 1.
        [silent] = await eventually(lambda: sub.matching(
            lambda e: e["id"] == device_id and e["name"] == "alarm.raised" and
            e["data"]["rule"] == "pump silent"), seconds=6)
        assert "flow not reported" in silent["data"]["message"]
        listed = (await a0.get("/api/v2/alarms?state=active&device=" + device_id)).body
        assert sorted(a["severity"] for a in listed) == ["critical", "minor"]
        await sleep(1.5)
        assert len(sub.matching(lambda e: e["name"] == "alarm.raised")) == 2
        assert (await a0.get("/api/v2/alarms?device=" + other_id)).body == []
    finally:
        if sub is not None:
            sub.close()
        if device is not None:
            await device.stop()
        problems = cluster.stop()
    assert not problems, problems


@pytest_twisted.ensureDeferred
async def test_rule_and_webhook_changes_reach_the_other_node_at_once(tmp_path):
    """With the poll far away (60 s), a rule made, changed and deleted on
    node 0 applies on node 1 within a second: it is pushed over the bus."""
    recv = Receiver()
    port = reactor.listenTCP(0, web_server.Site(recv), interface="127.0.0.1")
    cluster = TestCluster(str(tmp_path), nodes=2,
                          config=merge(CONFIG, {"alarms": {"refresh_interval": 60}}))
    node0, node1 = cluster.nodes
    device = sub = None
    try:
        cluster.start()
        a0, a1 = Client(node0, cluster.admin_key), Client(node1, cluster.admin_key)
        device_id, token = await a0.register("boiler")
        device = await connect_device(node1, token)
        await device_online(a0, device_id)
        sub = await subscribe(node0, cluster.admin_key)
        # A webhook made on node 0 is known on node 1 (which raises).
        hook = (await a0.post("/api/v2/webhooks", {
            "url": "http://127.0.0.1:%d/push" % port.getHost().port,
            "events": ["alarm.raised"]})).body
        reply = await a0.post("/api/v2/alarm-rules", {
            "name": "boiler hot", "severity": "major",
            "condition": {"kind": "threshold", "key": "temp", "above": 90, "clear": 80}})
        assert reply.status == 201, reply
        rule = reply.body
        made = time.monotonic()
        await eventually(lambda: _rules_known(a1), seconds=1)
        assert time.monotonic() - made < 1.0
        await device.report({"temp": 95})
        first = await sub.next(lambda e: e["name"] == "alarm.raised", seconds=3)
        await eventually(lambda: recv.got("/push"), seconds=3)
        # Cleared by hand on node 0: node 1 looks at the condition afresh
        # (the next high report raises again).
        cleared = await a0.post("/api/v2/alarms/%s/clear" % first["data"]["id"])
        assert cleared.status == 200, cleared
        await sleep(0.5)
        await device.report({"temp": 96})
        again = await sub.next(lambda e: e["name"] == "alarm.raised" and
                               e["data"]["id"] != first["data"]["id"], seconds=3)
        # A changed threshold applies there at once too.
        changed = await a0.post("/api/v2/alarm-rules/" + rule["id"], {
            "condition": {"kind": "threshold", "key": "temp", "above": 100, "clear": 99}})
        assert changed.status == 200, changed
        await sub.next(lambda e: e["name"] == "alarm.cleared" and
                       e["data"]["id"] == again["data"]["id"], seconds=3)
        await sleep(1.0)
        await device.report({"temp": 97})  # below the new threshold
        await device.report({"temp": 101})
        third = await sub.next(lambda e: e["name"] == "alarm.raised" and
                               e["data"]["id"] not in (first["data"]["id"],
                                                       again["data"]["id"]), seconds=3)
        assert "above 100" in third["data"]["message"]
        # Deleted on node 0: node 1 stops evaluating it at once.
        assert (await a0.delete("/api/v2/alarm-rules/" + rule["id"])).status == 200
        async def forgotten() -> bool:
            return await _rules_known(a1) == 0

        await eventually(forgotten, seconds=1)
        await eventually(lambda: len(recv.got("/push")) == 3, seconds=3)
        assert [d["json"]["kind"] for d in recv.got("/push")] == ["alarm.raised"] * 3
        verify(hook["secret"], recv.got("/push")[0])
    finally:
        if sub is not None:
            sub.close()
        if device is not None:
            await device.stop()
        problems = cluster.stop()
        await port.stopListening()
    assert not problems, problems


@pytest_twisted.ensureDeferred
async def test_webhook_deliveries_are_shown_for_the_cluster(tmp_path):
    """Each node delivers what happened on it; GET /webhooks/:id on any node
    shows every node's deliveries (counts summed, last ones merged)."""
    recv = Receiver()
    port = reactor.listenTCP(0, web_server.Site(recv), interface="127.0.0.1")
    cluster = TestCluster(str(tmp_path), nodes=2, config=CONFIG)
    node0, node1 = cluster.nodes
    try:
        cluster.start()
        a0, a1 = Client(node0, cluster.admin_key), Client(node1, cluster.admin_key)
        recv.script["/shown"] = [500]
        hook = (await a0.post("/api/v2/webhooks", {
            "url": "http://127.0.0.1:%d/shown" % port.getHost().port})).body
        # One test event sent by each node (the one the request came to).
        ids = [(await a0.post("/api/v2/webhooks/%s/test" % hook["id"])).body["delivery"]]
        await eventually(lambda: len(recv.got("/shown")) == 2, seconds=5)  # 500, then 200
        ids.append((await a1.post("/api/v2/webhooks/%s/test" % hook["id"])).body["delivery"])
        await eventually(lambda: len(recv.got("/shown")) == 3, seconds=5)

        async def shown(client: Client) -> dict[str, Any] | None:
            view = (await client.get("/api/v2/webhooks/" + hook["id"])).body["deliveries"]
            return view if view["delivered"] == 2 else None

        for client in (a0, a1):
            view = await eventually(lambda c=client: shown(c), seconds=3)
            assert view["failed"] == 0 and view["backlog"] == 0 and "partial" not in view
            assert [(d["id"], d["status"]) for d in view["last"]] == [
                (ids[1], 200), (ids[0], 200), (ids[0], 500)]
        listed = (await a1.get("/api/v2/webhooks")).body
        assert [h["deliveries"]["delivered"] for h in listed if h["id"] == hook["id"]] == [2]
        # Deleted: its figures go too.
        assert (await a1.delete("/api/v2/webhooks/" + hook["id"])).status == 200
        import redis
        client = redis.Redis.from_url(cluster.redis_url)
        try:
            await eventually(lambda: not client.exists(
                "%s:webhook:%s" % (cluster.namespace, hook["id"])), seconds=3)
        finally:
            client.close()
    finally:
        problems = cluster.stop()
        await port.stopListening()
    assert not problems, problems
