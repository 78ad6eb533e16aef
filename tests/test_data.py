"""
Stored data (tags.save) and the device history (POST /logs), end to end:
what a device reports is recorded only for the listed keys, and read back
with each query parameter, and refused with bad ones.
"""

from __future__ import annotations

import pytest_twisted

from support import Client, connect_device, device_online, eventually, within


async def _save(admin: Client, device_id: str, keys: list[str]) -> None:
    reply = await admin.post("/api/v2/devices/" + device_id, {"shadow": {"tags": {"save": keys}}})
    assert reply.status == 200, reply


@pytest_twisted.ensureDeferred
async def test_only_listed_keys_are_recorded(server, admin: Client):
    device_id, token = await admin.register()
    await _save(admin, device_id, ["temp", "env.hum", "led"])
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        reports = [
            {"temp": 20.5, "other": 1},            # temp
            {"env": {"hum": 40, "pressure": 1}},    # env.hum
            {"env": {"pressure": 2}},               # nothing: hum not reported
            {"temp": None},                         # nothing: a deletion
            {"led": {"on": True, "level": 3}},      # led, as an object
            {"temp": 20.5},                         # temp again, though unchanged
            {"tempo": 1, "env": 5},                 # nothing: other keys, env not an object
        ]
        for state in reports:
            await within(sim.call("Dash.Shadow.Update", {"state": {"reported": state}}))
        # The old form: the whole state is reported.
        await within(sim.call("Dash.Shadow.Update", {"state": {"temp": 21}}))
        # Users setting reported over REST is not the device reporting.
        await admin.post("/api/v2/devices/" + device_id,
                         {"shadow": {"state": {"reported": {"temp": 99}}}})
        reply = await admin.get("/api/v2/devices/%s/data" % device_id)
        assert reply.status == 200
        points = reply.body
        assert [(p["key"], p["value"]) for p in points] == [
            ("temp", 20.5), ("env.hum", 40), ("led", {"on": True, "level": 3}),
            ("temp", 20.5), ("temp", 21),
        ]
        assert all(p["device_id"] == device_id for p in points)
        times = [p["timestamp"] for p in points]
        assert times == sorted(times) and times[0] > 1_700_000_000
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_mdash_state_set_is_recorded(server, admin: Client):
    device_id, token = await admin.register()
    await _save(admin, device_id, ["battery"])
    sim = await connect_device(server, token, dialect="mdash")
    try:
        await device_online(admin, device_id)
        await within(sim.report({"battery": 87, "rssi": -60}))
        sim.notify("State.Set", {"battery": 86})  # as a notification, no id

        async def two() -> bool:
            reply = await admin.get("/api/v2/devices/%s/data" % device_id)
            return len(reply.body) == 2

        await eventually(two)
        reply = await admin.get("/api/v2/devices/%s/data" % device_id)
        assert [p["value"] for p in reply.body] == [87, 86]
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_queries_with_each_parameter(server, admin: Client):
    a_id, a_token = await admin.register("a")
    b_id, b_token = await admin.register("b")
    await _save(admin, a_id, ["n", "s"])
    await _save(admin, b_id, ["n"])
    a = await connect_device(server, a_token)
    b = await connect_device(server, b_token)
    try:
        for i in range(10):
            await within(a.call("Dash.Shadow.Update", {"state": {"reported": {"n": i}}}))
        await within(a.call("Dash.Shadow.Update", {"state": {"reported": {"s": "needle"}}}))
        for i in range(3):
            await within(b.call("Dash.Shadow.Update", {"state": {"reported": {"n": 100 + i}}}))
        path = "/api/v2/devices/%s/data" % a_id

        async def values(query: str, base: str = path) -> list:
            reply = await admin.get(base + query)
            assert reply.status == 200, (query, reply)
            return [p["value"] for p in reply.body]

        everything = list(range(10)) + ["needle"]
        assert await values("") == everything  # the last 100, oldest first
        assert await values("?limit=3") == [8, 9, "needle"]  # the last three
        assert await values("?skip=0&limit=3") == [0, 1, 2]
        assert await values("?skip=4&limit=2") == [4, 5]
        assert await values("?skip=9") == [9, "needle"]
        assert await values("?skip=-3") == [8, 9, "needle"]
        assert await values("?skip=-5&limit=2") == [6, 7]
        assert await values("?skip=-50&limit=2") == [0, 1]
        assert await values("?skip=500") == []
        assert await values("?filter=needl") == ["needle"]  # in the value
        assert await values("?filter=s") == ["needle"]  # in the key
        assert await values("?filter=7") == [7]
        assert await values("?filter=zzz") == []
        assert await values("?filter=n&skip=-2&limit=1") == [9]

        # Every device the key may see, in the order the points came.
        for base in ("/api/v2/devices/data", "/api/v2/data"):
            reply = await admin.get(base + "?skip=-14&limit=5000")
            ours = [(p["device_id"], p["value"]) for p in reply.body
                    if p["device_id"] in (a_id, b_id)]
            assert ours == [(a_id, v) for v in everything] + [(b_id, 100 + i) for i in range(3)]
            assert await values("?filter=needle", base) == ["needle"]
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_bad_queries_get_400(server, admin: Client):
    device_id, _ = await admin.register()
    cases = [
        ("?limit=0", "limit must be between 1 and 5000"),
        ("?limit=5001", "limit must be between 1 and 5000"),
        ("?limit=ten", "limit must be an integer, not 'ten'"),
        ("?skip=1.5", "skip must be an integer"),
        ("?skip=", "skip must be an integer"),
        ("?filter=", "filter must be 1 to 256 characters"),
        ("?filter=" + "x" * 300, "filter must be 1 to 256 characters"),
        ("?limt=5", "unknown query argument(s): limt"),
    ]
    for base in ("/api/v2/devices/%s/data" % device_id, "/api/v2/data", "/api/v2/devices/data"):
        for query, message in cases:
            reply = await admin.get(base + query)
            assert reply.status == 400, (base, query, reply)
            assert message in reply.error["message"], (base, query, reply.error)
    reply = await admin.get("/api/v2/devices/dnosuchdevice0/data")
    assert (reply.status, reply.error["message"]) == (404, "no such device: dnosuchdevice0")
    reply = await Client(server, None).get("/api/v2/data")
    assert reply.status == 401


