"""
The audit log: every change and every device call made through the REST
API, with who, what, which device, when and the outcome; readable by admin
keys of the same account only.
"""

from __future__ import annotations

import time

from typing import Any

import pytest_twisted
from twisted.logger import capturedLogs

from support import SECRETS, Client, connect_device, device_online, eventually


async def _entries(admin: Client, **query) -> list[dict]:
    args = "&".join("%s=%s" % kv for kv in query.items())
    reply = await admin.get("/api/v2/audit" + ("?" + args if args else ""))
    assert reply.status == 200, reply
    return reply.body["entries"]


@pytest_twisted.ensureDeferred
async def test_changes_and_calls_are_recorded(server, admin: Client):
    started = time.time()
    key_id = (await admin.get("/api/v2/whoami")).body["id"]
    device_id, token = await admin.register("audited")
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        await admin.post("/api/v2/devices/%s/rpc/GPIO.Toggle" % device_id, {"pin": 3})
        await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
        await admin.post("/api/v2/devices/%s/rpc/Sim.Fail" % device_id, {"code": 7, "message": "no"})
        await admin.post("/api/v2/devices/" + device_id, {"shadow": {"version": 999, "tags": {}}})
        await admin.get("/api/v2/devices/" + device_id)  # a read: not recorded
        reply = await admin.post("/api/v2/logs", {"start": -5, "device_id": device_id})
        assert reply.status == 200  # a read too, though a POST
        made = await admin.post("/api/v2/devices?access_token=" + admin.key, {"name": "q"},
                                key=None)
        SECRETS.add(made.body["token"])
    finally:
        await sim.stop()

    async def recorded() -> list[dict]:
        entries = await _entries(admin, start=-20)
        return entries if any(e["path"].endswith("/rpc/Sim.Fail") for e in entries) and \
            sum(1 for e in entries if e["path"] == "/api/v2/devices") >= 2 else []

    entries = await eventually(recorded)
    mine = [e for e in entries if e["device_id"] == device_id or e["path"] == "/api/v2/devices"]
    actions = [(e["method"], e["path"].replace(device_id, "ID"), e["status"]) for e in mine]
    assert ("POST", "/api/v2/devices", 200) in actions
    assert ("POST", "/api/v2/devices/ID/rpc/GPIO.Toggle", 200) in actions
    assert ("GET", "/api/v2/devices/ID/rpc/Sys.GetInfo", 200) in actions
    assert ("POST", "/api/v2/devices/ID/rpc/Sim.Fail", 502) in actions
    assert ("POST", "/api/v2/devices/ID", 409) in actions
    assert ("GET", "/api/v2/devices/ID", 200) not in actions
    assert not any(e["path"] == "/api/v2/logs" for e in entries)
    failed = [e for e in mine if e["status"] == 502][0]
    assert failed["error"] == "no" and failed["key_id"] == key_id
    conflict = [e for e in mine if e["status"] == 409][0]
    assert "stale" in conflict["error"]
    assert all(e["timestamp"] >= started - 1 for e in mine)
    # The query string (it may hold the key) is never kept.
    assert all("?" not in e["path"] and "access_token" not in str(e) for e in entries)
    # Offsets page forward.
    first = entries[0]["offset"]
    page = await _entries(admin, start=first, limit=2)
    assert [e["offset"] for e in page] == [first, entries[1]["offset"]]


