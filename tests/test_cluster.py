"""
Cluster mode with two real dashd nodes on the machine's PostgreSQL and
Redis (a database and a Redis namespace of this module's own): a device
held by one node is reached, watched and changed through the other.

The faults (a node killed, Redis restarted, PostgreSQL away) are in
tests/test_cluster_faults.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from cluster_support import TestCluster
from support import (
    SECRETS,
    TWISTD,
    Client,
    connect_device,
    device_online,
    eventually,
    sleep,
    subscribe,
    within,
    write_toml,
)

DASHCTL = os.path.join(os.path.dirname(sys.executable), "dashctl")

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    c = TestCluster(str(tmp_path_factory.mktemp("cluster")))
    c.start()
    yield c
    problems = c.stop()
    assert not problems, "%s\n%s" % (problems, c.logs())


@pytest.fixture
def a(cluster: TestCluster) -> Client:
    return Client(cluster.nodes[0], cluster.admin_key)


@pytest.fixture
def b(cluster: TestCluster) -> Client:
    return Client(cluster.nodes[1], cluster.admin_key)


def rpc(device_id: str, method: str, query: str = "") -> str:
    return "/api/v2/devices/%s/rpc/%s%s" % (device_id, method, query)


@pytest_twisted.ensureDeferred
async def test_a_call_on_one_node_reaches_the_device_on_the_other(cluster, a, b):
    device_id, token = await a.register("held-by-a")
    sim = await connect_device(cluster.nodes[0], token)
    try:
        # Both nodes see it online, whichever holds it.
        await device_online(a, device_id)
        await device_online(b, device_id)

        info = await b.get(rpc(device_id, "Sys.GetInfo"))
        assert info.status == 200, info
        assert info.body["mac"] == sim.mac
        toggled = await b.post(rpc(device_id, "GPIO.Toggle"), {"pin": 4})
        assert (toggled.status, toggled.body) == (200, {"value": 1})
        assert sim.pins[4] == 1
        echo = await b.post(rpc(device_id, "Sim.Echo"), {"n": None, "s": "é", "l": [1, 2.5]})
        assert echo.body == {"n": None, "s": "é", "l": [1, 2.5]}
        # The frame reached the device addressed to its own src.
        request = [f for f in sim.frames if f.get("method") == "GPIO.Toggle"][0]
        assert request["dst"] == sim.src

        # Errors stay what they are on one node: the device's own error...
        failed = await b.post(rpc(device_id, "Sim.Fail"), {"code": 42, "message": "nope"})
        assert failed.status == 502
        assert failed.error == {"code": 42, "message": "nope"}
        # ...a method it does not have...
        missing = await b.get(rpc(device_id, "No.Such"))
        assert missing.status == 502 and missing.error["code"] == 404
        # ...and a device that does not answer in time.
        slow = await b.post(rpc(device_id, "Sim.Sleep", "?timeout=1"), {"seconds": 3})
        assert slow.status == 504
        assert "did not answer Sim.Sleep within 1 s" in slow.error["message"]

        # Many calls at once, across nodes, each gets its own answer.
        replies = await within(gatherResults([
            Deferred.fromCoroutine(b.post(rpc(device_id, "Sim.Echo"), {"i": i}))
            for i in range(20)
        ]), 20)
        assert [r.body for r in replies] == [{"i": i} for i in range(20)]
    finally:
        await sim.stop()

    # Offline: answered at once, from either node.
    await device_online(b, device_id, False)
    for client in (a, b):
        reply = await within(client.get(rpc(device_id, "Sys.GetInfo")), 3)
        assert reply.status == 503
        assert reply.error["message"] == "device %s is offline" % device_id
    reply = await b.get(rpc("dnosuchdevice0", "Sys.GetInfo"))
    assert reply.status == 404


@pytest_twisted.ensureDeferred
async def test_too_many_calls_in_flight_across_nodes_get_429(cluster, a, b):
    device_id, token = await a.register()
    sim = await connect_device(cluster.nodes[0], token)
    try:
        await device_online(b, device_id)
        calls = [Deferred.fromCoroutine(b.post(rpc(device_id, "Sim.Sleep", "?timeout=15"),
                                               {"seconds": 2}))
                 for _ in range(70)]  # device.max_calls_in_flight is 64
        replies = await within(gatherResults(calls), 30)
        statuses = sorted(r.status for r in replies)
        assert statuses == [200] * 64 + [429] * 6, statuses
        busy = [r for r in replies if r.status == 429][0]
        assert busy.headers.getRawHeaders("retry-after") == ["1"]
        assert "already has 64 calls in flight" in busy.error["message"]
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_call_in_flight_fails_at_once_when_the_device_goes(cluster, a, b):
    device_id, token = await a.register()
    sim = await connect_device(cluster.nodes[0], token, reconnect=False)
    await device_online(b, device_id)
    call = Deferred.fromCoroutine(b.post(rpc(device_id, "Sim.Sleep", "?timeout=20"),
                                         {"seconds": 15}))
    await eventually(lambda: any(f.get("method") == "Sim.Sleep" for f in sim.frames))
    sim.drop()
    reply = await within(call, 5)
    assert reply.status == 503
    assert "disconnected before answering Sim.Sleep" in reply.error["message"]


@pytest_twisted.ensureDeferred
async def test_notifications_from_every_node_reach_subscribers_on_every_node(cluster, a, b):
    device_id, token = await a.register()
    # A customer's restricted key, used on node B: sees only its device,
    # only the allowed events, only the readable keys.
    created = await a.post("/api/v2/keys", {"kind": "restricted", "scope": {"devices": {
        device_id: {"read": ["temp"], "write": [], "rpc": []}}}})
    assert created.status == 200, created
    SECRETS.add(created.body["key"])
    other_id, other_token = await b.register()
    on_b = await subscribe(cluster.nodes[1], cluster.admin_key)
    customer = await subscribe(cluster.nodes[1], created.body["key"])
    on_a = await subscribe(cluster.nodes[0], cluster.admin_key)
    mine = lambda name: lambda e: e["id"] == device_id and e["name"] == name  # noqa: E731
    try:
        sim = await connect_device(cluster.nodes[0], token)
        assert (await on_b.next(mine("online")))["data"] is None
        assert (await customer.next(lambda e: e["id"] == device_id))["name"] == "online"
        await on_b.next(mine("rpc.out.Heartbeat"))
        sim.notify("MyStat", {"t": 1})
        assert (await on_b.next(mine("rpc.out.MyStat")))["data"] == {"t": 1}

        # A call made on B to the device on A: announced on both nodes.
        await b.post(rpc(device_id, "GPIO.Toggle"), {"pin": 1})
        assert (await on_a.next(mine("rpc.in.GPIO.Toggle")))["data"] == {"pin": 1}
        assert (await on_b.next(mine("rpc.in.GPIO.Toggle")))["data"] == {"pin": 1}

        # A shadow change reported through A reaches B's subscribers,
        # filtered for the customer.
        await within(sim.report({"temp": 21, "secret": "x"}))
        update = await on_b.next(lambda e: e["id"] == device_id and e["name"] == "shadow.update"
                                 and "temp" in e["data"]["state"]["reported"])
        assert update["data"]["state"]["reported"]["secret"] == "x"
        seen = await customer.next(lambda e: e["name"] == "shadow.update"
                                   and "temp" in e["data"]["state"]["reported"])
        assert seen["data"]["state"]["reported"] == {"temp": 21}

        # An event from a device on B reaches A's subscriber, and never the
        # customer, who may not see that device (of its own account).
        other = await connect_device(cluster.nodes[1], other_token)
        assert (await on_a.next(lambda e: e["id"] == other_id))["name"] == "online"
        await other.stop()
        await on_b.next(lambda e: e["id"] == other_id and e["name"] == "offline")
        # A change published by B after those: once the customer, on B, has
        # it, it has everything B published before it.
        reply = await b.post("/api/v2/devices/" + device_id,
                             {"shadow": {"state": {"desired": {"temp": 5}}}})
        assert reply.status == 200, reply
        await customer.next(lambda e: e["name"] == "shadow.update"
                            and e["data"]["state"]["desired"] == {"temp": 5})
        await sim.stop()
        assert (await on_b.next(mine("offline")))["data"]["reason"]
        await customer.next(lambda e: e["id"] == device_id and e["name"] == "offline")
        # Everything the customer received, not only what it waited for.
        customer.never(lambda e: e["id"] != device_id, "events of a device out of its scope")
        customer.never(lambda e: e["name"] not in ("online", "offline", "shadow.update"),
                       "events a restricted key may not see")
    finally:
        for s in (on_a, on_b, customer):
            s.close()


@pytest_twisted.ensureDeferred
async def test_desired_changed_on_one_node_reaches_the_device_through_the_other(cluster, a, b):
    device_id, token = await a.register()
    sim = await connect_device(cluster.nodes[0], token)
    try:
        await device_online(b, device_id)
        delta = sim.wait_frame(lambda f: f.get("method") == "Shadow.Delta")
        reply = await b.post("/api/v2/devices/" + device_id,
                             {"shadow": {"state": {"desired": {"fan": {"speed": 3}}}}})
        assert reply.status == 200
        frame = await within(delta)
        assert frame["params"]["state"] == {"fan": {"speed": 3}}
        assert frame["params"]["version"] == reply.body["shadow"]["version"]

        async def settled() -> bool:
            view = await b.device(device_id)
            return view["shadow"]["state"]["delta"] == {}

        await eventually(settled)
        assert (await b.device(device_id))["shadow"]["state"]["reported"]["fan"] == {"speed": 3}
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_second_connection_on_another_node_replaces_the_first(cluster, a, b):
    device_id, token = await a.register()
    sub = await subscribe(cluster.nodes[0], cluster.admin_key)
    first = await connect_device(cluster.nodes[0], token, reconnect=False)
    try:
        await device_online(b, device_id)
        closed = first.wait_closed()
        second = await connect_device(cluster.nodes[1], token, reconnect=False)
        await within(closed, 5)
        assert first.close_code == 4000
        assert first.close_reason == "replaced by a new connection on another node"
        # Calls from either node reach the new connection, on B.
        for client in (a, b):
            reply = await client.post(rpc(device_id, "GPIO.Toggle"), {"pin": 9})
            assert reply.status == 200, reply
        assert second.pins[9] == 0 and 9 not in first.pins
        view = await a.device(device_id)
        assert view["online"] is True
        # No offline between the two: the device never was.
        events = sub.received
        assert [e["name"] for e in events if e["id"] == device_id
                and e["name"] in ("online", "offline")] == ["online", "online"]

        # And back to A: B's connection is the one closed now.
        closed = second.wait_closed()
        third = await connect_device(cluster.nodes[0], token, reconnect=False)
        await within(closed, 5)
        assert second.close_code == 4000
        reply = await b.post(rpc(device_id, "Sim.Echo"), {"x": 3})
        assert reply.body == {"x": 3}
        await third.stop()
    finally:
        sub.close()
        await first.stop()
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_two_connections_at_the_same_moment_leave_exactly_one(cluster, a, b):
    """Whatever order Redis puts two simultaneous attaches in, both nodes
    agree: one connection stays, the other is closed with 4000."""
    from dashd.simulator import SimulatedDevice
    from twisted.internet import reactor

    device_id, token = await a.register()
    for _ in range(5):
        sims = [SimulatedDevice(node.device_url, token, reactor, reconnect=False).start()
                for node in cluster.nodes]
        await within(gatherResults([s.wait_open() for s in sims], consumeErrors=True), 10)

        async def settled() -> bool:
            return sum(1 for s in sims if s.online) == 1

        await eventually(settled, seconds=5)
        await sleep(0.3)  # and it stays so
        (survivor,) = [s for s in sims if s.online]
        (loser,) = [s for s in sims if not s.online]
        assert loser.close_code == 4000
        for client in (a, b):
            reply = await client.post(rpc(device_id, "GPIO.Toggle"), {"pin": 1})
            assert reply.status == 200, reply
        assert survivor.pins[1] == 0 and 1 not in loser.pins
        await survivor.stop()
        await device_online(a, device_id, False)
        await device_online(b, device_id, False)


@pytest_twisted.ensureDeferred
async def test_revoking_a_key_on_one_node_works_on_every_node(cluster, a, b):
    created = await a.post("/api/v2/keys", {"name": "short-lived", "kind": "read-only"})
    secret = created.body["key"]
    SECRETS.add(secret)
    user_on_b = Client(cluster.nodes[1], secret)
    assert (await user_on_b.get("/api/v2/devices")).status == 200  # now cached on B
    stream = await subscribe(cluster.nodes[1], secret)
    reply = await a.delete("/api/v2/keys/" + created.body["id"])
    assert reply.status == 200
    await within(stream.closed, 3)
    assert stream.close_code == 4001
    # Not after B's cache expires: at once.
    reply = await within(user_on_b.get("/api/v2/devices"), 2)
    assert reply.status == 401 and reply.error["message"] == "unknown API key"


@pytest_twisted.ensureDeferred
async def test_a_ticket_made_on_one_node_opens_the_stream_on_the_other_once(cluster, a, b):
    from support import raw_handshake

    reply = await a.post("/api/v2/notify/ticket")
    assert reply.status == 200, reply
    ticket = reply.body["ticket"]
    SECRETS.add(ticket)
    stream = await subscribe(cluster.nodes[1], "", ticket=ticket)
    stream.close()
    for node in cluster.nodes:
        reply = await raw_handshake(node, "/api/v2/notify?ticket=" + ticket)
        assert reply.status == 401 and "unknown, used or expired ticket" in reply.error["message"]


@pytest_twisted.ensureDeferred
async def test_deleting_or_rotating_on_one_node_disconnects_the_device_on_the_other(
        cluster, a, b):
    rotated_id, rotated_token = await a.register()
    deleted_id, deleted_token = await a.register()
    rotated = await connect_device(cluster.nodes[0], rotated_token, reconnect=False)
    deleted = await connect_device(cluster.nodes[0], deleted_token, reconnect=False)
    await device_online(b, rotated_id)
    await device_online(b, deleted_id)

    closed = rotated.wait_closed()
    reply = await b.post("/api/v2/devices/%s/token" % rotated_id)
    assert reply.status == 200
    SECRETS.add(reply.body["token"])
    await within(closed, 5)
    assert rotated.close_code == 4003

    closed = deleted.wait_closed()
    reply = await b.delete("/api/v2/devices/" + deleted_id)
    assert reply.status == 200
    await within(closed, 5)
    assert deleted.close_code == 4004
    await device_online(a, rotated_id, False)


@pytest_twisted.ensureDeferred
async def test_concurrent_shadow_writes_through_both_nodes_lose_nothing(cluster, a, b):
    device_id, token = await a.register()
    sim = await connect_device(cluster.nodes[1], token, implements_delta=False)
    try:
        await device_online(a, device_id)
        writes = []
        for i in range(15):
            writes.append(Deferred.fromCoroutine(a.post(
                "/api/v2/devices/" + device_id, {"shadow": {"tags": {"a%d" % i: i}}})))
            writes.append(Deferred.fromCoroutine(b.post(
                "/api/v2/devices/" + device_id, {"shadow": {"state": {"desired": {"b%d" % i: i}}}})))
            writes.append(sim.call("Dash.Shadow.Update", {"state": {"reported": {"r%d" % i: i}}}))
        results = await within(gatherResults(writes), 30)
        rest = [r for r in results if hasattr(r, "status")]
        assert all(r.status == 200 for r in rest)
        view = await b.device(device_id)
        shadow = view["shadow"]
        assert all(shadow["tags"]["a%d" % i] == i for i in range(15))
        assert all(shadow["state"]["desired"]["b%d" % i] == i for i in range(15))
        assert all(shadow["state"]["reported"]["r%d" % i] == i for i in range(15))
        # Every write is one version: none overwrote another.
        before = 1 if view["shadow"]["state"]["reported"].get("ota") else 0
        assert shadow["version"] == 45 + before
    finally:
        await sim.stop()


def dashctl(config_path: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DASHCTL, "--config", config_path, *args], capture_output=True,
                          text=True, timeout=60)


@pytest_twisted.ensureDeferred
async def test_dashctl_on_one_node_cuts_streams_and_devices_on_the_other(cluster, a, b):
    key = await a.post("/api/v2/keys", {"name": "watcher", "kind": "read-only"})
    SECRETS.add(key.body["key"])
    stream = await subscribe(cluster.nodes[1], key.body["key"])
    device_id, token = await a.register()
    sim = await connect_device(cluster.nodes[1], token, reconnect=False)
    await device_online(a, device_id)

    # Why each connection ended, as dashd says it (the close frame itself
    # may be lost to a busy machine's closing handshake timeout).
    watcher = await subscribe(cluster.nodes[0], cluster.admin_key)
    offline = lambda e: e["name"] == "offline" and e["id"] == device_id  # noqa: E731

    node0 = cluster.nodes[0].config_path
    revoked = dashctl(node0, "keys", "revoke", key.body["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert await within(stream.closed, 15) == (4001, "API key revoked")

    closed = sim.wait_closed()
    rotated = dashctl(node0, "--json", "devices", "rotate-token", device_id)
    assert rotated.returncode == 0, rotated.stderr
    SECRETS.add(json.loads(rotated.stdout)["token"])
    await within(closed, 15)
    assert (await watcher.next(offline))["data"] == {"reason": "device token rotated"}

    sim = await connect_device(cluster.nodes[1], json.loads(rotated.stdout)["token"],
                               reconnect=False)
    await device_online(a, device_id)
    closed = sim.wait_closed()
    deleted = dashctl(node0, "devices", "delete", device_id)
    assert deleted.returncode == 0, deleted.stderr
    await within(closed, 15)
    assert (await watcher.next(offline))["data"] == {"reason": "device deleted"}
    watcher.close()


def test_without_a_node_here_dashctl_refuses_what_other_nodes_must_cut(cluster, tmp_path):
    """No node runs on this machine: the revocation could not reach the
    streams other nodes hold, so dashctl says so instead of half doing it."""
    config = tmp_path / "elsewhere.toml"
    write_toml(str(config), {"data_dir": str(tmp_path / "data"),
                             "store": {"url": cluster.store_url},
                             "cluster": {"redis_url": cluster.redis_url,
                                         "namespace": cluster.namespace}})
    for command in (["keys", "revoke", "knope"], ["devices", "delete", "dnope"],
                    ["devices", "rotate-token", "dnope"]):
        result = dashctl(str(config), *command)
        assert result.returncode == 1
        assert ("dashctl: error: no dashd runs on this machine, and this store is shared by a "
                "cluster: other nodes may hold what '%s' must cut; run dashctl where a node "
                "runs\n" % " ".join(command[:2])) == result.stderr
    listed = dashctl(str(config), "--json", "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert cluster.admin_key.split(".")[0] in [k["id"] for k in json.loads(listed.stdout)]


def test_cluster_mode_needs_postgresql(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[cluster]\nredis_url = "redis://127.0.0.1:6379/0"\n')
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "dashd", "--config", str(config),
         "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "cluster.redis_url needs a store the nodes share" in result.stdout + result.stderr


@pytest_twisted.ensureDeferred
async def test_stored_data_is_pulled_by_the_node_holding_the_device(cluster, a, b):
    """mDashStore lines: the node that holds the device pulls them once,
    and every node serves them."""
    device_id, token = await a.register()
    sim = await connect_device(cluster.nodes[1], token, dialect="mdash")
    await device_online(a, device_id)
    for n in range(50):
        sim.store("temperature", {"n": n})

    async def stored() -> list:
        reply = await a.get("/api/v2/devices/%s/data?limit=500&skip=0" % device_id)
        return [p["value"]["n"] for p in reply.body]

    await eventually(lambda: check_len(stored, 50), 20)
    assert sorted(await stored()) == list(range(50))
    await eventually(lambda: sim.files == {}, 10)
    await sim.stop()


async def check_len(read, n: int) -> bool:
    return len(await read()) >= n


@pytest_twisted.ensureDeferred
async def test_a_call_through_another_node_sees_a_change_of_sharing_made_anywhere(
        cluster, a, b):
    """The node a call comes through keeps the record of a device held
    elsewhere (no store read a call): a change of its sharing, made on
    either node, reaches the calls at once."""
    reply = await a.post("/api/v2/accounts", {"name": "sharer"})
    assert reply.status in (200, 201), reply
    owner_key = reply.body["admin_key"]["key"]
    reply = await a.post("/api/v2/accounts", {"name": "shared-to"})
    assert reply.status in (200, 201), reply
    guest_key, guest_id = reply.body["admin_key"]["key"], reply.body["id"]
    SECRETS.update((owner_key, guest_key))
    owner = Client(cluster.nodes[0], owner_key)
    guest_b = Client(cluster.nodes[1], guest_key)
    device_id, token = await owner.register("shared-held-by-a")
    sim = await connect_device(cluster.nodes[0], token)
    try:
        await device_online(Client(cluster.nodes[1], owner_key), device_id)
        assert (await guest_b.post(rpc(device_id, "Sim.Echo"), {"i": 0})).status == 404
        for where, node in (("the holding node", 0), ("the calling node", 1)):
            changer = Client(cluster.nodes[node], owner_key)
            reply = await changer.post("/api/v2/devices/" + device_id, {"shared_with": guest_id})
            assert reply.status == 200, reply
            # Calls through B read the record, and keep it.
            await eventually(lambda: _status(guest_b, device_id, 200), 5)
            for i in range(3):
                echo = await guest_b.post(rpc(device_id, "Sim.Echo"), {"i": i})
                assert (echo.status, echo.body) == (200, {"i": i}), where
            reply = await changer.post("/api/v2/devices/" + device_id, {"shared_with": ""})
            assert reply.status == 200, reply
            if node == 1:
                # Made on B itself: at once.
                assert (await guest_b.post(rpc(device_id, "Sim.Echo"), {})).status == 404
            else:
                # Made on A: once B hears of it.
                await eventually(lambda: _status(guest_b, device_id, 404), 5)
    finally:
        await sim.stop()


async def _status(client: Client, device_id: str, status: int) -> bool:
    return (await client.post(rpc(device_id, "Sim.Echo"), {})).status == status
