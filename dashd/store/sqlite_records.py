"""
The SQLite jobs behind stored data, the device event history and the OTA
status (schema: ``migrations/0003_data_logs_ota.sql``). Each function is a
job for L{dashd.store.sqlite.SQLiteStore}'s writer thread: a function of the
connection, short, touching only index ranges it can bound.

Visibility: an account sees the rows of the devices it owns (the
``account_id`` column, the device's owner) and of those shared with it
(``device_shares``).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from dashd.domain import timeseries
from dashd.jsontext import compact
from dashd.store import ranges_sql
from dashd.store.calls_sql import Db


def _visible(conn: sqlite3.Connection, account_id: str, device_id: str | None) -> tuple[str, list[Any]]:
    """A WHERE clause (and its parameters) for the rows an account may see."""
    if device_id is not None:
        # The caller has checked that the account may see this device.
        return "device_id = ?", [device_id]
    shared = conn.execute(
        "SELECT 1 FROM device_shares WHERE account_id = ? LIMIT 1", (account_id,)
    ).fetchone()
    if not shared:
        # The common case, one index range in id order.
        return "account_id = ?", [account_id]
    return (
        "(account_id = ? OR device_id IN"
        " (SELECT device_id FROM device_shares WHERE account_id = ?))",
        [account_id, account_id],
    )


def _window(
    conn: sqlite3.Connection,
    select: str,
    where: str,
    params: list[Any],
    skip: int,
    limit: int,
) -> list[Any]:
    """
    C{limit} rows of C{select ... WHERE where} in id order from position
    C{skip}, a negative C{skip} counting from the end: like C{rows[skip:]
    [:limit]} in Python. Every query walks an index in id order from one
    end, reading at most |skip| + limit entries.
    """
    base = "%s WHERE %s ORDER BY id" % (select, where)
    if skip >= 0:
        return conn.execute(base + " LIMIT ? OFFSET ?", params + [limit, skip]).fetchall()
    wanted = -skip
    (available,) = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM %s WHERE %s ORDER BY id DESC LIMIT ?)"
        % (select.split(" FROM ", 1)[1], where),
        params + [wanted],
    ).fetchone()
    if available < wanted:
        # Fewer rows than that: the window starts at the first one (as
        # Python's rows[skip:][:limit] does).
        return conn.execute(base + " LIMIT ?", params + [limit]).fetchall()
    count = min(limit, wanted)
    rows = conn.execute(
        base + " DESC LIMIT ? OFFSET ?", params + [count, wanted - count]
    ).fetchall()
    rows.reverse()
    return rows


# Stored data


def save_reported(
    conn: sqlite3.Connection,
    device_id: str,
    account_id: str,
    tags: dict[str, Any],
    patch: Any,
    now: float,
) -> int:
    """Append the points a report makes (see L{dashd.domain.timeseries}); return
    how many."""
    points = timeseries.reported_points(timeseries.saved_keys(tags), patch)
    if points:
        conn.executemany(
            "INSERT INTO data_points (device_id, account_id, t, key, value)"
            " VALUES (?, ?, ?, ?, ?)",
            [(device_id, account_id, now, key, compact(value)) for key, value in points],
        )
        ranges_sql.add_minutes(Db(conn, "sqlite"), device_id, points, now)
    return len(points)


def append_points(
    conn: sqlite3.Connection,
    device_id: str,
    account_id: str,
    points: list[tuple[str, Any]],
    now: float,
) -> int:
    """Append C{(key, value)} points a device sent as data; return how many."""
    conn.executemany(
        "INSERT INTO data_points (device_id, account_id, t, key, value) VALUES (?, ?, ?, ?, ?)",
        [(device_id, account_id, now, key, compact(value)) for key, value in points],
    )
    ranges_sql.add_minutes(Db(conn, "sqlite"), device_id, points, now)
    return len(points)


# Pulls of what devices stored on their own file system (dashd.app.datapull)


def data_pull(conn: sqlite3.Connection, device_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT file, stored FROM data_pulls WHERE device_id = ?", (device_id,)
    ).fetchone()
    return {"file": row[0], "stored": row[1]} if row else None


def set_data_pull(
    conn: sqlite3.Connection, device_id: str, file: str | None, stored: int, now: float,
    expected: str | None,
) -> bool:
    """Set the pull record to C{file} and C{stored} if it names C{expected}
    (None: no file), creating it if there is none; False if it names another
    file or the device is gone."""
    cur = conn.execute(
        "UPDATE data_pulls SET file = ?, stored = ?, updated = ? WHERE device_id = ?"
        " AND file IS ?",
        (file, stored, now, device_id, expected),
    )
    if cur.rowcount == 1:
        return True
    if conn.execute("SELECT 1 FROM data_pulls WHERE device_id = ?", (device_id,)).fetchone():
        return False
    if expected is not None:
        return False
    if conn.execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)).fetchone() is None:
        return False
    conn.execute(
        "INSERT INTO data_pulls (device_id, file, stored, updated) VALUES (?, ?, ?, ?)",
        (device_id, file, stored, now),
    )
    return True


def store_pulled(
    conn: sqlite3.Connection,
    device_id: str,
    account_id: str,
    file: str,
    expected: int,
    stored: int,
    points: list[tuple[str, Any]],
    now: float,
) -> bool:
    """Points read from C{file} up to byte C{stored}, if the pull's record
    still says C{expected}: both or neither (False: another pull moved on)."""
    cur = conn.execute(
        "UPDATE data_pulls SET stored = ?, updated = ? WHERE device_id = ? AND file = ?"
        " AND stored = ?",
        (stored, now, device_id, file, expected),
    )
    if cur.rowcount != 1:
        return False
    append_points(conn, device_id, account_id, points, now)
    return True


def query_points(
    conn: sqlite3.Connection,
    account_id: str,
    device_id: str | None,
    skip: int,
    limit: int,
    text: str | None,
) -> list[dict[str, Any]]:
    where, params = _visible(conn, account_id, device_id)
    if text:
        where += " AND (instr(key, ?) > 0 OR instr(value, ?) > 0)"
        params += [text, text]
    rows = _window(
        conn, "SELECT device_id, t, key, value FROM data_points", where, params, skip, limit
    )
    return [
        {"device_id": r[0], "timestamp": r[1], "key": r[2], "value": json.loads(r[3])}
        for r in rows
    ]


def prune_points(conn: sqlite3.Connection, before: float, batch: int) -> int:
    """Delete up to C{batch} of the oldest points reported before C{before};
    return how many. Points arrive in time order, so the old ones are the
    first ids: this reads C{batch} rows at most, whatever the table's size."""
    rows = conn.execute(
        "SELECT id, t FROM data_points ORDER BY id LIMIT ?", (batch,)
    ).fetchall()
    last = None
    for row_id, t in rows:
        if t >= before:
            break
        last = row_id
    ranges_sql.prune_minutes(Db(conn, "sqlite"), before, batch)
    if last is None:
        return 0
    cur = conn.execute("DELETE FROM data_points WHERE id <= ? AND t < ?", (last, before))
    return cur.rowcount


