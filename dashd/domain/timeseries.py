"""
Stored data: which reported values go into a device's time series, and the
points of data a device sends as such.

A device's shadow may list, in ``tags.save``, keys of ``state.reported`` as
dotted paths (``"temperature"``, ``"env.humidity"``). Each time the device
reports one of them (in ``Dash.Shadow.Update`` or ``State.Set``), the value
it reported is appended to its time series with the server's timestamp,
whether or not it changed: it is a record of reports. A key the report does
not reach, or deletes (``null``), records nothing.

A device may also send data to keep: ``Dash.Data`` (Mongoose OS,
``mgos_dash_send_data``) makes a point of each key of an object it sends
(L{data_points}), and ``mDashStore`` lines (the mDash library) are pulled
from the device (L{dashd.app.datapull}).

Pure functions; the store applies them inside the transaction that applies
the report, so a point is durable exactly when the report is acknowledged.
"""

from __future__ import annotations

import math
from typing import Any

from dashd.domain.errors import Invalid

# Bounds on tags.save, which users write and every report of the device reads.
MAX_SAVED_KEYS = 64
MAX_KEY_LENGTH = 256


class InvalidSaveList(Invalid):
    pass


def check_save_list(value: Any) -> None:
    """
    Check a C{tags.save} a user is about to store.

    @raise InvalidSaveList: with a message that says what is wrong.
    """
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise InvalidSaveList("tags.save must be a list of reported keys (dotted paths)")
    if len(value) > MAX_SAVED_KEYS:
        raise InvalidSaveList("tags.save may list at most %d keys" % MAX_SAVED_KEYS)
    for key in value:
        parts = key.split(".")
        if not key or len(key) > MAX_KEY_LENGTH or not all(parts):
            raise InvalidSaveList(
                "tags.save: %r is not a dotted path such as \"env.temperature\"" % key[:64]
            )


def saved_keys(tags: Any) -> list[str]:
    """The keys a shadow's tags ask to save (invalid entries are ignored)."""
    if not isinstance(tags, dict):
        return []
    save = tags.get("save")
    if not isinstance(save, list):
        return []
    out: list[str] = []
    for key in save[:MAX_SAVED_KEYS]:
        if isinstance(key, str) and key and key not in out:
            out.append(key)
    return out


def reported_points(save: list[str], patch: Any) -> list[tuple[str, Any]]:
    """
    The (key, value) pairs a report of C{patch} (a merge patch of
    C{state.reported}) makes for the keys in C{save}, in C{save}'s order.
    """
    if not save or not isinstance(patch, dict):
        return []
    out: list[tuple[str, Any]] = []
    for key in save:
        node: Any = patch
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            out.append((key, node))
    return out


# The key of a point of data that is not an object of short keys.
DATA_KEY = "data"


def data_points(data: Any) -> list[tuple[str, Any]]:
    """The points C{Dash.Data} params make: an object of at most
    L{MAX_SAVED_KEYS} keys (each at most L{MAX_KEY_LENGTH} long) is a point
    a key; anything else is one point L{DATA_KEY} of the whole value."""
    if (isinstance(data, dict) and data and len(data) <= MAX_SAVED_KEYS
            and all(0 < len(k) <= MAX_KEY_LENGTH for k in data)):
        return list(data.items())
    return [(DATA_KEY, data)]


# Per-minute summaries of stored points (the store's data_minutes table,
# which time-range queries read instead of every point).

MINUTE = 60


def is_number(value: Any) -> bool:
    """A value that counts in a bucket's min/max/avg: a finite JSON number
    (not a boolean)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def minute_rows(points: list[tuple[str, Any]], now: float
                ) -> list[tuple[str, int, int, int, float, float | None, float | None]]:
    """What points stored at C{now} add to their minute's summary, a row a
    key: C{(key, minute, points, numbers, sum, lowest, highest)}."""
    minute = int(math.floor(now / MINUTE)) * MINUTE
    rows: dict[str, list[Any]] = {}
    for key, value in points:
        row = rows.setdefault(key, [key, minute, 0, 0, 0.0, None, None])
        row[2] += 1
        if is_number(value):
            number = float(value)
            row[3] += 1
            row[4] += number
            row[5] = number if row[5] is None else min(row[5], number)
            row[6] = number if row[6] is None else max(row[6], number)
    return [tuple(r) for r in rows.values()]  # type: ignore[misc]


def covers(entries: list[str], key: str) -> bool:
    """Whether a list of dotted paths names C{key} or one of its parents
    (C{"env"} covers C{"env.temp"})."""
    return any(key == e or key.startswith(e + ".") for e in entries)
