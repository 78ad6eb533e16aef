"""
The SQLite writer's CPU for the store jobs of an RPC job's executions, in
this process (no dashd, no reactor): the real schema (every migration) on
a file, the real store jobs (L{dashd.store.jobs_sql},
L{dashd.store.calls_sql}), each in its own transaction as the writer runs
them.

    .venv/bin/python -m bench.jobs_writer [--executions 10000]

Prints the CPU time an execution of: its dispatch (batches of 250), its
call's claim and end (batches of 250, as CallDelivery gathers them; the end
includes the execution's end where the store does that), the sync after
the ends; and the time of one sync of the job with every execution out
and nothing to change (what a step's sync costs while the calls wait).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time

from dashd.domain import tokens
from dashd.store import calls_sql, jobs_sql
from dashd.store.sqlite import migrate


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.jobs_writer")
    p.add_argument("--executions", type=int, default=10000)
    n = p.parse_args().executions
    path = os.path.join(tempfile.mkdtemp(prefix="dashd-jobs-writer-"), "store.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn)
    db = calls_sql.Db(conn, "sqlite")

    def tx(job, *args):
        conn.execute("BEGIN IMMEDIATE")
        out = job(db, *args)
        conn.execute("COMMIT")
        return out

    account = "a1"
    conn.execute("BEGIN")
    conn.execute("INSERT INTO accounts (id, name, created) VALUES (?, ?, ?)",
                 (account, "acme", 1.0))
    ids = [tokens.new_id("d") for _ in range(n)]
    for i, device_id in enumerate(ids):
        conn.execute("INSERT INTO devices (id, account_id, name, created, token_hash, shadow)"
                     " VALUES (?, ?, ?, ?, ?, '{}')", (device_id, account, "b%d" % i, 1.0,
                                                      "h%d" % i))
    conn.execute("COMMIT")
    job = {"id": "j1", "account_id": account, "key_id": "k1", "name": "x", "kind": "rpc",
           "firmware_id": None, "state": "running", "created": 1.0, "started": 1.0,
           "spec": {"action": {"type": "rpc", "method": "Sim.Echo", "params": {"n": 1}},
                    "timeouts": {"queued": 600.0, "running": 10.0}, "retries": 0}}
    tx(jobs_sql.create, job, [(d, "queued", None) for d in ids])
    t = time.process_time()
    made: list = []
    while len(made) < n:
        made += tx(jobs_sql.dispatch, job, 250, 2.0, 100, 10 ** 9)
    dispatch = time.process_time() - t
    t = time.process_time()
    tx(jobs_sql.sync, "j1", 0, 2.5)
    sync_out = time.process_time() - t
    t = time.process_time()
    for i in range(0, n, 250):
        tx(calls_sql.each, calls_sql.claim,
           [(c.device_id, "n/1", 3.0, 4) for c in made[i:i + 250]])
    claim = time.process_time() - t
    t = time.process_time()
    for i in range(0, n, 250):
        batch = sorted(made[i:i + 250], key=lambda c: c.id)  # as CallDelivery sorts them
        tx(calls_sql.each, calls_sql.end,
           [(c.id, 1, "n/1", "succeeded", 4.0, {"n": 1}, None) for c in batch])
    end = time.process_time() - t
    t = time.process_time()
    changed = tx(jobs_sql.sync, "j1", 0, 5.0)
    sync_after = time.process_time() - t
    print("%d executions, CPU an execution: dispatch %.0f us, claim %.0f us, end %.0f us, "
          "the sync after the ends %.0f us (%d changed: end + sync %.0f us); one sync with "
          "all %d out and nothing to change (their calls queued): %.1f ms"
          % (n, 1e6 * dispatch / n, 1e6 * claim / n, 1e6 * end / n, 1e6 * sync_after / n,
             changed, 1e6 * (end + sync_after) / n, n, 1e3 * sync_out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
