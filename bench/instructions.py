"""
Instructions dashd executes per REST RPC call, counted by valgrind's
callgrind: the same figure whatever else the machine is doing, so two
versions can be compared on a busy, shared machine where timings swing.

    .venv/bin/python -m bench.instructions [--calls 500]

Starts dashd under ``valgrind --tool=callgrind`` with counting off,
connects one simulated device (in this process, not counted), makes
``--calls`` warm-up calls, then counts the instructions of dashd's process
during ``--calls`` more (one at a time, ``GET .../rpc/Sys.GetInfo``) and
prints the count per call. Needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from twisted.internet import defer, task

PYTHON = sys.executable
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, key: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": "Bearer " + key,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as reply:
        return json.loads(reply.read())


def control(pid: int, *args: str) -> str:
    return subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True,
                          text=True, timeout=120).stdout


async def calls(reactor, base: str, key: str, device_id: str, n: int) -> None:
    import treq

    url = "%s/api/v2/devices/%s/rpc/Sys.GetInfo" % (base, device_id)
    for _ in range(n):
        reply = await treq.get(url, headers={"Authorization": ["Bearer " + key]},
                               persistent=True)
        await reply.content()
        assert reply.code == 200, reply.code


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions")
    p.add_argument("--calls", type=int, default=500)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="dashd-instructions-")
    port = free_port()
    config = os.path.join(work, "dashd.toml")
    with open(config, "w") as f:
        f.write('listen = ["tcp:%d:interface=127.0.0.1"]\ndata_dir = %s\n'
                "[limits]\nrequests_per_second = 0\nfailed_auth_per_minute = 0\n"
                "[device]\nping_interval = 0\n"
                "[gc]\nfull_collection_interval = 0\n"
                % (port, json.dumps(os.path.join(work, "data"))))
    out = os.path.join(work, "callgrind.out")
    log = open(os.path.join(work, "dashd.log"), "wb")
    dashd = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=" + out,
         PYTHON, TWISTD, "-n", "--pidfile=", "dashd", "--config", config],
        stdout=log, stderr=subprocess.STDOUT)
    base = "http://127.0.0.1:%d" % port
    try:
        key_file = os.path.join(work, "data", "admin.key")
        deadline = time.monotonic() + 300
        while not os.path.exists(key_file):
            assert dashd.poll() is None and time.monotonic() < deadline, "dashd did not start"
            time.sleep(0.5)
        time.sleep(2)
        with open(key_file) as f:
            key = f.read().strip()
        device = post(base + "/api/v2/devices", key, {})

        async def run(reactor):
            from dashd.simulator import SimulatedDevice

            sim = SimulatedDevice("ws://127.0.0.1:%d/api/v2/rpc" % port, device["token"], reactor)
            sim.start()
            await sim.wait_open()
            await task.deferLater(reactor, 2, lambda: None)
            await defer.ensureDeferred(calls(reactor, base, key, device["id"], args.calls))
            control(dashd.pid, "--instr=on")
            await defer.ensureDeferred(calls(reactor, base, key, device["id"], args.calls))
            control(dashd.pid, "--instr=off")
            control(dashd.pid, "--dump")
            await sim.stop()

        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    finally:
        dashd.terminate()
        dashd.wait(120)
        log.close()
    total = 0
    for name in os.listdir(work):
        if name.startswith("callgrind.out"):
            with open(os.path.join(work, name)) as f:
                for line in f:
                    m = re.match(r"^(?:summary|totals): (\d+)", line)
                    if m:
                        total = max(total, int(m.group(1)))
    shutil.rmtree(work, ignore_errors=True)
    print("dashd: %d instructions a REST RPC call (%d calls counted)"
          % (total // args.calls, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
