"""
Stored data, the device history and OTA status in the stores (SQLite on
real files, and PostgreSQL): migration 0003, the paging windows, visibility across accounts,
retention; and the pure parts (which reported values are saved, who sees
which notification).
"""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted

from dashd.domain import shadow, timeseries, tokens
from dashd.channel.hub import Event, LocalHub
from dashd.domain.model import Account, ApiKey, Device
from dashd.store.sqlite import migrate

import backends


@pytest.fixture(params=backends.STORES)
def store(request, tmp_path):
    """The store on each backend (SQLite, PostgreSQL): the same results."""
    from test_store import open_store

    s, cleanup = open_store(request.param, tmp_path)
    yield s
    pytest_twisted.blockon(s.stop())
    cleanup()


async def _devices(store, shared_with=("b",)):
    account = Account("a", "acme", 1.0)
    await store.bootstrap_admin_key(ApiKey("k", "a", "admin", "admin", 1.0), "h" * 64, account)
    one = Device(tokens.new_id("d"), "a", "one", 2.0)
    two = Device(tokens.new_id("d"), "a", "two", 2.0, shared_with=shared_with)
    await store.create_device(one, "t" * 64)
    await store.create_device(two, "u" * 64)
    return one, two


def report(patch):
    return shadow.ShadowUpdate({"reported": patch})


# Migration 0003


def test_migration_3_creates_the_tables_and_cascades(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "m.sqlite3"), isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"data_points", "device_events", "ota_status"} <= tables
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"data_points_device", "data_points_account", "device_events_device",
            "device_events_account"} <= indexes
    conn.execute("INSERT INTO accounts (id, name, created) VALUES ('a', 'a', 1)")
    conn.execute("INSERT INTO devices (id, account_id, name, token_hash, created, shadow)"
                 " VALUES ('d1', 'a', 'd', 'h', 1, '{}')")
    conn.execute("INSERT INTO data_points (device_id, account_id, t, key, value)"
                 " VALUES ('d1', 'a', 1, 'k', '1')")
    conn.execute("INSERT INTO device_events (device_id, account_id, t, name, data)"
                 " VALUES ('d1', 'a', 1, 'online', 'null')")
    conn.execute("INSERT INTO ota_status VALUES ('d1', 'failed', '{}', 1)")
    conn.execute("DELETE FROM devices WHERE id = 'd1'")
    for table in ("data_points", "device_events", "ota_status"):
        assert conn.execute("SELECT count(*) FROM %s" % table).fetchone()[0] == 0
    # The query plans use the indexes, not a scan of the table.
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM data_points WHERE account_id = 'a'"
        " ORDER BY id DESC LIMIT 10"))
    assert "data_points_account" in plan and "TEMP B-TREE" not in plan
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM data_points WHERE device_id = 'd' AND"
        " instr(key, 'x') > 0 ORDER BY id LIMIT 10 OFFSET 5"))
    assert "data_points_device" in plan and "TEMP B-TREE" not in plan


# Stored data


@pytest_twisted.ensureDeferred
async def test_points_are_saved_with_the_report_and_windowed_like_slices(store):
    one, _ = await _devices(store)
    await store.update_device(one.id, None, None,
                              shadow.ShadowUpdate({"tags": {"save": ["n"]}}), 3.0)
    for i in range(12):
        await store.update_shadow(one.id, report({"n": i, "x": 1}), 10.0 + i, save_data=True)
    # Not from the device: nothing saved.
    await store.update_shadow(one.id, report({"n": 99}), 50.0)
    values = list(range(12))
    for skip in range(-15, 15):
        for limit in (1, 2, 5, 20):
            points = await store.query_data("a", one.id, skip, limit, None)
            assert [p["value"] for p in points] == values[skip:][:limit], (skip, limit)
    points = await store.query_data("a", one.id, 0, 1, None)
    assert points == [{"device_id": one.id, "timestamp": 10.0, "key": "n", "value": 0}]
    points = await store.query_data("a", one.id, -2, 5, "1")
    assert [p["value"] for p in points] == [10, 11]


@pytest_twisted.ensureDeferred
async def test_what_an_account_sees(store):
    one, two = await _devices(store, shared_with=("b",))
    for device in (one, two):
        await store.update_device(device.id, None, None,
                                  shadow.ShadowUpdate({"tags": {"save": ["v"]}}), 3.0)
        await store.update_shadow(device.id, report({"v": device.name}), 4.0, save_data=True)
        await store.append_event(device.id, "a", "rpc.out.Log", {"d": device.name}, 4.0, 10)
    owner = await store.query_data("a", None, 0, 10, None)
    assert [p["value"] for p in owner] == ["one", "two"]
    shared = await store.query_data("b", None, 0, 10, None)
    assert [p["value"] for p in shared] == ["two"]
    assert await store.query_data("c", None, 0, 10, None) == []
    events, _ = await store.query_events("b", None, 0, 10)
    assert [e["data"] for e in events] == [{"d": "two"}]
    events, _ = await store.query_events("c", None, -5, 10)
    assert events == []


@pytest_twisted.ensureDeferred
async def test_retention_deletes_old_points_in_batches(store):
    one, _ = await _devices(store)
    await store.update_device(one.id, None, None,
                              shadow.ShadowUpdate({"tags": {"save": ["n"]}}), 3.0)
    for i in range(25):
        await store.update_shadow(one.id, report({"n": i}), 100.0 + i, save_data=True)
    assert await store.prune_data(50.0, 10) == 0
    assert await store.prune_data(115.0, 10) == 10
    assert await store.prune_data(115.0, 10) == 5
    assert await store.prune_data(115.0, 10) == 0
    points = await store.query_data("a", one.id, 0, 100, None)
    assert [p["value"] for p in points] == list(range(15, 25))


