"""
Instructions dashd executes per execution of an RPC job (issue 18),
counted by valgrind's callgrind: the same figure whatever else the machine
is doing, so two versions can be compared on a busy, shared machine.

    .venv/bin/python -m bench.jobs_instructions [--devices 500]

Starts dashd under ``valgrind --tool=callgrind`` with counting off
(L{bench.instructions.start}), registers ``--devices`` devices and
connects them as lean devices (L{bench.lean}, in a ``bench.worker``
process: not counted), then counts dashd's instructions (every thread:
reactor, SQLite writer and readers) from the job's creation to its
completion (an RPC job, ``Sim.Echo``, on every device, no rate limit,
concurrency 10,000, as ``bench.jobs``) and prints them per execution. The
job's progress is polled once a second (those GETs are counted too).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from bench.__main__ import WorkerProcess, call_all
from bench.datapull import free_port, request
from bench.instructions import callgrind_total, control, start
from bench.jobs import register_all


def ask(method: str, url: str, key: str, body: dict | None = None) -> tuple[int, bytes]:
    """A request, asked again while dashd (slowed by callgrind, on a busy
    machine) does not answer in time."""
    for _ in range(20):
        try:
            return request(method, url, key, body)
        except OSError:
            time.sleep(1)
    return request(method, url, key, body)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.jobs_instructions")
    p.add_argument("--devices", type=int, default=500)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="dashd-jobs-instructions-")
    port = free_port()
    server, key, _, _ = start("dashd", work, port)
    base = "http://127.0.0.1:%d" % port
    workers: list[WorkerProcess] = []
    try:
        tokens = [t for t, _ in register_all(base, key, args.devices, 4)]
        workers.append(WorkerProcess("jobs-instr", work))
        (answer,) = call_all(workers, [{"cmd": "connect", "host": "127.0.0.1", "port": port,
                                        "tokens": tokens, "binds": ["127.0.0.2"],
                                        "timeout": 600}], timeout=630)
        while True:
            status, body = ask("GET", base + "/api/v2/devices/count?where=online", key)
            if json.loads(body)["count"] >= args.devices + 0:
                break
            time.sleep(1)
        time.sleep(5)  # the devices' info stored
        control(server.pid, "--instr=on")
        status, body = request("POST", base + "/api/v2/jobs", key, {
            "name": "bench rpc", "target": {"where": "online"}, "concurrency": 10000,
            "action": {"type": "rpc", "method": "Sim.Echo", "params": {"n": 1}}})
        assert status == 201, body
        job_id = json.loads(body)["id"]
        while True:
            time.sleep(1)
            status, body = ask("GET", base + "/api/v2/jobs/" + job_id, key)
            job = json.loads(body)
            if job["state"] in ("completed", "aborted"):
                break
        control(server.pid, "--instr=off")
        control(server.pid, "--dump")
        time.sleep(2)
    finally:
        for worker in workers:
            worker.stop()
        server.terminate()
        server.wait(120)
    total = callgrind_total(work)
    done = job["progress"]["succeeded"]
    print("rpc job: %d of %d succeeded; dashd %d instructions an execution (%d devices)"
          % (done, job["progress"]["total"], total // max(1, job["progress"]["total"]),
             args.devices), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
