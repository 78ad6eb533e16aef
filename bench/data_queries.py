"""
How fast stored data answers with millions of points: fills a fresh SQLite
store (schema from the migrations) with N points over D devices of one
account, plus a small account with a device shared with it, then times the
queries the REST API makes (dashd.store.series), each run on the store's
own kind of connection.

    .venv/bin/python bench/data_queries.py [--points 2000000] [--devices 200]

Prints one line a query: what it asks, rows returned, milliseconds.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

from dashd.store import sqlite_records as series
from dashd.store.sqlite import connect, migrate


def fill(conn, points: int, devices: int) -> list[str]:
    conn.execute("INSERT INTO accounts (id, name, created) VALUES ('a', 'big', 0), ('b', 'small', 0)")
    ids = ["d%012d" % i for i in range(devices)]
    conn.executemany(
        "INSERT INTO devices (id, account_id, name, token_hash, created, shadow)"
        " VALUES (?, 'a', ?, ?, 0, '{}')", [(d, d, "h" + d) for d in ids])
    conn.execute("INSERT INTO device_shares VALUES (?, 'b')", (ids[0],))
    keys = ["temp", "hum", "env.pressure", "battery"]
    batch = []
    t = time.time() - points
    conn.execute("BEGIN")
    for i in range(points):
        batch.append((ids[i % devices], "a", t + i, keys[i % 4], str(random.randint(0, 1000))))
        if len(batch) == 100000:
            conn.executemany("INSERT INTO data_points (device_id, account_id, t, key, value)"
                             " VALUES (?, ?, ?, ?, ?)", batch)
            batch = []
    if batch:
        conn.executemany("INSERT INTO data_points (device_id, account_id, t, key, value)"
                         " VALUES (?, ?, ?, ?, ?)", batch)
    # One rare value, near the start, for the filter.
    conn.execute("UPDATE data_points SET value = '\"needle\"' WHERE id = 1000")
    conn.execute("COMMIT")
    return ids


def timed(label: str, fn) -> None:
    start = time.perf_counter()
    rows = fn()
    ms = (time.perf_counter() - start) * 1000
    print("%-55s %6d rows %9.1f ms" % (label, len(rows), ms), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=2_000_000)
    p.add_argument("--devices", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.sqlite3")
        conn = connect(path)
        migrate(conn)
        start = time.perf_counter()
        ids = fill(conn, args.points, args.devices)
        print("filled %d points over %d devices in %.1f s (%.0f MB)" % (
            args.points, args.devices, time.perf_counter() - start,
            os.path.getsize(path) / 1e6), flush=True)
        q = series.query_points
        timed("account: last 100 (default)", lambda: q(conn, "a", None, -100, 100, None))
        timed("account: last 5000", lambda: q(conn, "a", None, -5000, 5000, None))
        timed("account: skip=0 limit=5000", lambda: q(conn, "a", None, 0, 5000, None))
        timed("account: skip=-100000 limit=100", lambda: q(conn, "a", None, -100000, 100, None))
        timed("account: skip=1000000 limit=100", lambda: q(conn, "a", None, 1000000, 100, None))
        timed("account: filter=hum last 100", lambda: q(conn, "a", None, -100, 100, "hum"))
        timed("account: filter=needle (one match, scans all)",
              lambda: q(conn, "a", None, 0, 100, "needle"))
        timed("device: last 100", lambda: q(conn, "a", ids[7], -100, 100, None))
        timed("device: skip=0 limit=5000", lambda: q(conn, "a", ids[7], 0, 5000, None))
        timed("shared account: last 100", lambda: q(conn, "b", None, -100, 100, None))
        timed("events: last 100 (empty table)",
              lambda: series.query_events(conn, "a", None, -100, 100)[0])
        start = time.perf_counter()
        conn.execute("BEGIN")
        deleted = series.prune_points(conn, time.time() - args.points + 10000, 10000)
        conn.execute("COMMIT")
        print("%-55s %6d rows %9.1f ms" % ("retention: one batch", deleted,
                                             (time.perf_counter() - start) * 1000))
        conn.close()


if __name__ == "__main__":
    main()
