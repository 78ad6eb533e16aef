"""
Device queries (dashd.domain.query) on a registry of 100,000 devices with
realistic shadows and info, on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.query [--devices 100000] [--runs 15]
        [--stores sqlite,postgresql] [--postgres postgresql://postgres@127.0.0.1/postgres]

Fills a new store of each kind (SQLite in a temporary directory, a new
PostgreSQL database dropped afterwards) the way dashd leaves it: the
devices' rows and the rows of the query index (``device_facts``) that the
store's own code computes (``dashd.domain.query.facts``), written in bulk.
Then asks each query through the store's methods (``select_devices``,
``count_devices``, on the reactor, as the REST API does) and prints the
median and the slowest of ``--runs`` answers. The target (issue 17): a
selective query and a count each under 200 ms. The queries of paths that
are not indexed are printed too, to show what a full scan costs.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from typing import Any

from dashd.domain import query as q
from dashd.jsontext import compact

SITES = ["site-%03d" % i for i in range(200)]
ACCOUNT = "acme"

# (what, the query, count instead of a page)
QUERIES = [
    ("selective: a site and old firmware, a page of 100",
     'shadow.tags.site = "site-042" and info.fw_version < "1.4.0"', False),
    ("count: one site", 'shadow.tags.site = "site-042"', True),
    ("count: old firmware (a third of the fleet)", 'info.fw_version < "1.4.0"', True),
    ("selective: a site, offline, not on esp8266",
     'shadow.tags.site in ["site-007", "site-008"] and not online '
     'and not info.arch = "esp8266"', False),
    ("selective: a name prefix, a page of 100", 'name matches "dev-4242*"', False),
    ("page: the first 100 by name", None, False),
    ("count: everything", None, True),
    ("full scan: a reported value, a page of 100", "shadow.reported.env.temp > 34.5", False),
    ("full scan: count of a reported value", "shadow.reported.env.temp > 34.5", True),
]


def device(i: int, rng: random.Random) -> tuple[Any, ...]:
    major, minor = rng.choice([(1, m) for m in range(13)])
    fw = "1.%d.%d" % (minor, rng.randint(0, 9)) if major == 1 else "2.0.0"
    arch = rng.choice(["esp32", "esp32", "esp8266", "esp32c3"])
    shadow = {
        "state": {
            "desired": {"led": rng.random() < 0.5, "interval": rng.choice([10, 30, 60])},
            "reported": {
                "led": rng.random() < 0.5,
                "env": {"temp": round(rng.uniform(-5, 35), 1), "hum": rng.randint(20, 90)},
                "ota": {"app": "sensor", "arch": arch, "fw_version": fw,
                        "fw_id": "2026%06d" % i},
                "wifi": {"ssid": "net-%d" % (i % 50), "rssi": -rng.randint(40, 90)},
                "uptime": rng.randint(0, 10 ** 6),
            },
        },
        "tags": {"site": rng.choice(SITES), "floor": rng.randint(0, 9),
                 "group": rng.choice(["a", "b", "c"]), "owner": {"team": "t%d" % (i % 20)}},
        "version": rng.randint(1, 500),
        "timestamp": 1764000000.0 + i,
    }
    info = {"app": "sensor", "arch": arch, "fw_version": fw, "fw_id": "2026%06d" % i,
            "mac": "AA:BB:CC:%02X:%02X:%02X" % (i >> 16 & 255, i >> 8 & 255, i & 255),
            "ram_size": 294512, "ram_free": rng.randint(1000, 90000), "uptime": 12345}
    device_id = "d%07d" % i
    return (device_id, ACCOUNT, "dev-%d" % i, "h%d" % i, 1764000000.0 + i,
            1764000000.0 + i + rng.randint(0, 86400), info, shadow)


def devices(count: int) -> list[tuple[Any, ...]]:
    rng = random.Random(17)
    return [device(i, rng) for i in range(count)]


def fill_sqlite(path: str, rows: list[tuple[Any, ...]]) -> None:
    from dashd.store import sqlite as sqlite_store

    conn = sqlite_store.connect(path, "NORMAL")
    sqlite_store.migrate(conn)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO accounts (id, name, created) VALUES (?, ?, 1)", (ACCOUNT, ACCOUNT))
    conn.executemany(
        "INSERT INTO devices (id, account_id, name, token_hash, created, last_seen, info, shadow)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [r[:6] + (compact(r[6]), compact(r[7])) for r in rows])
    conn.executemany(
        "INSERT INTO device_facts (device_id, section, path, type, text, num, version)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(r[0],) + f for r in rows for f in q.facts(r[6], r[7]["tags"])])
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def fill_postgres(url: str, rows: list[tuple[Any, ...]]) -> None:
    import psycopg

    from dashd.store import postgres

    with psycopg.connect(url, autocommit=True) as conn:
        postgres.migrate(conn)
        conn.execute("INSERT INTO accounts (id, name, created) VALUES (%s, %s, 1)",
                     (ACCOUNT, ACCOUNT))
        with conn.cursor() as cur:
            with cur.copy("COPY devices (id, account_id, name, token_hash, created, last_seen,"
                          " info, shadow) FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r[:6] + (compact(r[6]), compact(r[7])))
            with cur.copy("COPY device_facts (device_id, section, path, type, text, num,"
                          " version) FROM STDIN") as copy:
                for r in rows:
                    for f in q.facts(r[6], r[7]["tags"]):
                        copy.write_row((r[0],) + f)
        conn.execute("VACUUM ANALYZE devices")
        conn.execute("VACUUM ANALYZE device_facts")


async def measure(store: Any, runs: int, online: tuple[str, ...]) -> list[tuple[str, Any]]:
    out = []
    for what, where, counting in QUERIES:
        node = q.parse(where) if where is not None else None
        selection = q.Selection(
            where=node, account_id=ACCOUNT, order="name" if where is None else "created",
            limit=None if counting else 100,
            online=online if q.uses_online(node) else None)
        times, found = [], None
        for _ in range(runs):
            started = time.perf_counter()
            if counting:
                found = await store.count_devices(selection)
            else:
                # (the store gives one more than the limit when there are more)
                found = min(len(await store.select_devices(selection)), 100)
            times.append((time.perf_counter() - started) * 1000)
        out.append((what, (statistics.median(times), max(times), found)))
    return out


def run_store(kind: str, rows: list[tuple[Any, ...]], runs: int, postgres_url: str) -> None:
    from twisted.internet import defer, task

    directory = tempfile.mkdtemp(prefix="dashd-bench-query-")
    url = None
    started = time.perf_counter()
    try:
        if kind == "sqlite":
            from dashd.store.sqlite import SQLiteStore

            path = os.path.join(directory, "dashd.sqlite3")
            fill_sqlite(path, rows)

            def make(reactor: Any) -> Any:
                return SQLiteStore(path, reactor)
        else:
            import psycopg

            name = "dashd_bench_query_%d" % os.getpid()
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS %s" % name)
                conn.execute("CREATE DATABASE %s" % name)
            url = postgres_url.rsplit("/", 1)[0] + "/" + name
            fill_postgres(url, rows)

            def make(reactor: Any) -> Any:
                from dashd.store.postgres import PostgresStore

                return PostgresStore(url, reactor)
        filled = time.perf_counter() - started
        # A tenth of the fleet online, as the router would say.
        online = tuple(r[0] for r in rows[::10])

        async def main(reactor: Any) -> None:
            store = make(reactor)
            store.start()
            try:
                results = await measure(store, runs, online)
            finally:
                await store.stop()
            print("\n%s: %d devices (filled in %.0f s)" % (kind, len(rows), filled))
            print("  %-52s %9s %9s %8s" % ("query", "median", "slowest", "found"))
            for what, (median, slowest, found) in results:
                print("  %-52s %6.1f ms %6.1f ms %8d" % (what, median, slowest, found))

        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit:
        pass
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        if url is not None:
            import psycopg

            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS %s" % url.rsplit("/", 1)[1])


def machine() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    return "%s, %d cores, load %.1f %.1f %.1f, Python %s" % (
        model, os.cpu_count() or 0, *load, platform.python_version())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--postgres", default=os.environ.get(
        "DASHD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args(argv)
    print("machine: %s" % machine())
    rows = devices(args.devices)
    print("a shadow is %d bytes of JSON, an info %d" % (len(compact(rows[0][7])),
                                                       len(compact(rows[0][6]))))
    for kind in [s.strip() for s in args.stores.split(",") if s.strip()]:
        # Each store in a process of its own: a reactor runs once.
        pid = os.fork()
        if pid == 0:
            try:
                run_store(kind, rows, args.runs, args.postgres)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