@pytest_twisted.ensureDeferred
async def test_bad_save_lists_are_refused(server, admin: Client):
    device_id, _ = await admin.register()
    for save, message in [
        ("temp", "tags.save must be a list"),
        ([1, 2], "tags.save must be a list"),
        (["a..b"], "is not a dotted path"),
        ([""], "is not a dotted path"),
        (["k%d" % i for i in range(65)], "at most 64 keys"),
    ]:
        reply = await admin.post("/api/v2/devices/" + device_id,
                                 {"shadow": {"tags": {"save": save}}})
        assert reply.status == 400, save
        assert message in reply.error["message"], (save, reply.error)
    assert (await admin.device(device_id))["shadow"]["tags"] == {}


# Logs and notifications


@pytest_twisted.ensureDeferred
async def test_logs_and_notifications_are_stored_and_paged(server, admin: Client):
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        for i in range(25):
            sim.notify("Dash.Log", {"fd": 1, "data": "line %d\n" % i, "t": i, "seq": i})
        sim.notify("MyStat", {"temp": 21})
        await within(sim.call("Dash.Log", {"fd": 2, "data": "with an id", "t": 99, "seq": 99}))

        async def stored() -> list:
            reply = await admin.post("/api/v2/logs", {"start": 0, "device_id": device_id,
                                                      "limit": 1000})
            events = reply.body["events"]
            return events if len([e for e in events if e["name"] != "online"]) == 27 else None

        everything = await eventually(stored)
        assert everything[0]["name"] == "online"
        logs = [e for e in everything if e["name"] == "rpc.out.Log"]
        assert [e["data"]["data"] for e in logs] == ["line %d\n" % i for i in range(25)] + \
            ["with an id"]
        assert [e for e in everything if e["name"] == "rpc.out.MyStat"][0]["data"] == {"temp": 21}
        assert not any(e["name"] == "rpc.out.Heartbeat" for e in everything)
        offsets = [e["offset"] for e in everything]
        assert offsets == sorted(offsets) and all(e["id"] == device_id for e in everything)

        # Page through, 10 at a time, from the first offset.
        start, pages, seen = offsets[0], 0, []
        while True:
            reply = await admin.post("/api/v2/logs", {"start": start, "limit": 10,
                                                      "device_id": device_id})
            assert reply.status == 200
            page = reply.body["events"]
            if not page:
                assert reply.body["next"] == start
                break
            assert len(page) <= 10
            seen += page
            pages += 1
            start = reply.body["next"]
            assert start == page[-1]["offset"] + 1
        assert seen == everything and pages == 3
        # The last few, counted from the end.
        reply = await admin.post("/api/v2/logs", {"start": -3, "device_id": device_id})
        assert reply.body["events"] == everything[-3:]
        # All devices the key may see: ours are among them, in order.
        reply = await admin.post("/api/v2/logs", {"start": offsets[0], "limit": 1000})
        assert [e for e in reply.body["events"] if e["id"] == device_id] == everything
        await sim.stop()
        reply = await admin.post("/api/v2/logs", {"start": -1, "device_id": device_id})
        assert reply.body["events"][0]["name"] == "offline"
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_logs_are_bounded_per_device(server, admin: Client):
    """The test server keeps logs.max_per_device = 50 events a device."""
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        for i in range(80):
            sim.notify("Dash.Log", {"fd": 1, "data": "l%d" % i})
        await within(sim.call("Dash.Log", {"fd": 1, "data": "last"}))
        reply = await admin.post("/api/v2/logs", {"start": 0, "device_id": device_id,
                                                  "limit": 1000})
        events = reply.body["events"]
        assert len(events) == 50
        assert [e["data"]["data"] for e in events] == ["l%d" % i for i in range(31, 80)] + ["last"]
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_bad_logs_requests_get_400(server, admin: Client):
    for body, message in [
        (b'{"start": "x"}', "start must be an integer"),
        (b'{"start": 1.5}', "start must be an integer"),
        (b'{"start": true}', "start must be an integer"),
        (b'{"limit": 0}', "limit must be between 1 and 1000"),
        (b'{"limit": 1001}', "limit must be between 1 and 1000"),
        (b'{"offset": 3}', "unknown field(s): offset"),
        (b'{"device_id": 7}', "device_id must be a string"),
        (b"[]", "must be a JSON object"),
        (b"{nope", "not valid JSON"),
    ]:
        reply = await admin.request("POST", "/api/v2/logs", raw=body,
                                    headers={"Content-Type": "application/json"})
        assert reply.status == 400, (body, reply)
        assert message in reply.error["message"], (body, reply.error)
    reply = await admin.post("/api/v2/logs", {"device_id": "dnosuchdevice0"})
    assert reply.status == 404
    # An empty body starts at the beginning.
    reply = await admin.post("/api/v2/logs")
    assert reply.status == 200 and "events" in reply.body and "next" in reply.body


