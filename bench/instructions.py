"""
Instructions dashd executes per REST RPC call, counted by valgrind's
callgrind: the same figure whatever else the machine is doing, so two
versions can be compared on a busy, shared machine where timings swing.

    .venv/bin/python -m bench.instructions [--calls 500] [--targets baseline,dashd]

Starts each server (the baseline bridge of L{bench.baseline}, then dashd)
under ``valgrind --tool=callgrind`` with counting off, connects one
simulated device (in this process, not counted), makes ``--calls`` warm-up
calls, then counts the instructions of the server's process during
``--calls`` more (one at a time, ``GET .../rpc/Sys.GetInfo``) and prints
the count per call, and dashd's as a ratio of the baseline's: the CPU a
call costs, compared in a way that holds on a busy machine. Needs valgrind
(Debian's package).
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


def start(target: str, work: str, port: int) -> tuple[subprocess.Popen, str, str, str]:
    """Start C{target} under callgrind with counting off; return the
    process, its API key (none for the baseline), a device's token and ID."""
    out = os.path.join(work, "callgrind.out")
    log = open(os.path.join(work, "server.log"), "wb")
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                "--callgrind-out-file=" + out]
    base = "http://127.0.0.1:%d" % port
    if target == "baseline":
        server = subprocess.Popen(valgrind + [PYTHON, "-m", "bench.baseline", "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "baseline did not start"
            try:
                urllib.request.urlopen(base + "/stats", timeout=5).read()
                break
            except OSError:
                time.sleep(0.5)
        # The baseline takes the part of the token before "-" as the ID.
        return server, "", "bench1-x", "bench1"
    config = os.path.join(work, "dashd.toml")
    with open(config, "w") as f:
        f.write('listen = ["tcp:%d:interface=127.0.0.1"]\ndata_dir = %s\n'
                "[limits]\nrequests_per_second = 0\nfailed_auth_per_minute = 0\n"
                "[device]\nping_interval = 0\n"
                "[gc]\nfull_collection_interval = 0\n"
                % (port, json.dumps(os.path.join(work, "data"))))
    server = subprocess.Popen(valgrind + [PYTHON, TWISTD, "-n", "--pidfile=", "dashd",
                                          "--config", config],
                              stdout=log, stderr=subprocess.STDOUT)
    key_file = os.path.join(work, "data", "admin.key")
    deadline = time.monotonic() + 300
    while not os.path.exists(key_file):
        assert server.poll() is None and time.monotonic() < deadline, "dashd did not start"
        time.sleep(0.5)
    time.sleep(2)
    with open(key_file) as f:
        key = f.read().strip()
    device = post(base + "/api/v2/devices", key, {})
    return server, key, device["token"], device["id"]


def count(target: str, n: int) -> int:
    """Instructions C{target}'s process executes per REST RPC call."""
    work = tempfile.mkdtemp(prefix="dashd-instructions-")
    port = free_port()
    server, key, token, device_id = start(target, work, port)
    try:
        async def run(reactor):
            from dashd.simulator import SimulatedDevice

            sim = SimulatedDevice("ws://127.0.0.1:%d/api/v2/rpc" % port, token, reactor)
            sim.start()
            await sim.wait_open()
            await task.deferLater(reactor, 2, lambda: None)
            base = "http://127.0.0.1:%d" % port
            await defer.ensureDeferred(calls(reactor, base, key, device_id, n))
            control(server.pid, "--instr=on")
            await defer.ensureDeferred(calls(reactor, base, key, device_id, n))
            control(server.pid, "--instr=off")
            control(server.pid, "--dump")
            await sim.stop()

        # One reactor per process: each target is counted in a child.
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    finally:
        server.terminate()
        server.wait(120)
    total = 0
    for name in os.listdir(work):
        if name.startswith("callgrind.out"):
            with open(os.path.join(work, name)) as f:
                for line in f:
                    m = re.match(r"^(?:summary|totals): (\d+)", line)
                    if m:
                        total = max(total, int(m.group(1)))
    shutil.rmtree(work, ignore_errors=True)
    return total // n


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions")
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--targets", default="baseline,dashd",
                   help="which servers to count, in order (default: baseline,dashd)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(count(args.one, args.calls))
        return 0
    figures = {}
    for target in args.targets.split(","):
        # A reactor cannot be restarted: each count runs in a process of its own.
        out = subprocess.run([PYTHON, "-m", "bench.instructions", "--one", target,
                              "--calls", str(args.calls)],
                             capture_output=True, text=True, check=True)
        figures[target] = int(out.stdout.split()[-1])
        print("%-8s %12d instructions a REST RPC call (%d calls counted)"
              % (target, figures[target], args.calls), flush=True)
    if "baseline" in figures and "dashd" in figures:
        print("dashd / baseline: %.2f" % (figures["dashd"] / figures["baseline"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