# Device events (logs and notifications)


def append_event(
    conn: sqlite3.Connection,
    device_id: str,
    account_id: str,
    name: str,
    data: Any,
    now: float,
    keep: int,
) -> int:
    """Store one event and drop the device's oldest beyond C{keep}; return
    its offset (0 if the device no longer exists)."""
    # A device deleted meanwhile (its "offline" comes after) stores nothing.
    cur = conn.execute(
        "INSERT INTO device_events (device_id, account_id, t, name, data)"
        " SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM devices WHERE id = ?)",
        (device_id, account_id, now, name, compact(data), device_id),
    )
    if cur.rowcount == 0:
        return 0
    row = conn.execute(
        "SELECT id FROM device_events WHERE device_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
        (device_id, keep),
    ).fetchone()
    if row is not None:
        conn.execute(
            "DELETE FROM device_events WHERE device_id = ? AND id <= ?", (device_id, row[0])
        )
    return int(cur.lastrowid or 0)


def query_events(
    conn: sqlite3.Connection,
    account_id: str,
    device_id: str | None,
    start: int,
    limit: int,
) -> tuple[list[dict[str, Any]], int]:
    """Events from offset C{start} (negative: that many before the end),
    oldest first, and the offset to ask for next."""
    where, params = _visible(conn, account_id, device_id)
    if start >= 0:
        rows = conn.execute(
            "SELECT id, device_id, t, name, data FROM device_events WHERE %s AND id >= ?"
            " ORDER BY id LIMIT ?" % where,
            params + [start, limit],
        ).fetchall()
    else:
        rows = _window(
            conn, "SELECT id, device_id, t, name, data FROM device_events", where, params,
            start, limit,
        )
    events = [
        {"offset": r[0], "id": r[1], "timestamp": r[2], "name": r[3], "data": json.loads(r[4])}
        for r in rows
    ]
    if events:
        following = events[-1]["offset"] + 1
    elif start >= 0:
        following = start
    else:
        seq = conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'device_events'"
        ).fetchone()
        following = (seq[0] if seq else 0) + 1
    return events, following