@pytest_twisted.ensureDeferred
async def test_what_a_sharee_does_is_in_both_accounts_logs(server, admin: Client):
    """The owner's log showed nothing a sharee did to the owner's devices;
    and entries kept a percent-encoded device ID as it was sent."""
    created = await admin.post("/api/v2/accounts", {"name": "sharee"})
    SECRETS.add(created.body["admin_key"]["key"])
    sharee = Client(server, created.body["admin_key"]["key"])
    sharee_key = (await sharee.get("/api/v2/whoami")).body["id"]
    owner_account = (await admin.get("/api/v2/whoami")).body["account_id"]
    device_id, token = await admin.register("shared and audited")
    await admin.post("/api/v2/devices/" + device_id, {"shared_with": created.body["id"]})
    own_device, _ = await sharee.register("the sharee's own")
    sim = await connect_device(server, token)
    # The last character percent-encoded: the same device for the routes.
    encoded = device_id[:-1] + "%%%02X" % ord(device_id[-1])
    try:
        await device_online(admin, device_id)
        assert (await sharee.post("/api/v2/devices/%s/rpc/Sim.Echo" % encoded, [1])).status == 200
        assert (await sharee.post("/api/v2/devices/%s/rpc/Sys.Reboot" % device_id)).status == 403
        reply = await sharee.post("/api/v2/devices/" + encoded,
                                  {"shadow": {"state": {"desired": {"on": 1}}}})
        assert reply.status == 200
        assert (await sharee.post("/api/v2/devices/" + device_id, {"name": "x"})).status == 403
        assert (await sharee.delete("/api/v2/devices/" + device_id)).status == 403
        assert (await sharee.post("/api/v2/devices/%s/rpc/Sim.Echo" % own_device)).status == 503
    finally:
        await sim.stop()
    expected = [("POST", "/rpc/Sim.Echo", 200), ("POST", "/rpc/Sys.Reboot", 403),
                ("POST", "", 200), ("POST", "", 403), ("DELETE", "", 403)]

    def about(entries: list[dict]) -> list[tuple[str, str, int]]:
        return [(e["method"], e["path"].split(device_id if device_id in e["path"] else encoded,
                                              1)[1], e["status"])
                for e in entries if e["device_id"] == device_id and e["key_id"] == sharee_key]

    async def in_both() -> Any:
        owner = await _entries(admin, start=-50)
        theirs = await _entries(sharee, start=-50)
        # The sharee's call to its own device came last: its entry may be in a
        # later batch of the audit log than the others (dashd.app.audit).
        done = (len(about(owner)) >= 5 and len(about(theirs)) >= 5
                and any(e["device_id"] == own_device for e in theirs))
        return (owner, theirs) if done else None

    owner, theirs = await eventually(in_both)
    assert about(owner) == expected and about(theirs) == expected
    for entry in [e for e in owner if e["key_id"] == sharee_key]:
        assert entry["key_account"] == created.body["id"]
    for entry in [e for e in theirs if e["device_id"] == device_id]:
        assert entry["key_account"] == created.body["id"]
    # What the sharee did to its own device stays in its own log.
    assert any(e["device_id"] == own_device for e in theirs)
    assert not any(e["device_id"] == own_device for e in owner)
    assert all(e["key_account"] == owner_account for e in owner if e["key_id"] != sharee_key)
    assert not any("%" in (e["device_id"] or "") for e in owner + theirs)


@pytest_twisted.ensureDeferred
async def test_only_admins_read_their_own_account(server, admin: Client):
    reader = await admin.post("/api/v2/keys", {"kind": "read-only"})
    SECRETS.add(reader.body["key"])
    reply = await Client(server, reader.body["key"]).get("/api/v2/audit")
    assert reply.status == 403
    assert reply.error["message"] == "only admin keys may read the audit log; this key is read-only"
    other = await admin.post("/api/v2/accounts", {"name": "audit-other"})
    SECRETS.add(other.body["admin_key"]["key"])
    stranger = Client(server, other.body["admin_key"]["key"])
    made = await stranger.post("/api/v2/devices", {"name": "theirs"})
    SECRETS.add(made.body["token"])
    # Entries are written once the answer is sent: wait for it.
    theirs = await eventually(lambda: _entries(stranger, start=-50))
    assert all(e["key_id"] == other.body["admin_key"]["id"] for e in theirs)
    ours = await _entries(admin, start=-200, limit=1000)
    assert not any(e["key_id"] == other.body["admin_key"]["id"] for e in ours)
    for bad, message in (("start=x", "start must be an integer"),
                         ("limit=0", "limit must be between 1 and 1000"),
                         ("limit=5000", "limit must be between 1 and 1000")):
        reply = await admin.get("/api/v2/audit?" + bad)
        assert (reply.status, reply.error["message"]) == (400, message)


# AuditLog alone, with a recording store and a fake clock.


class _RecordingStore:
    def __init__(self) -> None:
        self.jobs: list[list[dict]] = []
        self.fail = False

    def append_audit(self, entries: list[dict]) -> Any:
        from twisted.internet.defer import fail, succeed

        self.jobs.append(list(entries))
        return fail(RuntimeError("disk full")) if self.fail else succeed(len(entries))


def _entry(path: str) -> dict:
    from dashd.api.audit import entry_for

    return entry_for(_Request(path), 0.0)


class _Request:
    def __init__(self, path: str) -> None:
        from dashd.domain.model import ApiKey

        self.dashd_key = ApiKey(id="k1", account_id="a1", name="n", kind="admin", created=0.0)
        self.method = b"POST"
        self.path = path.encode()
        self.code = 200


