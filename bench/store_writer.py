"""
The SQLite writer thread's own CPU per device report, without a server:
D devices in a fresh store, then rounds of B ``update_shadow`` jobs (each
device reporting ``{"temp": .., "seq": ..}`` as the benchmark's devices do)
run as the writer runs a batch (one transaction, one commit), and the CPU
time of this thread per job (C{time.thread_time}: the fsync's wait is not
in it). A quick check of what a change to the store's jobs does, steadier
than wall-clock figures on a shared machine.

    .venv/bin/python -m bench.store_writer [--devices 1000] [--batch 200] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

from twisted.internet.defer import Deferred

from dashd.domain import shadow
from dashd.domain.model import Account, ApiKey, Device
from dashd.store.sqlite import SQLiteStore


class _NoReactor:
    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.store_writer")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="dashd-store-writer-")
    store = SQLiteStore(os.path.join(work, "s.sqlite3"), _NoReactor())  # type: ignore[arg-type]
    conn, reader = store._open()
    reader.close()
    jobs: list[Any] = []
    # The jobs are gathered here and run as the writer thread runs a batch.
    store._thread = object()  # type: ignore[assignment]
    store._submit = lambda job: jobs.append(job) or Deferred()  # type: ignore[method-assign]

    def batch() -> None:
        results = store._run_batch(conn, [(job, Deferred()) for job in jobs])
        jobs.clear()
        failed = [r for _, r in results if hasattr(r, "raiseException")]
        if failed:
            failed[0].raiseException()

    account = Account("abench", "bench", 1.0)
    store.bootstrap_admin_key(ApiKey("kbench", account.id, "admin", "admin", 1.0), "h" * 64,
                              account)
    ids = ["dbench%05d" % i for i in range(args.devices)]
    for i, device_id in enumerate(ids):
        store.create_device(Device(device_id, account.id, "d%d" % i, 1.0,
                                   info={"fw_version": "1.0", "arch": "esp32"}), "t%d" % i)
    batch()
    seq = 0
    updates = [shadow.parse_device_update({"state": {"reported": {"temp": 20 + n % 10,
                                                                   "seq": n}}})
               for n in range(args.batch)]

    def one_round() -> float:
        nonlocal seq
        for update in updates:
            seq += 1
            store.update_shadow(ids[seq % len(ids)], update, 1000.0 + seq, save_data=True)
        started = time.thread_time()
        batch()
        return time.thread_time() - started

    for _ in range(3):
        one_round()
    spent = sum(one_round() for _ in range(args.rounds))
    print("%.1f us of the writer's CPU a report (batches of %d over %d devices, %d counted)"
          % (spent / (args.rounds * args.batch) * 1e6, args.batch, args.devices,
             args.rounds * args.batch))
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