# OTA status


def set_ota_status(
    conn: sqlite3.Connection, device_id: str, status: dict[str, Any], now: float
) -> bool:
    """Store the status of the device's current update; False if the device
    is gone."""
    if conn.execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)).fetchone() is None:
        return False
    conn.execute(
        "INSERT INTO ota_status (device_id, state, status, updated) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (device_id) DO UPDATE SET state = excluded.state,"
        " status = excluded.status, updated = excluded.updated",
        (device_id, status["state"], compact(status), now),
    )
    return True


def get_ota_status(conn: sqlite3.Connection, device_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT status FROM ota_status WHERE device_id = ?", (device_id,)
    ).fetchone()
    return json.loads(row[0]) if row else None


def ota_statuses(conn: sqlite3.Connection, states: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT status FROM ota_status WHERE state IN (%s)" % ",".join("?" * len(states)),
        states,
    ).fetchall()
    return [json.loads(r[0]) for r in rows]


# The audit log (see dashd/audit.py)


def append_audit(conn: sqlite3.Connection, entries: list[dict[str, Any]]) -> int:
    # (Copied only where the detail must be written as JSON, or is missing.)
    entries = [e if "detail" in e and e["detail"] is None else
               dict(e, detail=compact(e["detail"]) if e.get("detail") is not None else None)
               for e in entries]
    # Positional parameters: sqlite3 binds a named one by looking it up in
    # the entry (a string made for each), 15% of the statement's time.
    conn.executemany(
        "INSERT INTO audit (t, account_id, key_id, method, path, device_id, status, error,"
        " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(e["t"], e["account_id"], e["key_id"], e["method"], e["path"], e["device_id"],
          e["status"], e["error"], e["detail"]) for e in entries],
    )
    # What a sharee did to a device goes to its owner's log too: only an
    # entry whose account has a share of its device can be one (one read
    # of the batch's devices' shares, not a statement an entry; the insert
    # checks the rest).
    devices = {e["device_id"] for e in entries if e.get("device_id")}
    if not devices:
        return len(entries)
    shares: set[tuple[str, str]] = set()
    listed = list(devices)
    for i in range(0, len(listed), 500):
        part = listed[i:i + 500]
        shares.update(conn.execute(
            "SELECT device_id, account_id FROM device_shares WHERE device_id IN (%s)"
            % ",".join("?" * len(part)), part).fetchall())
    about_devices = [e for e in entries
                     if e.get("device_id") and (e["device_id"], e["account_id"]) in shares]
    if about_devices:
        conn.executemany(
            "INSERT INTO audit (t, account_id, key_id, method, path, device_id, status, error,"
            " key_account, detail) SELECT :t, d.account_id, :key_id, :method, :path, :device_id,"
            " :status, :error, :account_id, :detail FROM devices d WHERE d.id = :device_id"
            " AND d.account_id <> :account_id AND EXISTS (SELECT 1 FROM device_shares s"
            " WHERE s.device_id = d.id AND s.account_id = :account_id)",
            about_devices,
        )
    return len(entries)


def query_audit(
    conn: sqlite3.Connection, account_id: str, start: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The account's entries from offset C{start} (negative: that many
    before the end), oldest first, and the offset to ask for next."""
    select = ("SELECT id, t, key_id, method, path, device_id, status, error,"
              " coalesce(key_account, account_id), detail FROM audit")
    if start >= 0:
        rows = conn.execute(
            select + " WHERE account_id = ? AND id >= ? ORDER BY id LIMIT ?",
            (account_id, start, limit),
        ).fetchall()
    else:
        rows = _window(conn, select, "account_id = ?", [account_id], start, limit)
    entries = [
        {"offset": r[0], "timestamp": r[1], "key_id": r[2], "key_account": r[8],
         "method": r[3], "path": r[4], "device_id": r[5], "status": r[6], "error": r[7],
         "detail": json.loads(r[9]) if r[9] is not None else None}
        for r in rows
    ]
    if entries:
        following = entries[-1]["offset"] + 1
    elif start >= 0:
        following = start
    else:
        (last,) = conn.execute(
            "SELECT coalesce(max(id), 0) FROM audit WHERE account_id = ?", (account_id,)
        ).fetchone()
        following = last + 1
    return entries, following


def prune_audit(conn: sqlite3.Connection, before: float, batch: int) -> int:
    cur = conn.execute(
        "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE t < ? ORDER BY t LIMIT ?)",
        (before, batch),
    )
    return cur.rowcount
