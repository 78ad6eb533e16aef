"""
Time-range queries of stored data in the stores (SQLite and PostgreSQL, the
same results; dashd.store.ranges_sql): buckets read from the per-minute
summaries agree with aggregating every point, whatever the range's ends
and the bucket's width; raw points in time order over devices, with where
to continue; migration 0011 summarising points stored before it; retention
and deletion dropping the summaries. The REST side is in test_data_ranges.py.
"""

from __future__ import annotations

import math
import random
import sqlite3

import pytest
import pytest_twisted

from dashd.domain import shadow, timeseries, tokens
from dashd.domain.model import Device
from dashd.store import ranges_sql
from dashd.store.calls_sql import Db
from dashd.store.sqlite import migrate

import backends
from test_series import _devices


@pytest.fixture(params=backends.STORES + ["inline"])
def store(request, tmp_path):
    from test_store import open_store

    s, cleanup = open_store(request.param, tmp_path)
    yield s
    pytest_twisted.blockon(s.stop())
    cleanup()


def _expected(points, start, end, bucket):
    """Buckets computed from the points themselves: {(key, t): (count, min, max, avg)}."""
    cells: dict = {}
    for t, key, value in points:
        if not start <= t < end:
            continue
        b = math.floor(t / bucket) * bucket
        cell = cells.setdefault((key, b), [0, []])
        cell[0] += 1
        if timeseries.is_number(value):
            cell[1].append(float(value))
    return {k: (n, min(v) if v else None, max(v) if v else None,
                sum(v) / len(v) if v else None) for k, (n, v) in cells.items()}


def _got(series):
    out = {}
    for s in series:
        for i, t in enumerate(s["t"]):
            out[(s["key"], t)] = (s["count"][i], s["min"][i], s["max"][i], s["avg"][i])
    return out


def _same(got, expected):
    assert set(got) == set(expected)
    for k, (n, lo, hi, avg) in expected.items():
        g = got[k]
        assert g[0] == n and g[1] == lo and g[2] == hi, (k, g, expected[k])
        assert (g[3] is None) == (avg is None) and (avg is None or abs(g[3] - avg) < 1e-9), k


@pytest_twisted.ensureDeferred
async def test_buckets_agree_with_the_points_whatever_the_range_and_width(store):
    one, two = await _devices(store)
    rng = random.Random(19)
    stored = []
    t = 6000.0 + 0.25
    for i in range(600):
        t += rng.choice([0.5, 3, 7, 29, 61])
        report = {"temp": round(rng.uniform(-10, 40), 2), "mode": rng.choice(["a", "b"]),
                  "env": {"hum": rng.randint(0, 100)}}
        if i % 50 == 7:
            report["temp"] = True  # not a number: counted, not in min/max/avg
        await store.append_points(one.id, "a", list(report.items()), t)
        for key, value in report.items():
            stored.append((t, key, value))
    span = (6000.0, t + 1)
    for start, end in [span, (6031.5, 9000.0), (6600.0, 12000.0), (7000.25, 7000.75),
                       (9999.0, 10001.0), (t + 5, t + 500)]:
        for bucket in (1, 7, 60, 120, 3600):
            if (end - start) / bucket > 10000:
                continue
            series = await store.query_buckets([(one.id, None)], start, end, bucket)
            assert all(s["device_id"] == one.id for s in series)
            _same(_got(series), _expected(stored, start, end, bucket))
            for s in series:
                assert s["t"] == sorted(s["t"]) and all(x % bucket == 0 for x in s["t"])
    # Keys: a dotted path covers its sub-keys; a key of no point, nothing.
    series = await store.query_buckets([(one.id, ["temp", "env"])], *span, 3600)
    assert sorted({s["key"] for s in series}) == ["env", "temp"]
    series = await store.query_buckets([(one.id, ["nothing"]), (two.id, None)], *span, 60)
    assert series == []


