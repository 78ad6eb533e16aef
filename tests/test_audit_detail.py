"""
The audit log's details (issue 19 item 9): what a change touched, in names
("renamed X to Y", "changed desired.led"), never the values written; on
both stores.
"""

from __future__ import annotations

import pytest_twisted

from support import SECRETS, Client, eventually


async def _entries(admin: Client, device_id: str) -> list:
    reply = await admin.get("/api/v2/audit?start=-50&limit=50")
    assert reply.status == 200, reply
    return [e for e in reply.body["entries"] if e["device_id"] == device_id]


@pytest_twisted.ensureDeferred
async def test_changes_are_recorded_in_names(server, admin: Client):
    reply = await admin.post("/api/v2/devices", {"name": "audit-boiler"})
    assert reply.status == 200, reply
    device_id = reply.body["id"]
    SECRETS.add(reply.body["token"])
    for body in ({"name": "audit-boiler 2"},
                 {"shadow": {"state": {"desired": {"led": {"on": True}, "fan": "auto"}}}},
                 {"shadow": {"tags": {"save": ["temp"]}}},
                 {"shared_with": ""}):
        reply = await admin.post("/api/v2/devices/" + device_id, body)
        assert reply.status == 200, reply
    # A refused change is recorded as refused, with what it tried.
    reply = await admin.post("/api/v2/devices/" + device_id,
                             {"shadow": {"state": {"desired": {"x": 1}}, "version": 999}})
    assert reply.status == 409
    await admin.post("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id, {})
    async def all_in() -> list:
        entries = await _entries(admin, device_id)
        return entries if len(entries) >= 6 else None

    entries = await eventually(all_in)
    details = [(e["method"], e["status"], e["detail"]) for e in entries]
    assert details[0] == ("POST", 200, {"name": ["audit-boiler", "audit-boiler 2"]})
    assert details[1] == ("POST", 200, {"changed": ["desired.led.on", "desired.fan"]})
    assert details[2] == ("POST", 200, {"changed": ["tags.save"]})
    assert details[3] == ("POST", 200, {"sharing": True})
    assert details[4] == ("POST", 409, {"changed": ["desired.x"]})
    assert details[5][:2] == ("POST", 503) and details[5][2] is None  # offline: no call
    # Registering: the new name (the entry has no device in its path).
    reply = await admin.get("/api/v2/audit?start=-50&limit=50")
    registered = [e for e in reply.body["entries"]
                  if e["path"] == "/api/v2/devices" and e["detail"] == {"name": [None, "audit-boiler"]}]
    assert len(registered) == 1
