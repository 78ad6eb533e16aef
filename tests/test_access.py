"""
Who may do what: every endpoint and the notification stream, for each kind
of key, on the key's own devices, devices shared with it and foreign
devices, and for expired and revoked keys. Every refusal checks its status
and its message.

The cast, on one dashd:
- account A (the operator account) owns ``a_own`` and ``a_shared`` (shared
  with B); keys: ``admin_a``, ``ro_a`` (read-only), ``cust_a`` (restricted to
  ``a_own``: reads temp and led, writes led, calls GPIO.* and Sim.Echo);
- account B owns ``b_own``; keys: ``admin_b``, ``ro_b``;
- ``expired`` and ``revoked`` were admin keys of A.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred

from support import (
    SECRETS,
    Client,
    DashdProcess,
    connect_device,
    device_online,
    raw_handshake,
    sleep,
    subscribe,
    within,
)

CUSTOMER_ACL = {"read": ["temp", "led"], "write": ["led"], "rpc": ["GPIO.*", "Sim.Echo"]}


class World:
    server: DashdProcess
    accounts: dict[str, str]
    keys: dict[str, Client]
    devices: dict[str, str]
    tokens: dict[str, str]
    sims: list[Any]


async def _key(admin: Client, **body: Any) -> Client:
    reply = await admin.post("/api/v2/keys", body)
    assert reply.status == 200, reply
    SECRETS.add(reply.body["key"])
    return Client(admin.server, reply.body["key"])


@pytest.fixture(scope="module")
def world(server: DashdProcess) -> World:
    async def build() -> World:
        w = World()
        w.server = server
        admin_a = Client(server, server.admin_key)
        created = await admin_a.post("/api/v2/accounts", {"name": "customer B"})
        assert created.status == 200, created
        SECRETS.add(created.body["admin_key"]["key"])
        admin_b = Client(server, created.body["admin_key"]["key"])
        w.accounts = {"a": (await admin_a.get("/api/v2/whoami")).body["account_id"],
                      "b": created.body["id"]}
        w.devices, w.tokens = {}, {}
        for name, owner, body in (
            ("a_own", admin_a, {"name": "a_own"}),
            ("a_shared", admin_a, {"name": "a_shared", "shared_with": created.body["id"]}),
            ("b_own", admin_b, {"name": "b_own"}),
        ):
            reply = await owner.post("/api/v2/devices", body)
            assert reply.status == 200, reply
            SECRETS.add(reply.body["token"])
            w.devices[name] = reply.body["id"]
            w.tokens[name] = reply.body["token"]
        w.sims = [await connect_device(server, w.tokens[n]) for n in w.devices]
        for name, device_id in w.devices.items():
            await device_online(admin_b if name == "b_own" else admin_a, device_id)
        await admin_a.post("/api/v2/devices/" + w.devices["a_own"], {"shadow": {
            "state": {"reported": {"temp": 21, "secret": "s3"}, "desired": {"led": 1}},
            "tags": {"billing": "x"}}})
        w.keys = {
            "admin_a": admin_a,
            "ro_a": await _key(admin_a, kind="read-only", name="auditor"),
            "cust_a": await _key(admin_a, kind="restricted", name="customer",
                                 scope={"devices": {w.devices["a_own"]: CUSTOMER_ACL}}),
            "admin_b": admin_b,
            "ro_b": await _key(admin_b, kind="read-only"),
            "expired": await _key(admin_a, name="short", expires=time.time() + 1),
        }
        revoked = await admin_a.post("/api/v2/keys", {"name": "gone"})
        SECRETS.add(revoked.body["key"])
        w.keys["revoked"] = Client(server, revoked.body["key"])
        assert (await admin_a.delete("/api/v2/keys/" + revoked.body["id"])).status == 200
        await sleep(1.2)  # let "expired" expire
        return w

    w = pytest_twisted.blockon(ensureDeferred(build()))
    yield w
    for sim in w.sims:
        pytest_twisted.blockon(sim.stop())


OK = (200, None)
NOT_FOUND = (404, "no such device")
EXPIRED = (401, "has expired")
UNKNOWN = (401, "unknown API key")
READ_ONLY_RPC = (403, "this key is read-only: it may not call methods on devices")
READ_ONLY_SHADOW = (403, "this key is read-only: it may not change the shadow")


def admin_only(what: str, kind: str) -> tuple[int, str]:
    return (403, "only admin keys may %s; this key is %s" % (what, kind))


def owner_only(what: str) -> tuple[int, str]:
    return (403, "may %s" % what)


# (key, device) -> expected (status, message fragment) for reading a device.
READ = {
    ("admin_a", "a_own"): OK, ("admin_a", "a_shared"): OK, ("admin_a", "b_own"): NOT_FOUND,
    ("ro_a", "a_own"): OK, ("ro_a", "a_shared"): OK, ("ro_a", "b_own"): NOT_FOUND,
    ("cust_a", "a_own"): OK, ("cust_a", "a_shared"): NOT_FOUND, ("cust_a", "b_own"): NOT_FOUND,
    ("admin_b", "a_own"): NOT_FOUND, ("admin_b", "a_shared"): OK, ("admin_b", "b_own"): OK,
    ("ro_b", "a_own"): NOT_FOUND, ("ro_b", "a_shared"): OK, ("ro_b", "b_own"): OK,
    ("expired", "a_own"): EXPIRED, ("revoked", "a_own"): UNKNOWN,
}


def _check(reply: Any, expected: tuple[int, str | None], what: str) -> None:
    status, fragment = expected
    assert reply.status == status, (what, reply.status, reply.body)
    if fragment is not None:
        assert fragment in reply.error["message"], (what, reply.error)
        assert reply.error["code"] == status


@pytest_twisted.ensureDeferred
async def test_reading_devices(world: World):
    for (key, device), expected in READ.items():
        reply = await world.keys[key].get("/api/v2/devices/" + world.devices[device])
        _check(reply, expected, (key, device))
    # Lists hold exactly the visible devices.
    visible = {
        "admin_a": {"a_own", "a_shared"}, "ro_a": {"a_own", "a_shared"}, "cust_a": {"a_own"},
        "admin_b": {"a_shared", "b_own"}, "ro_b": {"a_shared", "b_own"},
    }
    names = {v: k for k, v in world.devices.items()}
    for key, expected in visible.items():
        reply = await world.keys[key].get("/api/v2/devices")
        assert reply.status == 200
        seen = {names[d["id"]] for d in reply.body if d["id"] in names}
        assert seen == expected, key
    for key, expected in (("expired", EXPIRED), ("revoked", UNKNOWN)):
        _check(await world.keys[key].get("/api/v2/devices"), expected, key)


@pytest_twisted.ensureDeferred
async def test_customer_sees_only_its_readable_keys(world: World):
    reply = await world.keys["cust_a"].get("/api/v2/devices/" + world.devices["a_own"])
    view = reply.body
    assert set(view) == {"id", "name", "online", "last_seen", "shadow"}
    reported = view["shadow"]["state"]["reported"]
    assert reported["temp"] == 21 and set(reported) <= {"temp", "led"}
    assert "secret" not in str(view) and "billing" not in str(view)
    assert "tags" not in view["shadow"]
    assert "ota" not in view["shadow"]["state"]["reported"]
    full = await world.keys["ro_a"].get("/api/v2/devices/" + world.devices["a_own"])
    assert full.body["shadow"]["tags"] == {"billing": "x"}
    assert full.body["shadow"]["state"]["reported"]["secret"] == "s3"


RPC_ECHO = {
    ("admin_a", "a_own"): OK, ("admin_a", "a_shared"): OK, ("admin_a", "b_own"): NOT_FOUND,
    ("ro_a", "a_own"): READ_ONLY_RPC, ("ro_a", "a_shared"): READ_ONLY_RPC,
    ("cust_a", "a_own"): OK, ("cust_a", "a_shared"): NOT_FOUND,
    ("admin_b", "a_own"): NOT_FOUND, ("admin_b", "a_shared"): OK, ("admin_b", "b_own"): OK,
    ("ro_b", "a_shared"): READ_ONLY_RPC, ("ro_b", "b_own"): READ_ONLY_RPC,
    ("expired", "a_own"): EXPIRED, ("revoked", "a_own"): UNKNOWN,
}


@pytest_twisted.ensureDeferred
async def test_rpc(world: World):
    for (key, device), expected in RPC_ECHO.items():
        reply = await world.keys[key].post(
            "/api/v2/devices/%s/rpc/Sim.Echo" % world.devices[device], {"k": key})
        _check(reply, expected, (key, device))
        if expected == OK:
            assert reply.body == {"k": key}
    cust = world.keys["cust_a"]
    a_own = world.devices["a_own"]
    reply = await cust.post("/api/v2/devices/%s/rpc/GPIO.Toggle" % a_own, {"pin": 1})
    assert reply.status == 200
    reply = await cust.get("/api/v2/devices/%s/rpc/RPC.List" % a_own)
    _check(reply, (403, "this key may not call RPC.List on device %s" % a_own), "RPC.List")


def _desired(value: Any) -> dict[str, Any]:
    return {"shadow": {"state": {"desired": value}}}


CHANGES = [
    # (key, device, body, expected)
    ("admin_a", "a_own", _desired({"led": 2}), OK),
    ("admin_a", "a_shared", {"shadow": {"tags": {"t": 1}}}, OK),
    ("admin_a", "a_shared", {"name": "renamed"}, OK),
    ("admin_a", "b_own", _desired({"led": 2}), NOT_FOUND),
    ("ro_a", "a_own", _desired({"led": 2}), READ_ONLY_SHADOW),
    ("ro_a", "a_own", {"name": "x"}, admin_only("rename a device", "read-only")),
    ("ro_a", "a_own", {"shared_with": "x"}, admin_only("change a device's sharing",
                                                       "read-only")),
    ("cust_a", "a_own", _desired({"led": 3}), OK),
    ("cust_a", "a_own", _desired({"led": None}), OK),
    ("cust_a", "a_own", _desired({"fan": 1}), (403, "this key may not change desired.fan")),
    ("cust_a", "a_own", _desired(None), (403, "may not empty the desired state")),
    ("cust_a", "a_own", {"shadow": {"tags": {"t": 1}}},
     (403, "may change only the desired state")),
    ("cust_a", "a_own", {"shadow": {"state": {"reported": {"temp": 1}}}},
     (403, "may change only the desired state")),
    ("cust_a", "a_own", {"name": "mine"}, admin_only("rename a device", "restricted")),
    ("cust_a", "a_shared", _desired({"led": 1}), NOT_FOUND),
    ("admin_b", "a_shared", _desired({"mode": "b"}), OK),
    ("admin_b", "a_shared", {"shadow": {"tags": {"t": 2}}},
     (403, "is shared with this account: only its desired state")),
    ("admin_b", "a_shared", {"name": "stolen"},
     owner_only("rename a device")),
    ("admin_b", "a_shared", {"shared_with": ""}, owner_only("change a device's sharing")),
    ("admin_b", "a_own", _desired({"led": 1}), NOT_FOUND),
    ("ro_b", "a_shared", _desired({"led": 1}), READ_ONLY_SHADOW),
    ("expired", "a_own", {"name": "x"}, EXPIRED),
    ("revoked", "a_own", {"name": "x"}, UNKNOWN),
]


@pytest_twisted.ensureDeferred
async def test_changing_devices(world: World):
    for key, device, body, expected in CHANGES:
        device_id = world.devices[device]
        before = await world.keys["admin_a" if device != "b_own" else "admin_b"].device(device_id)
        reply = await world.keys[key].post("/api/v2/devices/" + device_id, body)
        _check(reply, expected, (key, device, body))
        if expected != OK:
            after = await world.keys[
                "admin_a" if device != "b_own" else "admin_b"].device(device_id)
            assert after["shadow"]["version"] == before["shadow"]["version"], (key, body)
            assert after["name"] == before["name"]
    # The owner's sharing survived every refused attempt.
    shared = await world.keys["admin_a"].device(world.devices["a_shared"])
    assert shared["shared_with"] != ""


@pytest_twisted.ensureDeferred
async def test_register_delete_and_rotate(world: World):
    for key, expected in (("admin_a", OK), ("admin_b", OK),
                          ("ro_a", admin_only("register devices", "read-only")),
                          ("cust_a", admin_only("register devices", "restricted")),
                          ("expired", EXPIRED), ("revoked", UNKNOWN)):
        reply = await world.keys[key].post("/api/v2/devices", {"name": "new"})
        _check(reply, expected, key)
        if reply.status == 200:
            SECRETS.add(reply.body["token"])

    admin_a = world.keys["admin_a"]
    for action in ("delete", "rotate"):
        victim_id, _ = await admin_a.register("victim")
        await admin_a.post("/api/v2/devices/" + victim_id, {"shared_with": world.accounts["b"]})
        what = "delete a device" if action == "delete" else "rotate a device's token"
        for key, expected in (("ro_a", admin_only(what, "read-only")),
                              ("cust_a", NOT_FOUND),
                              ("admin_b", owner_only(what)),
                              ("ro_b", admin_only(what, "read-only")),
                              ("expired", EXPIRED), ("revoked", UNKNOWN)):
            reply = await _do(world.keys[key], action, victim_id)
            _check(reply, expected, (action, key))
        assert (await admin_a.get("/api/v2/devices/" + victim_id)).status == 200
        reply = await _do(admin_a, action, victim_id)
        assert reply.status == 200, reply
        if action == "rotate":
            SECRETS.add(reply.body["token"])
    reply = await _do(admin_a, "delete", world.devices["b_own"])
    _check(reply, NOT_FOUND, "foreign delete")


async def _do(client: Client, action: str, device_id: str) -> Any:
    if action == "delete":
        return await client.delete("/api/v2/devices/" + device_id)
    return await client.post("/api/v2/devices/%s/token" % device_id)


@pytest_twisted.ensureDeferred
async def test_whoami(world: World):
    kinds = {"admin_a": "admin", "ro_a": "read-only", "cust_a": "restricted",
             "admin_b": "admin", "ro_b": "read-only"}
    for key, kind in kinds.items():
        reply = await world.keys[key].get("/api/v2/whoami")
        assert reply.status == 200 and reply.body["kind"] == kind
        assert "key" not in reply.body
        # Account "a" is the first one, the operator account.
        assert reply.body["operator"] is key.endswith("_a"), key
        assert reply.body["account_name"] == ("default" if key.endswith("_a") else "customer B")
    reply = await world.keys["cust_a"].get("/api/v2/whoami")
    assert reply.body["scope"] == {"devices": {world.devices["a_own"]: CUSTOMER_ACL}}


@pytest_twisted.ensureDeferred
async def test_keys_and_accounts(world: World):
    for key, expected in (("admin_a", OK), ("admin_b", OK),
                          ("ro_a", admin_only("manage keys", "read-only")),
                          ("cust_a", admin_only("manage keys", "restricted")),
                          ("expired", EXPIRED), ("revoked", UNKNOWN)):
        _check(await world.keys[key].get("/api/v2/keys"), expected, key)
        _check(await world.keys[key].post("/api/v2/keys", {"name": "k"}), expected, key)
    # Each admin sees only its account's keys, and cannot revoke another's.
    a_keys = {k["id"] for k in (await world.keys["admin_a"].get("/api/v2/keys")).body}
    b_keys = {k["id"] for k in (await world.keys["admin_b"].get("/api/v2/keys")).body}
    assert a_keys and b_keys and not a_keys & b_keys
    reply = await world.keys["admin_b"].delete("/api/v2/keys/" + sorted(a_keys)[0])
    _check(reply, (404, "no such key"), "foreign key")

    for key, expected in (("admin_a", OK),
                          ("admin_b", (403, "only admin keys of the operator account")),
                          ("ro_a", admin_only("manage accounts", "read-only")),
                          ("cust_a", admin_only("manage accounts", "restricted")),
                          ("expired", EXPIRED), ("revoked", UNKNOWN)):
        _check(await world.keys[key].get("/api/v2/accounts"), expected, key)
    accounts = (await world.keys["admin_a"].get("/api/v2/accounts")).body
    assert [a["operator"] for a in accounts][:1] == [True]
    assert world.accounts["b"] in {a["id"] for a in accounts}
    reply = await world.keys["admin_b"].post("/api/v2/accounts", {"name": "evil"})
    _check(reply, (403, "only admin keys of the operator account"), "create account")


@pytest_twisted.ensureDeferred
async def test_key_creation_is_checked(world: World):
    admin_a = world.keys["admin_a"]
    cases = [
        ({"kind": "restricted"}, "a restricted key needs a scope"),
        ({"kind": "admin", "scope": {"devices": {}}}, "only restricted keys have a scope"),
        ({"kind": "restricted", "scope": {"devices": {}}}, "must name at least one device"),
        ({"kind": "restricted", "scope": []}, "scope must be"),
        ({"kind": "restricted", "scope": {"devices": {world.devices["b_own"]: {}}}},
         "scope names an unknown device: %s" % world.devices["b_own"]),
        ({"kind": "restricted", "scope": {"devices": {world.devices["a_own"]: {"rpc": "x"}}}},
         "rpc must be a list of non-empty strings"),
        ({"kind": "restricted", "scope": {"devices": {world.devices["a_own"]: {"x": []}}}},
         "unknown field(s): x"),
        ({"kind": "restricted",
          "scope": {"devices": {world.devices["a_own"]: {"read": ["a..b"]}}}},
         "malformed dotted path"),
    ]
    for body, message in cases:
        reply = await admin_a.post("/api/v2/keys", body)
        _check(reply, (400, message), body)
    # A shared device may be handed to a customer of the account it is shared with.
    reply = await world.keys["admin_b"].post("/api/v2/keys", {
        "kind": "restricted", "scope": {"devices": {world.devices["a_shared"]: {"rpc": ["*"]}}}})
    assert reply.status == 200
    SECRETS.add(reply.body["key"])
    cust_b = Client(world.server, reply.body["key"])
    reply = await cust_b.post("/api/v2/devices/%s/rpc/Sim.Echo" % world.devices["a_shared"], 5)
    assert (reply.status, reply.body) == (200, 5)


@pytest_twisted.ensureDeferred
async def test_notification_stream_is_filtered(world: World):
    subs = {k: await subscribe(world.server, world.keys[k].key)
            for k in ("admin_a", "ro_a", "cust_a", "admin_b", "ro_b")}
    d = world.devices
    admin_a, admin_b = world.keys["admin_a"], world.keys["admin_b"]
    try:
        # In order: b_own, a_shared, an RPC on a_own, a_own, then b_own again.
        await admin_b.post("/api/v2/devices/" + d["b_own"], _desired({"step": 1}))
        await admin_a.post("/api/v2/devices/" + d["a_shared"], _desired({"step": 2}))
        await admin_a.post("/api/v2/devices/%s/rpc/Sim.Echo" % d["a_own"], {"x": 1})
        await admin_a.post("/api/v2/devices/" + d["a_own"],
                           {"shadow": {"state": {"desired": {"step": 3, "led": 9}}}})
        await admin_b.post("/api/v2/devices/" + d["b_own"], _desired({"step": 4}))

        def is_step(device: str, step: int):
            return lambda e: (e["id"] == d[device] and e["name"] == "shadow.update"
                              and e["data"]["state"]["desired"].get("step") == step)

        def is_led(e):
            return (e["id"] == d["a_own"] and e["name"] == "shadow.update"
                    and e["data"]["state"]["desired"].get("led") == 9)

        seen: dict[str, list] = {k: [] for k in subs}

        async def until(key: str, match) -> None:
            while True:
                event = await subs[key].next(seconds=10)
                seen[key].append(event)
                if match(event):
                    return

        for key in ("admin_a", "ro_a"):
            await until(key, is_step("a_own", 3))
            ids = {e["id"] for e in seen[key]}
            assert d["b_own"] not in ids, key
            assert any(is_step("a_shared", 2)(e) for e in seen[key])
            assert any(e["name"] == "rpc.in.Sim.Echo" for e in seen[key])
        for key in ("admin_b", "ro_b"):
            await until(key, is_step("b_own", 4))
            ids = {e["id"] for e in seen[key]}
            assert d["a_own"] not in ids, key
            assert any(is_step("a_shared", 2)(e) for e in seen[key])
        await until("cust_a", is_led)
        assert {e["id"] for e in seen["cust_a"]} == {d["a_own"]}
        assert {e["name"] for e in seen["cust_a"]} <= {"online", "offline", "shadow.update"}
        last = seen["cust_a"][-1]["data"]
        assert last["state"]["desired"] == {"led": 9}  # step is not readable
        assert "tags" not in last
    finally:
        for sub in subs.values():
            sub.close()


@pytest_twisted.ensureDeferred
async def test_a_restricted_key_never_sees_other_devices_come_and_go(world: World):
    """The customer subscribes before the account's other devices come and
    go: its stream holds its own device's offline and online, and nothing
    at all of the others (a new device, and a_shared reconnecting)."""
    admin_a = world.keys["admin_a"]
    d = world.devices
    other_id, other_token = await admin_a.register("not the customer's")
    customer = await subscribe(world.server, world.keys["cust_a"].key)
    watcher = await subscribe(world.server, admin_a.key)
    try:
        other = await connect_device(world.server, other_token, reconnect=False)
        await watcher.next(lambda e: e["id"] == other_id and e["name"] == "online")
        await other.stop()
        await watcher.next(lambda e: e["id"] == other_id and e["name"] == "offline")
        world.sims[1].drop()  # a_shared: it reconnects by itself
        await watcher.next(lambda e: e["id"] == d["a_shared"] and e["name"] == "offline")
        await watcher.next(lambda e: e["id"] == d["a_shared"] and e["name"] == "online")
        # Then the customer's own device goes and comes back: once the
        # customer has that, it has everything published before it.
        world.sims[0].drop()
        await customer.next(lambda e: e["id"] == d["a_own"] and e["name"] == "offline")
        await customer.next(lambda e: e["id"] == d["a_own"] and e["name"] == "online")
        customer.never(lambda e: e["id"] != d["a_own"], "events of devices out of its scope")
        assert {e["name"] for e in customer.received} <= {"online", "offline", "shadow.update"}
    finally:
        customer.close()
        watcher.close()
    await device_online(admin_a, d["a_own"])
    await device_online(admin_a, d["a_shared"])


@pytest_twisted.ensureDeferred
async def test_revoking_or_expiring_closes_open_streams(world: World):
    admin_a = world.keys["admin_a"]
    reply = await admin_a.post("/api/v2/keys", {"name": "watcher"})
    SECRETS.add(reply.body["key"])
    sub = await subscribe(world.server, reply.body["key"])
    await admin_a.delete("/api/v2/keys/" + reply.body["id"])
    code, reason = await within(sub.closed, 5)
    assert (code, reason) == (4001, "API key revoked")
    handshake = await raw_handshake(world.server, "/api/v2/notify",
                                    {"Authorization": "Bearer " + reply.body["key"]})
    _check(handshake, UNKNOWN, "revoked notify")

    short = await _key(admin_a, name="brief", expires=time.time() + 1.5)
    sub = await subscribe(world.server, short.key)
    code, reason = await within(sub.closed, 5)
    assert (code, reason) == (4001, "API key expired")
    handshake = await raw_handshake(world.server, "/api/v2/notify",
                                    {"Authorization": "Bearer " + short.key})
    _check(handshake, EXPIRED, "expired notify")


@pytest_twisted.ensureDeferred
async def test_rotating_a_token_disconnects_the_device(world: World):
    admin_a = world.keys["admin_a"]
    device_id, token = await admin_a.register("rotating")
    sim = await connect_device(world.server, token, reconnect=False)
    await device_online(admin_a, device_id)
    closed = sim.wait_closed()
    reply = await admin_a.post("/api/v2/devices/%s/token" % device_id)
    assert reply.status == 200
    new_token = reply.body["token"]
    SECRETS.add(new_token)
    assert new_token != token and new_token.startswith(device_id + "-")
    await within(closed)
    assert sim.close_code == 4003
    handshake = await raw_handshake(world.server, headers={"Authorization": "Bearer " + token})
    _check(handshake, (401, "unknown device token"), "old token")
    sim2 = await connect_device(world.server, new_token)
    try:
        await device_online(admin_a, device_id)
    finally:
        await sim2.stop()
    reply = await admin_a.post("/api/v2/devices/%s/token" % device_id, {"x": 1})
    _check(reply, (400, "unknown field(s): x"), "token body")


@pytest_twisted.ensureDeferred
async def test_shared_with_holds_only_account_ids(world: World):
    admin_a = world.keys["admin_a"]
    device_id, _ = await admin_a.register()
    for bad in ("a1,\u0007bell", "a b", "x" * 65, ["ok", "new\nline"]):
        reply = await admin_a.post("/api/v2/devices/" + device_id, {"shared_with": bad})
        _check(reply, (400, "which is not an account ID"), bad)
    b = world.accounts["b"]
    reply = await admin_a.post("/api/v2/devices/" + device_id, {"shared_with": " %s , , " % b})
    assert reply.body["shared_with"] == b


@pytest_twisted.ensureDeferred
async def test_sharing_with_an_account_that_does_not_exist_is_refused(world: World):
    admin_a = world.keys["admin_a"]
    b = world.accounts["b"]
    reply = await admin_a.post("/api/v2/devices", {"shared_with": "%s,anosuchaccount" % b})
    _check(reply, (400, "shared_with names account anosuchaccount, which does not exist"),
           "register")
    device_id, _ = await admin_a.register()
    for value in ("anosuchaccount", [b, "a-typo"], {"a-typo": None}):
        reply = await admin_a.post("/api/v2/devices/" + device_id, {"shared_with": value})
        _check(reply, (400, "which does not exist"), value)
    assert (await admin_a.device(device_id))["shared_with"] == ""
    reply = await admin_a.post("/api/v2/devices/" + device_id, {"shared_with": b})
    assert (reply.status, reply.body["shared_with"]) == (200, b)
    reply = await admin_a.post("/api/v2/devices/" + device_id,
                               {"shared_with": ",".join("a%d" % i for i in range(101))})
    _check(reply, (400, "shared_with may name at most 100 accounts"), "many")


OWNER_METHODS = ["OTA.Begin", "OTA.Write", "OTA.End", "OTA.Commit", "OTA.Update", "ota.begin",
                 "Config.Set", "Config.Get", "Config.Save", "FS.Put", "FS.Get", "Sys.Reboot",
                 "Sys.FactoryReset"]


def _sent(sim: Any, method: str) -> bool:
    return any(f.get("method") == method for f in sim.frames)


@pytest_twisted.ensureDeferred
async def test_methods_for_the_owner_are_refused_to_sharees_and_wildcards(world: World):
    """Firmware, configuration, file system and reboot are the owner's: a
    sharee's admin key, and a restricted key whose patterns match them, get
    403 on the RPC bridge and nothing reaches the device."""
    a_shared = world.devices["a_shared"]
    sim = world.sims[list(world.devices).index("a_shared")]
    admin_b = world.keys["admin_b"]
    wild = await _key(world.keys["admin_a"], kind="restricted", name="wild", scope={
        "devices": {world.devices["a_own"]: {"rpc": ["*"]}}})
    for method in OWNER_METHODS:
        reply = await admin_b.post("/api/v2/devices/%s/rpc/%s" % (a_shared, method),
                                   {"data": "AAAA", "size": 4, "config": {"dash": {
                                       "server": "ws://evil.example/api/v2/rpc"}}})
        _check(reply, (403, "device %s is shared with this account: %s is for the owner of "
                            "device %s only" % (a_shared, method, a_shared)), method)
        assert "its owner may grant it by name in the share's scope" in reply.error["message"]
        reply = await admin_b.get("/api/v2/devices/%s/rpc/%s" % (a_shared, method))
        assert reply.status == 403, (method, reply.body)
        reply = await wild.post("/api/v2/devices/%s/rpc/%s" % (world.devices["a_own"], method))
        _check(reply, (403, "%s is for the owner of device %s only" % (
            method, world.devices["a_own"])), ("wild", method))
        assert "the key's scope must name it exactly" in reply.error["message"]
    # The owner may; the sharee and the wildcard key may call the rest.
    reply = await world.keys["admin_a"].post("/api/v2/devices/%s/rpc/Config.Get" % a_shared)
    assert reply.status == 502  # sent: the simulator has no Config.Get
    assert (await admin_b.post("/api/v2/devices/%s/rpc/Sim.Echo" % a_shared, {})).status == 200
    reply = await wild.post("/api/v2/devices/%s/rpc/Sim.Echo" % world.devices["a_own"], [1])
    assert reply.status == 200 and reply.body == [1]
    await sleep(0.2)
    for method in OWNER_METHODS:
        if method != "Config.Get":
            assert not _sent(sim, method), method
    # The REST firmware routes were already the owner's.
    reply = await admin_b.post("/api/v2/devices/%s/ota/commit" % a_shared)
    _check(reply, owner_only("commit a device's firmware"), "commit")


@pytest_twisted.ensureDeferred
async def test_a_share_carries_the_scope_its_owner_gives(world: World):
    admin_a, admin_b = world.keys["admin_a"], world.keys["admin_b"]
    b = world.accounts["b"]
    device_id, token = await admin_a.register("scoped share")
    sim = await connect_device(world.server, token)
    try:
        await device_online(admin_a, device_id)
        scope = {"rpc": ["Sim.*", "Config.Get"], "write": ["led"]}
        reply = await admin_a.post("/api/v2/devices/" + device_id, {"shared_with": {b: scope}})
        assert reply.status == 200, reply
        assert reply.body["shared_with"] == b
        assert reply.body["share_scopes"] == {b: scope}
        base = "/api/v2/devices/%s/rpc/" % device_id
        assert (await admin_b.post(base + "Sim.Echo", {"x": 1})).status == 200
        _check(await admin_b.post(base + "GPIO.Toggle", {"pin": 1}),
               (403, "device %s is shared with this account, whose share does not allow "
                     "GPIO.Toggle" % device_id), "GPIO.Toggle")
        # Named exactly, a method for the owner is granted (the simulator
        # has no Config.Get: its refusal shows that the call was sent).
        assert (await admin_b.post(base + "Config.Get")).status == 502
        assert _sent(sim, "Config.Get")
        _check(await admin_b.post(base + "Config.Set", {}),
               (403, "whose share does not allow Config.Set"), "Config.Set")
        ok = await admin_b.post("/api/v2/devices/" + device_id, _desired({"led": 1}))
        assert ok.status == 200
        _check(await admin_b.post("/api/v2/devices/" + device_id, _desired({"fan": 1})),
               (403, "device %s is shared with this account, whose share does not allow it "
                     "to change desired.fan of device %s" % (device_id, device_id)), "fan")
        # Naming the accounts again keeps their scopes; null is the default.
        reply = await admin_a.post("/api/v2/devices/" + device_id, {"shared_with": b})
        assert reply.body["share_scopes"] == {b: scope}
        reply = await admin_a.post("/api/v2/devices/" + device_id, {"shared_with": {b: None}})
        assert reply.body["share_scopes"] == {}
        assert (await admin_b.post(base + "GPIO.Toggle", {"pin": 1})).status == 200
        assert (await admin_b.post(base + "Config.Get")).status == 403
        for bad, message in (({b: {"rpc": "x"}}, "shared_with.%s.rpc must be a list" % b),
                             ({b: {"read": []}}, "shared_with.%s must be null or" % b),
                             ({b: []}, "shared_with.%s must be null or" % b)):
            _check(await admin_a.post("/api/v2/devices/" + device_id, {"shared_with": bad}),
                   (400, message), bad)
        # A sharee cannot widen its own share.
        _check(await admin_b.post("/api/v2/devices/" + device_id,
                                  {"shared_with": {b: {"rpc": ["*"]}}}),
               owner_only("change a device's sharing"), "widen")
    finally:
        await sim.stop()