@pytest_twisted.ensureDeferred
async def test_reported_values_are_summarised_too(store):
    one, two = await _devices(store)
    for device in (one, two):
        await store.update_device(device.id, None, None,
                                  shadow.ShadowUpdate({"tags": {"save": ["v"]}}), 3.0)
    for i in range(10):
        await store.update_shadow(one.id, shadow.ShadowUpdate({"reported": {"v": i}}),
                                  120.0 + 10 * i, save_data=True)
        await store.update_shadow(two.id, shadow.ShadowUpdate({"reported": {"v": -i}}),
                                  125.0 + 10 * i, save_data=True)
    series = await store.query_buckets([(one.id, None), (two.id, ["v"])], 0.0, 1000.0, 60)
    assert [(s["device_id"], s["t"], s["count"], s["min"], s["max"], s["avg"]) for s in series] == [
        (one.id, [120, 180], [6, 4], [0, 6], [5, 9], [2.5, 7.5]),
        (two.id, [120, 180], [6, 4], [-5, -9], [0, -6], [-2.5, -7.5]),
    ]


@pytest_twisted.ensureDeferred
async def test_raw_points_in_time_order_over_devices_and_where_to_go_on(store):
    one, two = await _devices(store)
    for i in range(10):
        await store.append_points(one.id, "a", [("x", i), ("y", str(i))], 100.0 + 2 * i)
        await store.append_points(two.id, "a", [("x", 100 + i)], 101.0 + 2 * i)
    sel = [(one.id, ["x"]), (two.id, None)]
    series, following = await store.query_range(sel, 100.0, 200.0, 100)
    assert following is None
    assert [(s["device_id"], s["key"]) for s in series] == [(one.id, "x"), (two.id, "x")]
    assert series[0]["t"] == [100.0 + 2 * i for i in range(10)]
    assert series[1]["value"] == [100 + i for i in range(10)]
    # Paging: the first 5 points in time (3 of one, 2 of two), then from `next`.
    series, following = await store.query_range(sel, 100.0, 200.0, 5)
    assert following == 105.0
    assert {s["device_id"]: s["value"] for s in series} == {one.id: [0, 1, 2], two.id: [100, 101]}
    series, following = await store.query_range(sel, following, 200.0, 5)
    assert {s["device_id"]: s["t"][0] for s in series} == {one.id: 106.0, two.id: 105.0}
    # A time several points share is never cut in two: they go to the next page.
    series, following = await store.query_range([(one.id, None)], 100.0, 200.0, 3)
    assert following == 102.0 and [s["value"] for s in series] == [[0], ["0"]]
    # More points at one instant than the limit: the limit of them, then on.
    series, following = await store.query_range([(one.id, None)], 100.0, 200.0, 1)
    assert [s["value"] for s in series] == [[0]] and 100.0 < following < 100.001


@pytest_twisted.ensureDeferred
async def test_retention_and_deletion_drop_the_summaries(store):
    one, two = await _devices(store)
    for i in range(30):
        await store.append_points(one.id, "a", [("x", i)], 600.0 + 30 * i)
        await store.append_points(two.id, "a", [("x", i)], 600.0 + 30 * i)
    assert await store.prune_data(900.0, 1000) == 20
    series = await store.query_buckets([(one.id, None)], 0.0, 5000.0, 60)
    assert series[0]["t"][0] == 900 and sum(series[0]["count"]) == 20
    await store.delete_device(two.id)
    assert await store.query_buckets([(two.id, None)], 0.0, 5000.0, 60) == []