def test_entries_of_one_window_are_one_store_job():
    """Entries that come a reactor turn apart (one device called one request
    at a time) share a store job: a job each cost more than the calls."""
    from twisted.internet.task import Clock

    from dashd.app.audit import BATCH_DELAY, AuditLog

    store, clock = _RecordingStore(), Clock()
    audit = AuditLog(store, clock)
    for i in range(3):
        audit.record(_entry("/api/v2/devices/d%d/rpc/X" % i))
        clock.advance(0)
    assert store.jobs == [] and audit.pending == 3
    clock.advance(BATCH_DELAY)
    assert [[e["device_id"] for e in job] for job in store.jobs] == [["d0", "d1", "d2"]]
    assert audit.pending == 0
    audit.record(_entry("/api/v2/devices/d3/rpc/X"))
    clock.advance(BATCH_DELAY)
    assert [len(job) for job in store.jobs] == [3, 1]


def test_a_full_batch_goes_at_once():
    from twisted.internet.task import Clock

    from dashd.app.audit import BATCH_MAX, AuditLog

    store, clock = _RecordingStore(), Clock()
    audit = AuditLog(store, clock)
    for i in range(BATCH_MAX + 1):
        audit.record(_entry("/api/v2/devices/d%d/rpc/X" % i))
    assert [len(job) for job in store.jobs] == [BATCH_MAX]
    assert audit.pending == 1


def test_stopping_hands_over_what_waits_and_failures_count_every_entry():
    from twisted.internet.task import Clock

    from dashd.app.audit import BATCH_DELAY, AuditLog

    store, clock = _RecordingStore(), Clock()
    audit = AuditLog(store, clock)
    audit.startService()
    audit.record(_entry("/api/v2/devices/d1"))
    audit.stopService()  # before the reactor turns again: the store is still open
    assert [len(job) for job in store.jobs] == [1]
    assert clock.getDelayedCalls() == []
    store.fail = True
    audit.record(_entry("/api/v2/devices/d2"))
    audit.record(_entry("/api/v2/devices/d3"))
    with capturedLogs() as events:
        clock.advance(BATCH_DELAY)
    assert audit.pending == 0
    [warning] = [e for e in events if e["log_namespace"] == "dashd.app.audit"]
    assert (warning["count"], warning["why"]) == (2, "disk full")
    # dashd_audit_entries_lost_total counts every entry of the batch too.
    assert audit.lost_total == 2


class _AwayStore(_RecordingStore):
    """Its database is away (StoreUnreachable) until told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.away = True

    def append_audit(self, entries: list[dict]) -> Any:
        from twisted.internet.defer import fail, succeed

        from dashd.store import StoreUnreachable

        self.jobs.append(list(entries))
        if self.away:
            return fail(StoreUnreachable("the database is unreachable: refused"))
        return succeed(len(entries))


def test_entries_wait_for_a_database_that_is_away_and_none_is_lost():
    from twisted.internet.task import Clock

    from dashd.app.audit import RETRY_INTERVAL, AuditLog

    store, clock = _AwayStore(), Clock()
    audit = AuditLog(store, clock)
    audit.startService()
    with capturedLogs() as events:
        audit.record(_entry("/api/v2/devices/d1"))
        clock.advance(0)
        audit.record(_entry("/api/v2/devices/d2"))
        clock.advance(0)
        assert audit.pending == 2
        for _ in range(5):  # 5 s of outage: tried again each second
            clock.advance(RETRY_INTERVAL)
        assert audit.pending == 2 and audit.lost_total == 0
        store.away = False
        clock.advance(RETRY_INTERVAL)
    assert audit.pending == 0 and audit.lost_total == 0
    assert [e["device_id"] for e in store.jobs[-1]] == ["d1", "d2"]
    assert not [e for e in events if e["log_namespace"] == "dashd.app.audit"]
    assert clock.getDelayedCalls() == []


def test_entries_still_waiting_when_dashd_stops_are_said_lost():
    from twisted.internet.task import Clock

    from dashd.app.audit import AuditLog

    store, clock = _AwayStore(), Clock()
    audit = AuditLog(store, clock)
    audit.startService()
    audit.record(_entry("/api/v2/devices/d1"))
    clock.advance(0)
    with capturedLogs() as events:
        audit.stopService()
    assert audit.pending == 0 and audit.lost_total == 1
    [warning] = [e for e in events if e["log_namespace"] == "dashd.app.audit"]
    assert warning["count"] == 1 and "unreachable" in warning["why"]
    assert clock.getDelayedCalls() == []
