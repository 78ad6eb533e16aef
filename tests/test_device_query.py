"""
Device queries over REST (GET /api/v2/devices?where=..., /devices/count),
on both stores: what they select, their pages, their errors (400 with the
position and what was expected), and that a key matches only what it may
see.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest_twisted

from support import SECRETS, Client, connect_device, device_online


async def _key(admin: Client, **body: Any) -> Client:
    reply = await admin.post("/api/v2/keys", body)
    assert reply.status == 200, reply
    SECRETS.add(reply.body["key"])
    return Client(admin.server, reply.body["key"])


async def select(client: Client, where: str, **args: Any) -> list[str]:
    query = "&".join(["where=" + quote(where)] + ["%s=%s" % kv for kv in args.items()])
    reply = await client.get("/api/v2/devices?" + query)
    assert reply.status == 200, reply
    return [d["id"] for d in reply.body]


async def count(client: Client, where: str) -> int:
    reply = await client.get("/api/v2/devices/count?where=" + quote(where))
    assert reply.status == 200, reply
    return reply.body["count"]


async def _fleet(admin: Client, tag: str) -> list[str]:
    """Three devices of this test's own (tagged run=TAG): berlin on 1.9.2,
    berlin on 1.10.0, paris without firmware."""
    ids = []
    for i, (site, fw) in enumerate([("berlin", "1.9.2"), ("berlin", "1.10.0"),
                                    ("paris", None)]):
        device_id, token = await admin.register("q-%s-%d" % (tag, i))
        reply = await admin.post("/api/v2/devices/" + device_id, {"shadow": {
            "tags": {"run": tag, "site": site}, "state": {"desired": {"led": i == 0}}}})
        assert reply.status == 200, reply
        if fw is not None:
            sim = await connect_device(admin.server, token, fw_version=fw)
            await device_online(admin, device_id)

            async def has_info() -> bool:
                return (await admin.device(device_id))["info"].get("fw_version") == fw

            from support import eventually

            await eventually(has_info)
            await sim.stop()
        ids.append(device_id)
    return ids


@pytest_twisted.ensureDeferred
async def test_where_selects_and_counts(server, admin):
    ids = await _fleet(admin, "sel")
    run = 'shadow.tags.run = "sel"'
    assert await select(admin, run) == ids
    assert await select(admin, run + ' and info.fw_version < "1.10.0"') == ids[:1]
    assert await select(admin, run + ' and info.fw_version >= "1.10"') == ids[1:2]
    assert await select(admin, run + ' and not info.fw_version exists') == ids[2:]
    assert await select(admin, run + ' and shadow.tags.site = "berlin" and '
                                     'shadow.desired.led = true') == ids[:1]
    assert await select(admin, run + ' and name matches "q-sel-*" and not online') == ids
    assert await select(admin, run, order="-name") == ids[::-1]
    assert await count(admin, run + ' and shadow.tags.site in ["paris", "rome"]') == 1
    assert await count(admin, 'shadow.tags.run = "nothing"') == 0
    # No where: every device, as before.
    reply = await admin.get("/api/v2/devices")
    assert set(ids) <= {d["id"] for d in reply.body}


@pytest_twisted.ensureDeferred
async def test_online_is_what_the_router_knows(server, admin):
    device_id, token = await admin.register()
    reply = await admin.post("/api/v2/devices/" + device_id,
                             {"shadow": {"tags": {"run": "online"}}})
    assert reply.status == 200
    where = 'shadow.tags.run = "online" and online'
    assert await select(admin, where) == []
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        assert await select(admin, where) == [device_id]
        assert await count(admin, 'shadow.tags.run = "online" and not online') == 0
    finally:
        await sim.stop()
    await device_online(admin, device_id, False)
    assert await select(admin, where) == []


@pytest_twisted.ensureDeferred
async def test_pages_with_a_cursor(server, admin):
    ids = await _fleet(admin, "page")
    seen: list[str] = []
    path = "/api/v2/devices?limit=2&where=" + quote('shadow.tags.run = "page"')
    while True:
        reply = await admin.get(path)
        assert reply.status == 200, reply
        seen.extend(d["id"] for d in reply.body)
        cursor = reply.headers.getRawHeaders("x-next-cursor")
        if not cursor:
            break
        path = "/api/v2/devices?limit=2&cursor=%s&where=%s" % (
            cursor[0], quote('shadow.tags.run = "page"'))
    assert seen == ids


@pytest_twisted.ensureDeferred
async def test_bad_queries_get_400_with_where_and_what(server, admin):
    cases = [
        ("name =", 'where: at position 6: the query ends too soon: expected one of: a number, '
                   "a string, false, null, true"),
        ("name = 1 and colour = 2", "where: at position 14: unknown field colour: fields are "
                                    "id, name, online, last_seen, created, account_id, "
                                    "shared_with, info.KEY, shadow.desired.KEY, "
                                    "shadow.reported.KEY, shadow.tags.KEY, shadow.version"),
        ("name == 1", "where: at position 7: unexpected '=': expected one of: a number, a "
                      "string, false, null, true"),
        ('name = "x', "where: at position 8: a string that is not closed or holds a bad "
                      "escape: expected one of: a number, a string, false, null, true"),
    ]
    for where, message in cases:
        for path in ("/api/v2/devices?where=", "/api/v2/devices/count?where="):
            reply = await admin.get(path + quote(where))
            assert (reply.status, reply.error["message"]) == (400, message), where
    for query, message in [
        ("order=colour", "order must be one of created, -created, name, -name, id, -id, "
                         "last_seen, -last_seen"),
        ("limit=0", "limit must be 1 to 1000"),
        ("limit=x", "limit must be an integer"),
        ("cursor=nonsense", "cursor is not one this API gave"),
    ]:
        reply = await admin.get("/api/v2/devices?" + query)
        assert (reply.status, reply.error["message"]) == (400, message), query
    # The server carries on.
    assert (await admin.get("/api/v2/devices/count")).status == 200


@pytest_twisted.ensureDeferred
async def test_a_restricted_key_matches_only_what_it_may_read(server, admin):
    ids = await _fleet(admin, "cust")
    for device_id, temp in zip(ids, (30, 10, 30)):
        reply = await admin.post("/api/v2/devices/" + device_id,
                                 {"shadow": {"state": {"reported": {"temp": temp, "pin": 1}}}})
        assert reply.status == 200
    scope = {"devices": {ids[0]: {"read": ["temp"], "write": [], "rpc": []},
                         ids[1]: {"read": ["temp"], "write": [], "rpc": []},
                         ids[2]: {"read": [], "write": [], "rpc": []}}}
    cust = await _key(admin, kind="restricted", name="customer", scope=scope)
    assert await select(cust, "shadow.reported.temp > 20") == ids[:1]
    # The third device's temp is hidden from it: as if absent.
    assert await select(cust, "not shadow.reported.temp > 20") == ids[1:]
    assert await count(cust, "shadow.reported.pin exists") == 0
    for where, field in [('info.fw_version < "2"', "info.fw_version"),
                         ('shadow.tags.site = "berlin"', "shadow.tags.site"),
                         ("created > 0", "created")]:
        reply = await cust.get("/api/v2/devices?where=" + quote(where))
        assert reply.status == 400
        assert reply.error["message"] == (
            "where: this key may not query %s: a restricted key may query id, name, online, "
            "last_seen and the shadow keys it may read" % field)
    # A read-only key sees (and queries) what an admin sees.
    ro = await _key(admin, kind="read-only", name="ro")
    assert await select(ro, 'shadow.tags.run = "cust" and shadow.tags.site = "berlin"') \
        == ids[:2]