# Device events


@pytest_twisted.ensureDeferred
async def test_events_keep_the_last_n_per_device_with_stable_offsets(store):
    one, two = await _devices(store)
    offsets = []
    for i in range(8):
        offsets.append(await store.append_event(one.id, "a", "rpc.out.Log", i, 1.0, 5))
        await store.append_event(two.id, "a", "rpc.out.Log", 100 + i, 1.0, 5)
    events, following = await store.query_events("a", one.id, 0, 100)
    assert [e["data"] for e in events] == [3, 4, 5, 6, 7]
    assert [e["offset"] for e in events] == offsets[3:]
    assert following == offsets[-1] + 1
    # Deleting the device with the newest event does not reuse its offset.
    await store.delete_device(two.id)
    new = await store.append_event(one.id, "a", "rpc.out.Log", 8, 1.0, 5)
    assert new > offsets[-1] + 1
    # A deleted device's late event (its "offline") is not stored.
    assert await store.append_event(two.id, "a", "offline", None, 1.0, 5) == 0
    events, following = await store.query_events("a", None, new + 1, 10)
    assert events == [] and following == new + 1
    events, following = await store.query_events("a", None, -1, 10)
    assert [e["data"] for e in events] == [8] and following == new + 1


@pytest_twisted.ensureDeferred
async def test_events_appended_together_keep_the_last_n(store):
    """Appends asked together (one transaction on PostgreSQL, where each
    appends and trims in one statement): the last N of each device stay."""
    from twisted.internet.defer import gatherResults

    one, two = await _devices(store)
    offsets = await gatherResults(
        [store.append_event(d.id, "a", "online", i, 1.0, 3) for i in range(7) for d in (one, two)]
        + [store.append_event(one.id, "a", "only", 0, 1.0, 1)])
    events, _ = await store.query_events("a", one.id, 0, 100)
    assert [e["data"] for e in events] == [0]
    assert [e["offset"] for e in events] == offsets[-1:]
    events, _ = await store.query_events("a", two.id, 0, 100)
    assert [e["data"] for e in events] == [4, 5, 6]


# OTA status


@pytest_twisted.ensureDeferred
async def test_ota_status(store):
    one, _ = await _devices(store)
    assert await store.get_ota_status(one.id) is None
    status = {"id": "o1", "device_id": one.id, "state": "uploading", "percent": 5}
    assert await store.set_ota_status(one.id, status, 1.0) is True
    status = dict(status, state="rebooting")
    assert await store.set_ota_status(one.id, status, 2.0) is True
    assert await store.get_ota_status(one.id) == status
    assert await store.ota_statuses(("rebooting",)) == [status]
    assert await store.ota_statuses(("uploading",)) == []
    assert await store.set_ota_status("dgone", status, 3.0) is False


# Pure parts


@pytest.mark.parametrize("save, patch, expected", [
    (["t"], {"t": 1, "u": 2}, [("t", 1)]),
    (["a.b"], {"a": {"b": {"c": 1}}}, [("a.b", {"c": 1})]),
    (["a.b"], {"a": {"c": 1}}, []),
    (["a.b"], {"a": 5}, []),
    (["a"], {"a": None}, []),
    (["a", "b"], {"b": False, "a": 0}, [("a", 0), ("b", False)]),
    ([], {"a": 1}, []),
])
def test_reported_points(save, patch, expected):
    assert timeseries.reported_points(save, patch) == expected


def test_saved_keys_ignores_junk():
    assert timeseries.saved_keys({"save": ["a", 3, "", "a", "b.c"]}) == ["a", "b.c"]
    assert timeseries.saved_keys({"save": "a"}) == []
    assert timeseries.saved_keys(None) == []


def test_subscribers_get_only_what_their_key_may_see():
    """Stored-data events (ota.*, rpc.out.*) follow the notification rules."""
    from dashd.domain import access

    hub = LocalHub()

    class Sub:
        def __init__(self, account):
            self.key = ApiKey("k" + account, account, "", "admin", 0.0)
            self.got = []

        def deliver(self, event):
            if access.event_payload(self.key, event) is not None:
                self.got.append(event.device_id)

    owner, partner, stranger = Sub("a"), Sub("b"), Sub("c")
    for s in (owner, partner, stranger):
        hub.subscribe(s)
    hub.publish(Event("ota.status", "d1", {}, "a", ()))
    hub.publish(Event("rpc.out.Log", "d2", {}, "a", ("b",)))
    hub.publish(Event("ota.progress", "d3", {}, "c", ()))
    assert owner.got == ["d1", "d2"]
    assert partner.got == ["d2"]
    assert stranger.got == ["d3"]


@pytest_twisted.ensureDeferred
async def test_retention_job(store):
    from twisted.internet.task import Clock

    from dashd.app.retention import DAY, DataRetention

    one, _ = await _devices(store)
    await store.update_device(one.id, None, None,
                              shadow.ShadowUpdate({"tags": {"save": ["n"]}}), 3.0)
    for i in range(5):
        await store.update_shadow(one.id, report({"n": i}), 1000.0 + i * DAY, save_data=True)
    clock = Clock()
    clock.advance(1000.0 + 4 * DAY + 1)
    assert await DataRetention(store, clock, days=0).run() == 0  # keeps everything
    assert await DataRetention(store, clock, days=2).run() == 3
    points = await store.query_data("a", one.id, 0, 10, None)
    assert [p["value"] for p in points] == [3, 4]
