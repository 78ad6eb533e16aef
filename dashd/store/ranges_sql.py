"""
Time-range queries of stored data, one implementation for SQLite and
PostgreSQL (each job is a function of a L{dashd.store.calls_sql.Db}).
Schema: ``migrations/0011_ranges_and_sessions.sql`` and
``migrations_pg/0009_ranges_and_sessions.sql``.

Every point stored also adds to its device's, key's and minute's summary
in ``data_minutes`` (in the same transaction, L{add_minutes}). A query in
buckets whose width is a whole number of minutes reads the summaries of
the whole minutes of its range and the raw points of the partial minutes
at its two ends only: a week of 3-second data is 10,080 summary rows a key
instead of 201,600 points, and the answer is exactly what aggregating the
points would give. Narrower buckets, and raw points, read C{data_points}
through its C{(device_id, t)} index, a bounded range of it.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

from dashd.domain import timeseries
from dashd.domain.timeseries import MINUTE
from dashd.store.calls_sql import Db

# A device's keys, at most (the summaries are where they are found).
MAX_KEYS = 256


def add_minutes(db: Db, device_id: str, points: list[tuple[str, Any]], now: float) -> None:
    """Add points stored at C{now} to their minute's summaries."""
    rows = timeseries.minute_rows(points, now)
    if not rows:
        return
    if db.pg:
        lowest, highest = "LEAST(data_minutes.lo, excluded.lo)", "GREATEST(data_minutes.hi, excluded.hi)"
        prefix = "data_minutes."
    else:
        lowest = "min(coalesce(lo, excluded.lo), coalesce(excluded.lo, lo))"
        highest = "max(coalesce(hi, excluded.hi), coalesce(excluded.hi, hi))"
        prefix = ""
    sql = (
        "INSERT INTO data_minutes (device_id, key, minute, n_all, n_num, total, lo, hi)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, key, minute) DO UPDATE SET"
        " n_all = {p}n_all + excluded.n_all, n_num = {p}n_num + excluded.n_num,"
        " total = {p}total + excluded.total, lo = {lo}, hi = {hi}"
    ).format(p=prefix, lo=lowest, hi=highest)
    params = [(device_id,) + row for row in rows]
    if db.pg:
        db.handle.executemany(sql.replace("?", "%s").encode("utf-8"), params)
    else:
        db.handle.executemany(sql, params)


