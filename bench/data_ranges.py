"""
Charts over time (issue 19): a week of data stored every 3 seconds by 10
devices (2,016,000 points, one numeric key each), asked in one request of
buckets with their count, min, max and avg, on SQLite and PostgreSQL.

    .venv/bin/python -m bench.data_ranges [--devices 10] [--days 7] [--every 3]
        [--runs 7] [--stores sqlite,postgresql]
        [--postgres postgresql://postgres@127.0.0.1/postgres]

Fills a new store of each kind the way dashd leaves it: the points in
``data_points`` and their per-minute summaries in ``data_minutes``, as the
store keeps them (written in bulk here, and summarised by the SQL of the
migration that creates the table, which tests/test_ranges.py shows gives
what the store keeps point by point). Then asks each query through the
store's methods on the reactor, as ``GET /data?from=&to=&bucket=&device=``
does, and encodes the answer as the API does (JSON): the median and the
slowest of ``--runs``. The target: a week's chart of the 10 devices, one
request, under 300 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from typing import Any

from bench.query import machine
from dashd.api.site import json_bytes

ACCOUNT = "acme"
KEY = "temp"
END = 1764547200.0  # a Monday, 00:00 UTC


def points(devices: list[str], days: int, every: float) -> Any:
    """(device_id, t, value) of each device every `every` seconds."""
    rng = random.Random(19)
    start = END - days * 86400
    steps = int(days * 86400 / every)
    for i in range(steps):
        t = start + i * every + 0.137
        for device_id in devices:
            yield device_id, t, "%.2f" % (20 + 5 * rng.random())


SUMMARISE = {
    "sqlite": (
        "INSERT INTO data_minutes (device_id, key, minute, n_all, n_num, total, lo, hi)"
        " SELECT device_id, key, CAST(t / 60 AS INTEGER) * 60, count(*), count(*),"
        " total(CAST(value AS REAL)), min(CAST(value AS REAL)), max(CAST(value AS REAL))"
        " FROM data_points GROUP BY device_id, key, CAST(t / 60 AS INTEGER)"),
    "postgresql": (
        "INSERT INTO data_minutes (device_id, key, minute, n_all, n_num, total, lo, hi)"
        " SELECT device_id, key, floor(t / 60)::bigint * 60, count(*), count(*),"
        " sum((value::text)::float8), min((value::text)::float8), max((value::text)::float8)"
        " FROM data_points GROUP BY device_id, key, floor(t / 60)::bigint"),
}


def fill_sqlite(path: str, devices: list[str], days: int, every: float) -> int:
    from dashd.store import sqlite as sqlite_store

    conn = sqlite_store.connect(path, "NORMAL")
    sqlite_store.migrate(conn)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO accounts (id, name, created) VALUES (?, ?, 1)", (ACCOUNT, ACCOUNT))
    conn.executemany("INSERT INTO devices (id, account_id, name, token_hash, created, shadow)"
                     " VALUES (?, ?, ?, ?, 1, '{}')", [(d, ACCOUNT, d, "h" + d) for d in devices])
    n = 0
    batch = []
    for device_id, t, value in points(devices, days, every):
        batch.append((device_id, ACCOUNT, t, KEY, value))
        if len(batch) == 100000:
            conn.executemany("INSERT INTO data_points (device_id, account_id, t, key, value)"
                             " VALUES (?, ?, ?, ?, ?)", batch)
            n += len(batch)
            batch = []
    conn.executemany("INSERT INTO data_points (device_id, account_id, t, key, value)"
                     " VALUES (?, ?, ?, ?, ?)", batch)
    n += len(batch)
    conn.execute(SUMMARISE["sqlite"])
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return n


def fill_postgres(url: str, devices: list[str], days: int, every: float) -> int:
    import psycopg

    from dashd.store import postgres

    n = 0
    with psycopg.connect(url, autocommit=True) as conn:
        postgres.migrate(conn)
        conn.execute("INSERT INTO accounts (id, name, created) VALUES (%s, %s, 1)",
                     (ACCOUNT, ACCOUNT))
        for d in devices:
            conn.execute("INSERT INTO devices (id, account_id, name, token_hash, created, shadow)"
                         " VALUES (%s, %s, %s, %s, 1, '{}')", (d, ACCOUNT, d, "h" + d))
        with conn.cursor() as cur:
            with cur.copy("COPY data_points (device_id, account_id, t, key, value)"
                          " FROM STDIN") as copy:
                for device_id, t, value in points(devices, days, every):
                    copy.write_row((device_id, ACCOUNT, t, KEY, value))
                    n += 1
        conn.execute(SUMMARISE["postgresql"])
        conn.execute("VACUUM ANALYZE data_points")
        conn.execute("VACUUM ANALYZE data_minutes")
    return n


def queries(devices: list[str], days: int) -> list[tuple[str, str, Any]]:
    week = [(d, None) for d in devices]
    span = days * 86400.0
    return [
        ("%d devices, %d days in 600 s buckets (the chart)" % (len(devices), days),
         "buckets", (week, END - span, END, 600)),
        ("%d devices, %d days in 3600 s buckets" % (len(devices), days),
         "buckets", (week, END - span, END, 3600)),
        ("%d devices, %d days, unaligned ends, 600 s buckets" % (len(devices), days),
         "buckets", (week, END - span + 17.5, END - 31.25, 600)),
        ("%d devices, the last day in 60 s buckets" % len(devices),
         "buckets", (week, END - 86400, END, 60)),
        ("%d devices, the last hour in 5 s buckets (raw points)" % len(devices),
         "buckets", (week, END - 3600, END, 5)),
        ("1 device, %d days in 61 s buckets (no summaries: every point)" % days,
         "buckets", (week[:1], END - span, END, 61)),
        ("%d devices, the last hour's raw points (limit 5000)" % len(devices),
         "range", (week, END - 3600, END, 5000)),
    ]


def each_device(store: Any) -> Any:
    """The chart's query on PostgreSQL as it was before it became one
    statement: two statements a device and one a key (a round trip each),
    for a side-by-side figure."""
    from dashd.store import ranges_sql
    from dashd.store.calls_sql import Db

    def query(*args: Any) -> Any:
        return store._run(lambda cur: ranges_sql.buckets_each(Db(cur, "postgresql"), *args))

    return query


async def compare(store: Any, devices: list[str], days: int, runs: int) -> list[Any]:
    """PostgreSQL: the chart's query in one statement and a device at a
    time, taken in turns (so that the machine's load and the database's
    caches weigh on both alike), after a round of each untimed; and the
    one statement's own time in the database (EXPLAIN ANALYZE)."""
    from dashd.store import ranges_sql

    what, _, args = queries(devices, days)[0]
    before = each_device(store)
    await store.query_buckets(*args)
    await before(*args)
    times: dict[str, list[float]] = {"one": [], "each": []}
    for _ in range(runs):
        for name, query in (("one", store.query_buckets), ("each", before)):
            started = time.perf_counter()
            await query(*args)
            times[name].append((time.perf_counter() - started) * 1000)
    selection, start, end, bucket = args
    params = ranges_sql.buckets_pg_params([d for d, _ in selection], [None] * len(selection),
                                          start, end, bucket)

    def explain(cur: Any) -> str:
        cur.execute(("EXPLAIN (ANALYZE, TIMING OFF) " + ranges_sql._BUCKETS_PG).encode(), params)
        return [r[0] for r in cur.fetchall()][-1]

    print("  the chart's one statement in the database: %s" % await store._run(explain))
    return [(what.replace("(the chart)", "one statement (now), in turns"),
             statistics.median(times["one"]), max(times["one"]), 0, 0),
            (what.replace("(the chart)", "a device at a time (before), in turns"),
             statistics.median(times["each"]), max(times["each"]), 0, 0)]


