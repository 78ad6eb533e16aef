"""
Cluster mode under faults, with real processes: a node killed with
SIGKILL, Redis killed and started again, PostgreSQL stopped and started
again. The Redis and PostgreSQL that these tests stop are private ones
(their own redis-server and initdb'd cluster, on free ports), never the
machine's shared servers.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

import backends
from cluster_support import NODE_TIMEOUT, TestCluster
from lb import Balancer
from support import (
    SECRETS,
    Client,
    connect_device,
    device_online,
    eventually,
    subscribe,
    within,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def rpc(device_id: str, method: str) -> str:
    return "/api/v2/devices/%s/rpc/%s" % (device_id, method)


@pytest_twisted.ensureDeferred
async def test_a_killed_node_s_devices_move_to_another_node(tmp_path):
    cluster = TestCluster(str(tmp_path))
    cluster.start()
    a_node, b_node = cluster.nodes
    lb = Balancer([a_node.port, b_node.port])
    lb_port = lb.listen()
    lb_url = "ws://127.0.0.1:%d/api/v2/rpc" % lb_port
    sims = []
    try:
        b = Client(b_node, cluster.admin_key)
        devices = [await b.register("fleet-%d" % i) for i in range(5)]
        sub = await subscribe(b_node, cluster.admin_key)
        # Every device lands on A (the balancer prefers it while it lives);
        # they come back after a pause long enough to see them offline.
        for device_id, token in devices:
            sim = await connect_device(a_node, token, reconnect_delay=(NODE_TIMEOUT + 4, 8))
            sim.url = lb_url  # where a reconnecting device dials: the balancer
            sims.append(sim)
        for device_id, _ in devices:
            await device_online(b, device_id)

        # Acknowledged writes, from the devices (through A) and from REST (on B).
        acks = await within(gatherResults([
            sim.call("Dash.Shadow.Update", {"state": {"reported": {"n": i}}})
            for i, sim in enumerate(sims)
        ]), 10)
        assert all("version" in ack for ack in acks)
        for i, (device_id, _) in enumerate(devices):
            reply = await b.post("/api/v2/devices/" + device_id,
                                 {"shadow": {"state": {"desired": {"want": i}}}})
            assert reply.status == 200
        first = devices[0][0]
        slow_call = Deferred.fromCoroutine(
            b.post(rpc(first, "Sim.Sleep") + "?timeout=20", {"seconds": 15}))
        await eventually(lambda: any(f.get("method") == "Sim.Sleep" for f in sims[0].frames))

        a_node.kill9()

        # The call in flight fails as soon as B finds A dead, not after 20 s.
        reply = await within(slow_call, NODE_TIMEOUT + 5)
        assert reply.status == 503
        assert "went offline before answering Sim.Sleep" in reply.error["message"], reply
        assert "stopped answering" in reply.error["message"]
        # B shows them offline (and says so on its stream) before they are back.
        offline = await sub.next(lambda e: e["id"] == first and e["name"] == "offline",
                                 seconds=NODE_TIMEOUT + 5)
        assert "stopped answering" in offline["data"]["reason"]
        view = await b.device(first)
        assert view["online"] is False
        assert not any(sim.online for sim in sims)  # not back yet: this was in between

        # They reconnect, through the balancer, to B, and work at once.
        for (device_id, _), sim in zip(devices, sims):
            await within(sim.wait_open(), 15)
            await device_online(b, device_id)
        assert set(lb.connections) == {b_node.port}
        for i, (device_id, _) in enumerate(devices):
            reply = await b.post(rpc(device_id, "Sim.Echo"), {"i": i})
            assert (reply.status, reply.body) == (200, {"i": i})
            view = await b.device(device_id)
            # Nothing acknowledged before the kill is lost.
            assert view["shadow"]["state"]["reported"]["n"] == i
            assert view["shadow"]["state"]["desired"]["want"] == i
        online = await sub.next(lambda e: e["id"] == first and e["name"] == "online")
        assert online["data"] is None
        sub.close()
    finally:
        for sim in sims:
            await sim.stop()
        await lb.stop()
        problems = cluster.stop()
    assert not problems, "%s\n%s" % (problems, cluster.logs())


@pytest_twisted.ensureDeferred
async def test_a_node_stopped_for_maintenance_hands_its_devices_over(tmp_path):
    """SIGTERM (a rolling restart): the devices are told (1001), the other
    node knows at once, and they come back through the balancer."""
    cluster = TestCluster(str(tmp_path))
    cluster.start()
    a_node, b_node = cluster.nodes
    lb = Balancer([a_node.port, b_node.port])
    lb_url = "ws://127.0.0.1:%d/api/v2/rpc" % lb.listen()
    sim = None
    try:
        b = Client(b_node, cluster.admin_key)
        device_id, token = await b.register()
        sim = await connect_device(a_node, token, reconnect_delay=(0.2, 1))
        sim.url = lb_url
        await device_online(b, device_id)
        sub = await subscribe(b_node, cluster.admin_key)
        closed = sim.wait_closed()
        a_node.stop()
        await within(closed, 10)
        assert sim.close_code == 1001
        offline = await sub.next(lambda e: e["id"] == device_id and e["name"] == "offline",
                                 seconds=5)
        assert offline["data"]["reason"]
        await sub.next(lambda e: e["id"] == device_id and e["name"] == "online", seconds=10)
        reply = await b.post(rpc(device_id, "Sim.Echo"), {"back": True})
        assert (reply.status, reply.body) == (200, {"back": True})
        assert lb.connections == [b_node.port]
        sub.close()
    finally:
        if sim is not None:
            await sim.stop()
        await lb.stop()
        problems = cluster.stop()
    assert not problems, "%s\n%s" % (problems, cluster.logs())


@pytest_twisted.ensureDeferred
async def test_the_cluster_recovers_when_redis_restarts(tmp_path):
    redis = backends.PrivateRedis(str(tmp_path))
    redis.start()
    cluster = TestCluster(str(tmp_path), redis_url=redis.url)
    cluster.start()
    a_node, b_node = cluster.nodes
    a = Client(a_node, cluster.admin_key)
    b = Client(b_node, cluster.admin_key)
    sims = []
    try:
        device_id, token = await a.register()
        sim = await connect_device(a_node, token)
        sims.append(sim)
        await device_online(b, device_id)
        assert (await b.get(rpc(device_id, "Sys.GetInfo"))).status == 200
        created = await a.post("/api/v2/keys", {"kind": "read-only"})
        SECRETS.add(created.body["key"])
        stream = await subscribe(b_node, created.body["key"])

        redis.kill()
        # A key revoked on A while Redis is away: B cannot be told now...
        assert (await a.delete("/api/v2/keys/" + created.body["id"])).status == 200
        # Without Redis, B cannot reach A's device: a clear 503 at once, and
        # A's own device carries on through A.
        async def unreachable_from_b() -> bool:
            reply = await within(b.get(rpc(device_id, "Sys.GetInfo")), NODE_TIMEOUT + 3)
            return reply.status == 503
        await eventually(unreachable_from_b, seconds=NODE_TIMEOUT + 5)
        assert (await a.get(rpc(device_id, "Sys.GetInfo"))).status == 200
        reply = await a.post("/api/v2/devices/" + device_id,
                             {"shadow": {"state": {"desired": {"during": 1}}}})
        assert reply.status == 200
        await eventually(lambda: sim.reported.get("during") == 1)
        # A device connecting to B meanwhile is served by B.
        other_id, other_token = await b.register()
        other = await connect_device(b_node, other_token)
        sims.append(other)
        assert (await b.get(rpc(other_id, "Sys.GetInfo"))).status == 200

        redis.start()  # empty: it keeps nothing

        # The nodes resubscribe and announce their devices again by themselves.
        async def routed_again() -> bool:
            r1 = await b.get(rpc(device_id, "Sys.GetInfo"))
            r2 = await a.get(rpc(other_id, "Sys.GetInfo"))
            return r1.status == 200 and r2.status == 200
        await eventually(routed_again, seconds=15, interval=0.2)
        assert (await a.device(other_id))["online"] is True
        assert (await b.device(device_id))["online"] is True
        # ...but once Redis is back, B checks its streams' keys and closes it.
        await within(stream.closed, 10)
        assert stream.close_code == 4001

        # Notifications cross again, and desired changes reach the device.
        sub = await subscribe(b_node, cluster.admin_key)
        sim.notify("AfterRestart", {"ok": True})
        event = await sub.next(lambda e: e["id"] == device_id
                               and e["name"] == "rpc.out.AfterRestart")
        assert event["data"] == {"ok": True}
        sub.close()
        await b.post("/api/v2/devices/" + device_id,
                     {"shadow": {"state": {"desired": {"after": 2}}}})
        await eventually(lambda: sim.reported.get("after") == 2)

        # And a second connection still replaces the first across nodes.
        closed = other.wait_closed()
        moved = await connect_device(a_node, other_token, reconnect=False)
        sims.append(moved)
        await within(closed, 5)
        assert other.close_code == 4000
    finally:
        for s in sims:
            await s.stop()
        problems = cluster.stop()
        redis.kill()
    assert not problems, "%s\n%s" % (problems, cluster.logs())


@pytest_twisted.ensureDeferred
async def test_postgresql_away_gives_clear_errors_and_the_cluster_recovers(tmp_path):
    pg = backends.PrivatePostgres(str(tmp_path))
    pg.init()
    pg.start()
    cluster = None
    sim = None
    try:
        url = backends.create_database(pg.url)
        cluster = TestCluster(str(tmp_path), store_url=url, config={"store": {"timeout": 2.0}})
        cluster.start()
        a_node, b_node = cluster.nodes
        a = Client(a_node, cluster.admin_key)
        b = Client(b_node, cluster.admin_key)
        device_id, token = await a.register()
        sim = await connect_device(a_node, token)
        await device_online(b, device_id)
        pg.stop("immediate")

        # REST, on either node: 503 with a message that says what is wrong,
        # within the store's timeout.
        for client in (a, b):
            started = time.monotonic()
            reply = await within(client.get("/api/v2/devices/" + device_id), 10)
            assert reply.status == 503
            assert "database is unreachable" in reply.error["message"]
            assert reply.headers.getRawHeaders("retry-after") == ["5"]
            assert time.monotonic() - started < 8
        reply = await within(a.post("/api/v2/devices", {"name": "x"}), 10)
        assert reply.status == 503
        # The device: an error reply (nothing acknowledged), not silence,
        # and it stays connected.
        try:
            await within(sim.call("Dash.Shadow.Update", {"state": {"reported": {"lost": 1}}}),
                         10)
            raise AssertionError("a write was acknowledged without a database")
        except Exception as e:
            assert getattr(e, "code", None) is not None, e
            assert "unreachable" in str(e)
        assert sim.online
        # B never read the device's record for a call (it answered 503 then):
        # A, whose connection holds the device, tells it the record.
        reply = await within(b.post(rpc(device_id, "Sim.Echo"), {"via": "b"}), 10)
        assert (reply.status, reply.body) == (200, {"via": "b"}), reply
        # The device's log lines meanwhile wait for the database, in order.
        outage_started = time.time()
        for i in range(5):
            sim.notify("Dash.Log", {"msg": "during the outage %d" % i})

        pg.start()

        async def recovered() -> bool:
            replies = [await c.get("/api/v2/devices/" + device_id) for c in (a, b)]
            return all(r.status == 200 for r in replies)
        await eventually(recovered, seconds=10, interval=0.3)  # within seconds
        ack = await within(sim.call("Dash.Shadow.Update", {"state": {"reported": {"back": 1}}}),
                           10)
        assert "version" in ack
        view = await b.device(device_id)
        assert view["online"] is True
        assert view["shadow"]["state"]["reported"]["back"] == 1
        assert "lost" not in view["shadow"]["state"]["reported"]
        reply = await b.get(rpc(device_id, "Sys.GetInfo"))
        assert reply.status == 200

        async def stored_lines() -> Any:
            reply = await b.post("/api/v2/logs", {"start": 0, "device_id": device_id,
                                                  "limit": 1000})
            lines = [e for e in reply.body["events"] if e["name"] == "rpc.out.Log"]
            return lines if len(lines) == 5 else None
        lines = await eventually(stored_lines, seconds=10, interval=0.3)
        assert [e["data"]["msg"] for e in lines] == ["during the outage %d" % i
                                                     for i in range(5)]
        assert all(outage_started - 1 < e["timestamp"] < time.time() for e in lines)
        metrics = (await Client(b_node, None).get("/metrics", key=None)).raw.decode()
        assert "\ndashd_history_events_lost_total 0.0\n" in metrics
        for node in cluster.nodes:
            log = node.log()
            assert "the database is unreachable" in log and "the database answers again" in log
    finally:
        if sim is not None:
            await sim.stop()
        problems = cluster.stop() if cluster is not None else []
        pg.remove()
    assert not problems, "%s\n%s" % (problems, cluster.logs())


def test_postgresql_away_at_start_stops_the_start_with_a_message(tmp_path):
    import subprocess

    from support import TWISTD

    port = backends.free_port()
    config = tmp_path / "c.toml"
    config.write_text('[store]\nurl = "postgresql://dashd:s3cret@127.0.0.1:%d/dashd"\n'
                      'timeout = 2.0\n' % port)
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "dashd", "--config", str(config),
         "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "cannot open the PostgreSQL store postgresql://dashd:***@127.0.0.1:%d/dashd" % port \
        in output
    assert "s3cret" not in output
    assert "Traceback" not in output