def test_migration_11_summarises_the_points_stored_before_it(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "m.sqlite3"), isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn, upto=10)
    conn.execute("INSERT INTO accounts (id, name, created) VALUES ('a', 'a', 1)")
    conn.execute("INSERT INTO devices (id, account_id, name, token_hash, created, shadow)"
                 " VALUES ('d1', 'a', 'd', 'h', 1, '{}')")
    rows = [("d1", "a", 60.0 + i * 7, "k", v) for i, v in
            enumerate(["1", "2.5", '"s"', "true", "-4", "{\"a\":1}", "10"])]
    conn.executemany("INSERT INTO data_points (device_id, account_id, t, key, value)"
                     " VALUES (?, ?, ?, ?, ?)", rows)
    migrate(conn)
    assert conn.execute("SELECT minute, n_all, n_num, total, lo, hi FROM data_minutes"
                        " ORDER BY minute").fetchall() == [(60, 7, 4, 9.5, -4.0, 10.0)]
    got = ranges_sql.buckets(Db(conn, "sqlite"), [("d1", None)], 0.0, 600.0, 60)
    assert got == [{"device_id": "d1", "key": "k", "t": [60], "count": [7], "min": [-4.0],
                    "max": [10.0], "avg": [9.5 / 4]}]
    # Ranges over whole minutes read the summaries (and the time index).
    plan = " ".join(r[3] for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM data_points WHERE device_id = 'd1' AND t >= 1"
        " AND t < 2 ORDER BY t, id"))
    assert "data_points_device_t" in plan and "TEMP B-TREE" not in plan


def test_minute_rows_keep_numbers_apart_from_the_rest():
    rows = timeseries.minute_rows([("a", 1), ("a", 2.5), ("a", "3"), ("b", False),
                                   ("b", float("inf")), ("a", -1)], 125.5)
    assert rows == [("a", 120, 4, 3, 2.5, -1.0, 2.5), ("b", 120, 2, 0, 0.0, None, None)]


class _Counting:
    """A cursor that counts the statements sent through it."""

    def __init__(self, cursor):
        self.cursor = cursor
        self.statements = 0

    def execute(self, *args, **kwargs):
        self.statements += 1
        return self.cursor.execute(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.cursor, name)


@pytest_twisted.ensureDeferred
async def test_buckets_of_several_devices_and_keys_in_one_statement_on_postgresql(store):
    """The chart of a week of ten devices was two statements a device and
    one more a key on PostgreSQL (a round trip each): one now, with the
    same answer, in the selection's order of devices and keys' order."""
    from dashd.store.postgres import PostgresStore

    if not isinstance(store, PostgresStore):
        pytest.skip("the statements counted are PostgreSQL's")
    one, two = await _devices(store)
    three = Device(tokens.new_id("d"), "a", "three", 2.0)
    await store.create_device(three, "v" * 64)
    stored: dict = {one.id: [], two.id: [], three.id: []}
    rng = random.Random(7)
    t = 60000.0 + 0.5
    for i in range(300):
        t += rng.choice([1, 3, 17, 59])
        for device in (one, two, three):
            # "env" covers env.hum and env.co2, not environment.
            points = [("temp", round(rng.uniform(0, 30), 2)), ("env.hum", rng.randint(0, 99)),
                      ("env.co2", rng.randint(400, 900)), ("mode", "ok"), ("environment", 1)]
            await store.append_points(device.id, "a", points, t)
            stored[device.id] += [(t, k, v) for k, v in points]
    selection = [(three.id, ["temp"]), (one.id, None), (two.id, ["env"])]
    for start, end, bucket in [(60000.0, t + 1, 600), (60031.5, t - 100.25, 60),
                               (60100.0, 61000.0, 7)]:
        counting = []

        def job(cur):
            c = _Counting(cur)
            counting.append(c)
            return ranges_sql.buckets(Db(c, "postgresql"), selection, start, end, bucket)

        series = await store._run(job)
        assert counting[0].statements == 1
        assert series == await store.query_buckets(selection, start, end, bucket)
        # Devices in the selection's order, each one's keys in order.
        order = [(s["device_id"], s["key"]) for s in series]
        assert order == [(three.id, "temp")] + [(one.id, k) for k in sorted(
            {"temp", "env.hum", "env.co2", "mode", "environment"})] + [
            (two.id, "env.co2"), (two.id, "env.hum")]
        for device_id, keys in selection:
            points = [p for p in stored[device_id]
                      if keys is None or timeseries.covers(keys, p[1])]
            _same(_got([s for s in series if s["device_id"] == device_id]),
                  _expected(points, start, end, bucket))