async def measure(store: Any, devices: list[str], days: int, runs: int,
                  kind_of_store: str = "sqlite") -> list[Any]:
    out = []
    listed = queries(devices, days)
    if kind_of_store == "postgresql":
        out += await compare(store, devices, days, runs)
    for what, kind, args in listed:
        times = []
        size = 0
        cells = 0
        for _ in range(runs):
            started = time.perf_counter()
            if kind == "buckets":
                series = await store.query_buckets(*args)
                body = json_bytes({"from": args[1], "to": args[2], "bucket": args[3],
                                   "series": series})
                cells = sum(len(s["t"]) for s in series)
            else:
                series, following = await store.query_range(*args)
                body = json_bytes({"from": args[1], "to": args[2], "bucket": None,
                                   "series": series, "next": following})
                cells = sum(len(s["t"]) for s in series)
            times.append((time.perf_counter() - started) * 1000)
            size = len(body)
        out.append((what, statistics.median(times), max(times), cells, size))
    return out


def run_store(kind: str, args: Any) -> None:
    from twisted.internet import defer, task

    devices = ["d%07d" % i for i in range(args.devices)]
    directory = tempfile.mkdtemp(prefix="dashd-bench-ranges-")
    url = None
    started = time.perf_counter()
    try:
        if kind == "sqlite":
            from dashd.store.sqlite import SQLiteStore

            path = os.path.join(directory, "dashd.sqlite3")
            n = fill_sqlite(path, devices, args.days, args.every)

            def make(reactor: Any) -> Any:
                return SQLiteStore(path, reactor)
        else:
            import psycopg

            name = "dashd_bench_ranges_%d" % os.getpid()
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS %s" % name)
                conn.execute("CREATE DATABASE %s" % name)
            url = args.postgres.rsplit("/", 1)[0] + "/" + name
            n = fill_postgres(url, devices, args.days, args.every)

            def make(reactor: Any) -> Any:
                from dashd.store.postgres import PostgresStore

                return PostgresStore(url, reactor)
        filled = time.perf_counter() - started

        async def main(reactor: Any) -> None:
            store = make(reactor)
            store.start()
            try:
                results = await measure(store, devices, args.days, args.runs, kind)
            finally:
                await store.stop()
            print("\n%s: %d points (filled in %.0f s)" % (kind, n, filled))
            print("  %-58s %9s %9s %7s %9s" % ("query", "median", "slowest", "cells", "bytes"))
            for what, median, slowest, cells, size in results:
                print("  %-58s %6.1f ms %6.1f ms %7d %9d" % (what, median, slowest, cells, size),
                      flush=True)

        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit:
        pass
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if url is not None:
            import psycopg

            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % url.rsplit("/", 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--every", type=float, default=3.0)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--stores", default="sqlite,postgresql")
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1/postgres")
    args = p.parse_args()
    print("machine: %s" % machine())
    for kind in [s.strip() for s in args.stores.split(",") if s.strip()]:
        # Each store in a process of its own: a reactor runs once.
        pid = os.fork()
        if pid == 0:
            try:
                run_store(kind, args)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
