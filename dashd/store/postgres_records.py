"""
The PostgreSQL jobs behind stored data, the device event history, the OTA
status and the audit log: what L{dashd.store.series} does on SQLite, with
the same results (the same tests run on both). Schema:
``migrations_pg/0002_data_logs_ota_audit.sql``.

One difference of substance: on SQLite one writer assigns ids in commit
order; here several connections (and nodes) insert at once, and an id taken
by a transaction that commits later would appear behind a reader that
already paged past it. So appending an event or an audit entry holds an
advisory lock until its transaction commits: ids become visible in
increasing order, and an offset is a safe place to continue from. The store
runs all appends of a node in one queue (one transaction for a burst), so
the lock costs one commit per burst and node.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Json

from dashd.domain import timeseries
from dashd.jsontext import compact
from dashd.store import ranges_sql
from dashd.store.calls_sql import Db

Cursor = psycopg.Cursor[Any]

_EVENTS_LOCK = 0x64617376  # advisory lock keys
_AUDIT_LOCK = 0x64617377


def json_param(value: Any) -> Json:
    """A JSON parameter written as SQLite's store writes it (compact, UTF-8),
    so that text filters match the same."""
    return Json(value, dumps=compact)


def _as_is(text: str) -> str:
    return text


def json_text_param(text: str) -> Json:
    """A JSON parameter already encoded as L{json_param} would encode it."""
    return Json(text, dumps=_as_is)


def _all(cur: Cursor, sql: str, params: Any = ()) -> list[Any]:
    cur.execute(sql.encode("utf-8"), params)
    return cur.fetchall()


def _one(cur: Cursor, sql: str, params: Any = ()) -> Any:
    cur.execute(sql.encode("utf-8"), params)
    return cur.fetchone()


def _visible(cur: Cursor, account_id: str, device_id: str | None) -> tuple[str, list[Any]]:
    """A WHERE clause (and its parameters) for the rows an account may see."""
    if device_id is not None:
        # The caller has checked that the account may see this device.
        return "device_id = %s", [device_id]
    if not _one(cur, "SELECT 1 FROM device_shares WHERE account_id = %s LIMIT 1", (account_id,)):
        return "account_id = %s", [account_id]
    return (
        "(account_id = %s OR device_id IN"
        " (SELECT device_id FROM device_shares WHERE account_id = %s))",
        [account_id, account_id],
    )


def _window(cur: Cursor, select: str, where: str, params: list[Any], skip: int,
            limit: int) -> list[Any]:
    """Like C{rows[skip:][:limit]} in id order (see L{dashd.store.series})."""
    base = select + " WHERE " + where + " ORDER BY id"
    if skip >= 0:
        return _all(cur, base + " LIMIT %s OFFSET %s", params + [limit, skip])
    wanted = -skip
    (available,) = _one(
        cur,
        "SELECT count(*) FROM (SELECT 1 FROM " + select.split(" FROM ", 1)[1] + " WHERE "
        + where + " ORDER BY id DESC LIMIT %s) w",
        params + [wanted],
    )
    if available < wanted:
        return _all(cur, base + " LIMIT %s", params + [limit])
    count = min(limit, wanted)
    rows = _all(cur, base + " DESC LIMIT %s OFFSET %s", params + [count, wanted - count])
    rows.reverse()
    return rows


# Stored data


def save_reported(cur: Cursor, device_id: str, account_id: str, tags: dict[str, Any],
                  patch: Any, now: float) -> int:
    points = timeseries.reported_points(timeseries.saved_keys(tags), patch)
    if points:
        cur.executemany(
            "INSERT INTO data_points (device_id, account_id, t, key, value)"
            " VALUES (%s, %s, %s, %s, %s)",
            [(device_id, account_id, now, key, json_param(value)) for key, value in points],
        )
        ranges_sql.add_minutes(Db(cur, "postgresql"), device_id, points, now)
    return len(points)


def append_points(cur: Cursor, device_id: str, account_id: str,
                  points: list[tuple[str, Any]], now: float) -> int:
    cur.executemany(
        "INSERT INTO data_points (device_id, account_id, t, key, value)"
        " VALUES (%s, %s, %s, %s, %s)",
        [(device_id, account_id, now, key, json_param(value)) for key, value in points],
    )
    ranges_sql.add_minutes(Db(cur, "postgresql"), device_id, points, now)
    return len(points)


# Pulls of what devices stored on their own file system (dashd.app.datapull)


def data_pull(cur: Cursor, device_id: str) -> dict[str, Any] | None:
    row = _one(cur, "SELECT file, stored FROM data_pulls WHERE device_id = %s", (device_id,))
    return {"file": row[0], "stored": row[1]} if row else None


def set_data_pull(cur: Cursor, device_id: str, file: str | None, stored: int, now: float,
                  expected: str | None) -> bool:
    """See L{dashd.store.sqlite_records.set_data_pull}."""
    cur.execute(
        "UPDATE data_pulls SET file = %s, stored = %s, updated = %s WHERE device_id = %s"
        " AND file IS NOT DISTINCT FROM %s",
        (file, stored, now, device_id, expected),
    )
    if cur.rowcount == 1:
        return True
    if expected is not None or _one(cur, "SELECT 1 FROM devices WHERE id = %s", (device_id,)) is None:
        return False
    cur.execute(
        "INSERT INTO data_pulls (device_id, file, stored, updated) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (device_id) DO NOTHING",
        (device_id, file, stored, now),
    )
    return cur.rowcount == 1


def store_pulled(cur: Cursor, device_id: str, account_id: str, file: str, expected: int,
                 stored: int, points: list[tuple[str, Any]], now: float) -> bool:
    """See L{dashd.store.sqlite_records.store_pulled}."""
    cur.execute(
        "UPDATE data_pulls SET stored = %s, updated = %s WHERE device_id = %s AND file = %s"
        " AND stored = %s",
        (stored, now, device_id, file, expected),
    )
    if cur.rowcount != 1:
        return False
    append_points(cur, device_id, account_id, points, now)
    return True


def query_points(cur: Cursor, account_id: str, device_id: str | None, skip: int, limit: int,
                 text: str | None) -> list[dict[str, Any]]:
    where, params = _visible(cur, account_id, device_id)
    if text:
        where += " AND (strpos(key, %s) > 0 OR strpos(value::text, %s) > 0)"
        params += [text, text]
    rows = _window(cur, "SELECT device_id, t, key, value FROM data_points", where, params,
                   skip, limit)
    return [{"device_id": r[0], "timestamp": r[1], "key": r[2], "value": r[3]} for r in rows]


def prune_points(cur: Cursor, before: float, batch: int) -> int:
    rows = _all(cur, "SELECT id, t FROM data_points ORDER BY id LIMIT %s", (batch,))
    last = None
    for row_id, t in rows:
        if t >= before:
            break
        last = row_id
    ranges_sql.prune_minutes(Db(cur, "postgresql"), before, batch)
    if last is None:
        return 0
    cur.execute("DELETE FROM data_points WHERE id <= %s AND t < %s", (last, before))
    return cur.rowcount


# Device events (logs and notifications)


_APPEND_AND_TRIM = (
    "WITH appended AS ("
    " INSERT INTO device_events (device_id, account_id, t, name, data)"
    " SELECT %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM devices WHERE id = %s)"
    " RETURNING id),"
    " trimmed AS ("
    " DELETE FROM device_events WHERE device_id = %s AND EXISTS (SELECT 1 FROM appended)"
    " AND id <= (SELECT id FROM device_events WHERE device_id = %s"
    " ORDER BY id DESC LIMIT 1 OFFSET %s))"
    " SELECT id FROM appended"
)


def append_event(cur: Cursor, device_id: str, account_id: str, name: str, data: Any,
                 now: float, keep: int) -> int:
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_EVENTS_LOCK,))
    if keep >= 1:
        # The append and the trim in one round trip (a reconnect storm
        # appends two events a device: offline from the dead node, online
        # here). The trim's statement does not see the row it appends:
        # what goes is from the keep-th newest before it down.
        row = _one(cur, _APPEND_AND_TRIM, (device_id, account_id, now, name, json_param(data),
                                           device_id, device_id, device_id, keep - 1))
        return int(row[0]) if row is not None else 0
    row = _one(
        cur,
        "INSERT INTO device_events (device_id, account_id, t, name, data)"
        " SELECT %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM devices WHERE id = %s)"
        " RETURNING id",
        (device_id, account_id, now, name, json_param(data), device_id),
    )
    if row is None:
        return 0  # the device was deleted meanwhile
    old = _one(
        cur,
        "SELECT id FROM device_events WHERE device_id = %s ORDER BY id DESC LIMIT 1 OFFSET %s",
        (device_id, keep),
    )
    if old is not None:
        cur.execute("DELETE FROM device_events WHERE device_id = %s AND id <= %s",
                    (device_id, old[0]))
    return int(row[0])


def query_events(cur: Cursor, account_id: str, device_id: str | None, start: int,
                 limit: int) -> tuple[list[dict[str, Any]], int]:
    where, params = _visible(cur, account_id, device_id)
    select = "SELECT id, device_id, t, name, data FROM device_events"
    if start >= 0:
        rows = _all(cur, select + " WHERE " + where + " AND id >= %s ORDER BY id LIMIT %s",
                    params + [start, limit])
    else:
        rows = _window(cur, select, where, params, start, limit)
    events = [{"offset": r[0], "id": r[1], "timestamp": r[2], "name": r[3], "data": r[4]}
              for r in rows]
    if events:
        following = events[-1]["offset"] + 1
    elif start >= 0:
        following = start
    else:
        following = _last_id(cur, "device_events") + 1
    return events, following


def _last_id(cur: Cursor, table: str) -> int:
    """The last id the table's identity handed out (0: none yet), as SQLite's
    sqlite_sequence tells it."""
    (seq,) = _one(cur, "SELECT pg_get_serial_sequence(%s, 'id')", (table,))
    row = _one(cur, "SELECT last_value, is_called FROM " + seq)
    return int(row[0]) if row[1] else 0


# OTA status


def set_ota_status(cur: Cursor, device_id: str, status: dict[str, Any], now: float) -> bool:
    if _one(cur, "SELECT 1 FROM devices WHERE id = %s", (device_id,)) is None:
        return False
    cur.execute(
        "INSERT INTO ota_status (device_id, state, status, updated) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (device_id) DO UPDATE SET state = excluded.state,"
        " status = excluded.status, updated = excluded.updated",
        (device_id, status["state"], json_param(status), now),
    )
    return True


def get_ota_status(cur: Cursor, device_id: str) -> dict[str, Any] | None:
    row = _one(cur, "SELECT status FROM ota_status WHERE device_id = %s", (device_id,))
    return row[0] if row else None


def ota_statuses(cur: Cursor, states: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = _all(cur, "SELECT status FROM ota_status WHERE state = ANY(%s)", (list(states),))
    return [r[0] for r in rows]


# The audit log (see dashd/audit.py)


def append_audit(cur: Cursor, entries: list[dict[str, Any]]) -> int:
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_AUDIT_LOCK,))
    entries = [dict(e, detail=json_param(e["detail"]) if e.get("detail") is not None else None)
               for e in entries]
    cur.executemany(
        "INSERT INTO audit (t, account_id, key_id, method, path, device_id, status, error,"
        " detail) VALUES (%(t)s, %(account_id)s, %(key_id)s, %(method)s, %(path)s,"
        " %(device_id)s, %(status)s, %(error)s, %(detail)s)",
        entries,
    )
    # What a sharee did to a device goes to its owner's log too.
    about_devices = [e for e in entries if e.get("device_id") and "\x00" not in e["device_id"]]
    if about_devices:
        cur.executemany(
            "INSERT INTO audit (t, account_id, key_id, method, path, device_id, status, error,"
            " key_account, detail) SELECT %(t)s, d.account_id, %(key_id)s, %(method)s, %(path)s,"
            " %(device_id)s, %(status)s, %(error)s, %(account_id)s, %(detail)s FROM devices d"
            " WHERE d.id = %(device_id)s AND d.account_id <> %(account_id)s AND EXISTS"
            " (SELECT 1 FROM device_shares s WHERE s.device_id = d.id"
            " AND s.account_id = %(account_id)s)",
            about_devices,
        )
    return len(entries)


def query_audit(cur: Cursor, account_id: str, start: int,
                limit: int) -> tuple[list[dict[str, Any]], int]:
    select = ("SELECT id, t, key_id, method, path, device_id, status, error,"
              " coalesce(key_account, account_id), detail FROM audit")
    if start >= 0:
        rows = _all(cur, select + " WHERE account_id = %s AND id >= %s ORDER BY id LIMIT %s",
                    (account_id, start, limit))
    else:
        rows = _window(cur, select, "account_id = %s", [account_id], start, limit)
    entries = [
        {"offset": r[0], "timestamp": r[1], "key_id": r[2], "key_account": r[8],
         "method": r[3], "path": r[4], "device_id": r[5], "status": r[6], "error": r[7],
         "detail": r[9]}
        for r in rows
    ]
    if entries:
        following = entries[-1]["offset"] + 1
    elif start >= 0:
        following = start
    else:
        (last,) = _one(cur, "SELECT coalesce(max(id), 0) FROM audit WHERE account_id = %s",
                       (account_id,))
        following = int(last) + 1
    return entries, following


def prune_audit(cur: Cursor, before: float, batch: int) -> int:
    cur.execute(
        "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE t < %s ORDER BY t LIMIT %s)",
        (before, batch),
    )
    return cur.rowcount