# Who sees what


@pytest_twisted.ensureDeferred
async def test_who_sees_stored_data_logs_and_firmware(server, admin: Client, tmp_path):
    """Another account sees what is shared with it and nothing else; a
    read-only key reads but updates no firmware; a restricted key reads none
    of it; only the owner's admin keys update or commit firmware."""
    from support import SECRETS
    from test_ota import make_bin

    created = await admin.post("/api/v2/accounts", {"name": "partner"})
    assert created.status == 200, created
    SECRETS.add(created.body["admin_key"]["key"])
    partner = Client(server, created.body["admin_key"]["key"])

    async def key(owner: Client, **body) -> Client:
        reply = await owner.post("/api/v2/keys", body)
        assert reply.status == 200, reply
        SECRETS.add(reply.body["key"])
        return Client(server, reply.body["key"])

    own_id, own_token = await admin.register("own")
    reply = await admin.post("/api/v2/devices", {"name": "shared",
                                                 "shared_with": created.body["id"]})
    shared_id, shared_token = reply.body["id"], reply.body["token"]
    SECRETS.add(shared_token)
    theirs_id, theirs_token = await partner.register("theirs")
    reader = await key(admin, kind="read-only")
    customer = await key(admin, kind="restricted",
                         scope={"devices": {own_id: {"read": ["n"], "write": [], "rpc": []}}})
    sims = {}
    try:
        for device_id, token, owner in ((own_id, own_token, admin),
                                        (shared_id, shared_token, admin),
                                        (theirs_id, theirs_token, partner)):
            await _save(owner, device_id, ["n"])
            sims[device_id] = sim = await connect_device(server, token)
            await device_online(owner, device_id)
            await within(sim.call("Dash.Shadow.Update", {"state": {"reported": {"n": device_id}}}))
            await within(sim.call("Dash.Log", {"fd": 1, "data": device_id}))

        async def devices_in(client: Client, path: str, body=None) -> set:
            if body is None:
                reply = await client.get(path)
                assert reply.status == 200, reply
                return {p["device_id"] for p in reply.body}
            reply = await client.post(path, body)
            assert reply.status == 200, reply
            return {e["id"] for e in reply.body["events"]}

        mine = {own_id, shared_id, theirs_id}
        for path in ("/api/v2/data?limit=5000", "/api/v2/devices/data?limit=5000"):
            assert await devices_in(admin, path) & mine == {own_id, shared_id}
            assert await devices_in(reader, path) & mine == {own_id, shared_id}
            assert await devices_in(partner, path) == {shared_id, theirs_id}
        logs = {"start": -1000, "limit": 1000}
        assert await devices_in(admin, "/api/v2/logs", logs) & mine == {own_id, shared_id}
        assert await devices_in(partner, "/api/v2/logs", logs) == {shared_id, theirs_id}
        assert await devices_in(partner, "/api/v2/devices/%s/data" % shared_id) == {shared_id}
        reply = await partner.get("/api/v2/devices/%s/data" % own_id)
        assert (reply.status, reply.error["message"]) == (404, "no such device: %s" % own_id)
        reply = await partner.post("/api/v2/logs", {"device_id": own_id})
        assert reply.status == 404

        # A restricted key reads none of it.
        for reply in (await customer.get("/api/v2/devices/%s/data" % own_id),
                      await customer.get("/api/v2/data"),
                      await customer.post("/api/v2/logs", {"start": 0}),
                      await customer.get("/api/v2/devices/%s/ota" % own_id)):
            assert reply.status == 403, reply
        assert "ota" not in (await customer.get("/api/v2/devices/" + own_id)).body

        # Firmware: the owner's admin keys only.
        fw = make_bin(str(tmp_path / "x.bin"), 1000)
        reply = await reader.upload("/api/v2/devices/%s/ota" % own_id, fw)
        assert reply.status == 403
        assert "only admin keys may update a device's firmware" in reply.error["message"]
        reply = await partner.upload("/api/v2/devices/%s/ota" % shared_id, fw)
        assert reply.status == 403
        assert "of the account that owns device %s" % shared_id in reply.error["message"]
        reply = await partner.upload("/api/v2/devices/%s/ota" % own_id, fw)
        assert reply.status == 404
        reply = await reader.post("/api/v2/devices/%s/ota/commit" % own_id)
        assert reply.status == 403
        assert not any(str(f.get("method", "")).startswith("OTA.")
                       for sim in sims.values() for f in sim.frames)
        assert (await reader.get("/api/v2/devices/%s/ota" % own_id)).body is None
    finally:
        for sim in sims.values():
            await sim.stop()