def prune_minutes(db: Db, before: float, batch: int) -> int:
    """Delete up to C{batch} summaries of minutes that ended before
    C{before}; return how many."""
    last = int(before // MINUTE) * MINUTE  # minutes starting before it end by `before`
    cur = db.execute(
        "DELETE FROM data_minutes WHERE (device_id, key, minute) IN"
        " (SELECT device_id, key, minute FROM data_minutes WHERE minute < ? LIMIT ?)",
        (last, batch))
    return int(cur.rowcount)


def device_keys(db: Db, device_id: str) -> list[str]:
    """The keys a device ever stored points of (still kept), in order: one
    index probe a key."""
    keys: list[str] = []
    row = db.one("SELECT min(key) FROM data_minutes WHERE device_id = ?", (device_id,))
    while row is not None and row[0] is not None and len(keys) < MAX_KEYS:
        keys.append(row[0])
        row = db.one("SELECT min(key) FROM data_minutes WHERE device_id = ? AND key > ?",
                     (device_id, row[0]))
    return keys


def _keys(db: Db, device_id: str, wanted: list[str] | None) -> list[str]:
    keys = device_keys(db, device_id)
    if wanted is None:
        return keys
    return [k for k in keys if timeseries.covers(wanted, k)]


def _in(keys: list[str]) -> str:
    return "key IN (%s)" % ", ".join("?" * len(keys))


def _number(db: Db) -> tuple[str, str]:
    """SQL that tells a numeric JSON value, and that reads it as a float."""
    if db.pg:
        return "json_typeof(value) = 'number'", "(value::text)::float8"
    return "json_type(value) IN ('integer', 'real')", "CAST(value AS REAL)"


def _aggregate_points(db: Db, device_id: str, keys: list[str], start: float, end: float,
                      bucket: int, into: dict[tuple[str, int], list[Any]]) -> None:
    """Add the points of [start, end) to their buckets in C{into}."""
    if start >= end:
        return
    test, read = _number(db)
    num = "CASE WHEN %s THEN %s END" % (test, read)
    slot = "floor(t / ?)::bigint" if db.pg else "CAST(t / ? AS INTEGER)"
    rows = db.all(
        "SELECT key, {slot} AS b, count(*), count({num}), sum({num}), min({num}), max({num})"
        " FROM data_points WHERE device_id = ? AND t >= ? AND t < ? AND {keys}"
        " GROUP BY key, b".format(slot=slot, num=num, keys=_in(keys)),
        [bucket, device_id, start, end] + keys)
    for key, b, n_all, n_num, total, lo, hi in rows:
        _merge(into, key, int(b), n_all, n_num, total, lo, hi)


def _aggregate_minutes(db: Db, device_id: str, keys: list[str], start: int, end: int,
                       bucket: int, into: dict[tuple[str, int], list[Any]]) -> None:
    """Add the summaries of the whole minutes [start, end) to their
    buckets (C{bucket} a multiple of a minute)."""
    if start >= end:
        return
    rows = db.all(
        "SELECT key, minute / ? AS b, sum(n_all), sum(n_num), sum(total), min(lo), max(hi)"
        " FROM data_minutes WHERE device_id = ? AND {keys} AND minute >= ? AND minute < ?"
        " GROUP BY key, b".format(keys=_in(keys)),
        [bucket, device_id] + keys + [start, end])
    for key, b, n_all, n_num, total, lo, hi in rows:
        _merge(into, key, int(b), n_all, n_num, total, lo, hi)


def _merge(into: dict[tuple[str, int], list[Any]], key: str, b: int, n_all: int, n_num: int,
           total: float | None, lo: float | None, hi: float | None) -> None:
    cell = into.get((key, b))
    if cell is None:
        into[(key, b)] = [int(n_all), int(n_num or 0), float(total or 0.0), lo, hi]
        return
    cell[0] += int(n_all)
    cell[1] += int(n_num or 0)
    cell[2] += float(total or 0.0)
    if lo is not None:
        cell[3] = lo if cell[3] is None else min(cell[3], lo)
    if hi is not None:
        cell[4] = hi if cell[4] is None else max(cell[4], hi)


def buckets(db: Db, selection: list[tuple[str, list[str] | None]], start: float, end: float,
            bucket: int) -> list[dict[str, Any]]:
    """
    The points of [start, end) of each device (C{selection}: device IDs
    and their keys, dotted paths that each cover their sub-keys, None: all)
    in buckets of C{bucket}
    seconds (aligned on multiples of it since the epoch): a series a device
    and key, C{{"device_id", "key", "t", "count", "min", "max", "avg"}},
    each a list over the buckets that hold points (C{t} their starts;
    C{min}, C{max}, C{avg} over the numbers, None where none is).
    """
    if db.pg:
        return _buckets_pg(db, selection, start, end, bucket)
    return buckets_each(db, selection, start, end, bucket)


def buckets_each(db: Db, selection: list[tuple[str, list[str] | None]], start: float,
                 end: float, bucket: int) -> list[dict[str, Any]]:
    """L{buckets} a device at a time: a statement for the device's keys
    and one for each part of the range (SQLite's, where a statement costs
    no round trip; bench.data_ranges compares it on PostgreSQL)."""
    out: list[dict[str, Any]] = []
    for device_id, keys in selection:
        wanted = _keys(db, device_id, keys)
        if not wanted:
            continue
        cells: dict[tuple[str, int], list[Any]] = {}
        if bucket % MINUTE == 0:
            first = -(-int(start) // MINUTE) * MINUTE  # the first whole minute
            if first < start:
                first += MINUTE
            last = int(end // MINUTE) * MINUTE  # where the last whole minute ends
            if first < last:
                _aggregate_points(db, device_id, wanted, start, first, bucket, cells)
                _aggregate_minutes(db, device_id, wanted, first, last, bucket, cells)
                _aggregate_points(db, device_id, wanted, last, end, bucket, cells)
            else:
                _aggregate_points(db, device_id, wanted, start, end, bucket, cells)
        else:
            _aggregate_points(db, device_id, wanted, start, end, bucket, cells)
        for key in sorted({k for k, _ in cells}):
            slots = sorted(b for k, b in cells if k == key)
            series: dict[str, Any] = {"device_id": device_id, "key": key, "t": [],
                                      "count": [], "min": [], "max": [], "avg": []}
            for b in slots:
                n_all, n_num, total, lo, hi = cells[(key, b)]
                series["t"].append(b * bucket)
                series["count"].append(n_all)
                series["min"].append(lo)
                series["max"].append(hi)
                series["avg"].append(total / n_num if n_num else None)
            out.append(series)
    return out


def _whole_minutes(start: float, end: float, bucket: int) -> tuple[int, int]:
    """The whole minutes [first, last) of [start, end) that a query in
    buckets of C{bucket} seconds reads from the summaries (first == last:
    none, every point is read)."""
    if bucket % MINUTE:
        return 0, 0
    first = -(-int(start) // MINUTE) * MINUTE  # the first whole minute
    if first < start:
        first += MINUTE
    last = int(end // MINUTE) * MINUTE  # where the last whole minute ends
    return (first, last) if first < last else (0, 0)


# The buckets of every device and key of a selection in one statement (one
# round trip, however many devices): the devices' keys found by a skip scan
# of data_minutes' primary key (one probe a key, as device_keys), those the
# selection names kept, then the summaries of the whole minutes and the raw
# points of the partial minutes at the ends, aggregated into the buckets.
_BUCKETS_PG = """
WITH RECURSIVE sel(n, d, w) AS (
    SELECT s.n, s.d, s.w FROM unnest(%(devices)s::text[], %(wanted)s::text[])
        WITH ORDINALITY AS s(d, w, n)
), devs AS (
    SELECT min(n) AS n, d FROM sel GROUP BY d
), found(n, d, key, depth) AS (
    SELECT devs.n, devs.d,
        (SELECT min(m.key) FROM data_minutes m WHERE m.device_id = devs.d), 1
    FROM devs
    UNION ALL
    SELECT found.n, found.d,
        (SELECT min(m.key) FROM data_minutes m WHERE m.device_id = found.d AND m.key > found.key),
        found.depth + 1
    FROM found WHERE found.key IS NOT NULL AND found.depth < %(max_keys)s
), keys AS (
    SELECT f.n, f.d, f.key FROM found f WHERE f.key IS NOT NULL AND EXISTS (
        SELECT 1 FROM sel WHERE sel.d = f.d AND (sel.w IS NULL OR f.key = sel.w
            OR starts_with(f.key, sel.w || '.')))
), cells AS (
    SELECT k.n, k.d, k.key, x.* FROM keys k CROSS JOIN LATERAL (
        SELECT m.minute / %(bucket)s AS b, sum(m.n_all)::bigint AS n_all,
            sum(m.n_num)::bigint AS n_num,
            sum(m.total) AS total, min(m.lo) AS lo, max(m.hi) AS hi
        FROM data_minutes m WHERE m.device_id = k.d AND m.key = k.key
            AND m.minute >= %(first)s AND m.minute < %(last)s
        GROUP BY 1) x
    UNION ALL
    SELECT k.n, k.d, k.key, x.* FROM keys k CROSS JOIN LATERAL (
        SELECT floor(p.t / %(bucket)s)::bigint AS b, count(*), count(v.num), sum(v.num),
            min(v.num), max(v.num)
        FROM data_points p CROSS JOIN LATERAL (SELECT CASE WHEN json_typeof(p.value) = 'number'
            THEN (p.value::text)::float8 END AS num) v
        WHERE p.device_id = k.d AND p.t >= %(start)s AND p.t < %(points_end)s AND p.key = k.key
        GROUP BY 1) x
    UNION ALL
    SELECT k.n, k.d, k.key, x.* FROM keys k CROSS JOIN LATERAL (
        SELECT floor(p.t / %(bucket)s)::bigint AS b, count(*), count(v.num), sum(v.num),
            min(v.num), max(v.num)
        FROM data_points p CROSS JOIN LATERAL (SELECT CASE WHEN json_typeof(p.value) = 'number'
            THEN (p.value::text)::float8 END AS num) v
        WHERE p.device_id = k.d AND p.t >= %(points_again)s AND p.t < %(end)s AND p.key = k.key
        GROUP BY 1) x
)
SELECT d, key, b, sum(n_all)::bigint, sum(n_num)::bigint, sum(total), min(lo), max(hi)
FROM cells GROUP BY n, d, key, b ORDER BY n, key COLLATE "C", b
"""


def buckets_pg_params(devices: list[str], wanted: list[str | None], start: float, end: float,
                      bucket: int) -> dict[str, Any]:
    """The parameters of L{_BUCKETS_PG}: the selection as two arrays (a
    device and one of its keys a row; None: all its keys)."""
    first, last = _whole_minutes(start, end, bucket)
    if first < last:
        points_end, points_again = float(first), float(last)
    else:
        points_end, points_again = end, end
    return {"devices": devices, "wanted": wanted, "max_keys": MAX_KEYS, "bucket": bucket,
            "first": first, "last": last, "start": start, "end": end,
            "points_end": points_end, "points_again": points_again}


def _buckets_pg(db: Db, selection: list[tuple[str, list[str] | None]], start: float,
                end: float, bucket: int) -> list[dict[str, Any]]:
    """L{buckets} on PostgreSQL, in one query."""
    devices: list[str] = []
    wanted: list[str | None] = []
    for device_id, keys in selection:
        if keys is None:
            devices.append(device_id)
            wanted.append(None)
        else:
            for key in keys:
                devices.append(device_id)
                wanted.append(key)
    if not devices:
        return []
    db.handle.execute(_BUCKETS_PG.encode("utf-8"),
                      buckets_pg_params(devices, wanted, start, end, bucket))
    out: list[dict[str, Any]] = []
    series: dict[str, Any] | None = None
    for device_id, key, b, n_all, n_num, total, lo, hi in db.handle.fetchall():
        if series is None or series["device_id"] != device_id or series["key"] != key:
            series = {"device_id": device_id, "key": key, "t": [], "count": [], "min": [],
                      "max": [], "avg": []}
            out.append(series)
        n_num = int(n_num or 0)
        series["t"].append(int(b) * bucket)
        series["count"].append(int(n_all))
        series["min"].append(lo)
        series["max"].append(hi)
        series["avg"].append(float(total or 0.0) / n_num if n_num else None)
    return out


def points(db: Db, selection: list[tuple[str, list[str] | None]], start: float, end: float,
           limit: int) -> tuple[list[dict[str, Any]], float | None]:
    """
    The raw points of [start, end), the first C{limit} in time order over
    all the devices of C{selection} (as in L{buckets}), as series C{{"device_id", "key", "t", "value"}}; and
    where to continue (None: nothing more): every point before it is in
    the answer, none after it.
    """
    streams = []
    for index, (device_id, keys) in enumerate(selection):
        wanted = _keys(db, device_id, keys)
        if not wanted:
            continue
        rows = db.all(
            "SELECT t, id, key, value FROM data_points WHERE device_id = ? AND t >= ?"
            " AND t < ? AND %s ORDER BY t, id LIMIT ?" % _in(wanted),
            [device_id, start, end] + wanted + [limit + 1])
        streams.append([(t, index, row_id, device_id, key, value)
                        for t, row_id, key, value in rows])
    merged = list(heapq.merge(*streams))
    following: float | None = None
    if len(merged) > limit:
        following = merged[limit][0]
        kept = [p for p in merged[:limit] if p[0] < following]
        if kept:
            merged = kept
        else:
            # More than `limit` points of one instant: the first `limit` of
            # them, and on after that instant.
            merged = merged[:limit]
            following = math.nextafter(following, math.inf)
    series: dict[tuple[str, str], dict[str, Any]] = {}
    for t, _, _, device_id, key, value in merged:
        s = series.get((device_id, key))
        if s is None:
            s = series[(device_id, key)] = {"device_id": device_id, "key": key,
                                            "t": [], "value": []}
        s["t"].append(t)
        s["value"].append(db.load(value))
    return list(series.values()), following
