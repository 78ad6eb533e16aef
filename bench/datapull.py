"""
A fleet of mDash-library devices comes online at once, each with data it
stored while offline (mDashStore), while a REST client keeps asking.

    .venv/bin/python -m bench.datapull [--devices 1000] [--lines 1000] [--store-url URL]

Starts dashd (``twistd -n dashd``, SQLite in a temporary directory unless
``--store-url`` names a PostgreSQL database), registers the devices, and
runs them (``dashd.simulator``'s mdash dialect) in a process of their own,
each with ``--lines`` lines already in its ``mdash.unsent`` (and its
``.old``). Once connected each stores one more line, so dashd hears
``DB.NewData`` and pulls everything. Meanwhile one REST client reads a
device (``GET /api/v2/devices/ID``) over and over, one request at a time.

Prints how long until every line was stored (dashd's
``dashd_data_lines_pulled_total``), the lines a second, the GET latencies
while it ran (the target: p99 under 100 ms), and dashd's RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method: str, url: str, key: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": "Bearer " + key,
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=30) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_devices(url: str, tokens_file: str, lines: int) -> None:
    """The device process: every device with its stored lines, all at once."""
    from twisted.internet import reactor

    from dashd.simulator import SimulatedDevice

    with open(tokens_file) as f:
        tokens = [line.strip() for line in f if line.strip()]
    devices = []
    for token in tokens:
        device = SimulatedDevice(url, token, reactor, dialect="mdash",
                                 reconnect_delay=(1.0, 5.0))
        for n in range(lines):
            device.store("temperature", {"n": n, "value": 21.5})
        device.wait_open().addCallback(lambda d: d.store("temperature", {"n": lines}))
        devices.append(device.start())
    reactor.run()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.datapull", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--lines", type=int, default=1000, help="stored lines a device has")
    p.add_argument("--store-url", default="", help="a PostgreSQL database instead of SQLite")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--devices-process", nargs=3, metavar=("URL", "TOKENS", "LINES"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.devices_process:
        url, tokens, lines = args.devices_process
        run_devices(url, tokens, int(lines))
        return 0

    work = tempfile.mkdtemp(prefix="dashd-datapull-")
    port = free_port()
    config = os.path.join(work, "dashd.toml")
    with open(config, "w") as f:
        f.write('listen = ["tcp:%d:interface=127.0.0.1:backlog=4096"]\ndata_dir = %s\n'
                "[limits]\nrequests_per_second = 0\nfailed_auth_per_minute = 0\n"
                % (port, json.dumps(os.path.join(work, "data"))))
        if args.store_url:
            f.write("[store]\nurl = %s\n" % json.dumps(args.store_url))
    base = "http://127.0.0.1:%d" % port
    log = open(os.path.join(work, "dashd.log"), "wb")
    dashd = subprocess.Popen([TWISTD, "-n", "--pidfile=", "dashd", "--config", config],
                             stdout=log, stderr=subprocess.STDOUT)
    devices = None
    try:
        key_file = os.path.join(work, "data", "admin.key")
        deadline = time.monotonic() + 30
        while not os.path.exists(key_file):
            assert time.monotonic() < deadline, "dashd did not start (%s)" % work
            time.sleep(0.1)
        time.sleep(0.5)
        with open(key_file) as f:
            key = f.read().strip()
        tokens, ids = [], []
        for _ in range(args.devices):
            status, body = request("POST", base + "/api/v2/devices", key, {})
            assert status == 200, body
            reply = json.loads(body)
            tokens.append(reply["token"])
            ids.append(reply["id"])
        tokens_file = os.path.join(work, "tokens")
        with open(tokens_file, "w") as f:
            f.write("\n".join(tokens) + "\n")
        expected = args.devices * (args.lines + 1)
        print("%d devices with %d stored lines each (%d lines); dashd on %s"
              % (args.devices, args.lines, expected,
                 "PostgreSQL" if args.store_url else "SQLite"), flush=True)
        started = time.monotonic()
        devices = subprocess.Popen(
            [sys.executable, "-m", "bench.datapull", "--devices-process",
             "ws://127.0.0.1:%d/api/v2/rpc" % port, tokens_file, str(args.lines)],
            cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        latencies: list[float] = []
        stored = 0.0
        last_poll = 0.0
        while time.monotonic() - started < args.timeout:
            t = time.monotonic()
            status, _ = request("GET", base + "/api/v2/devices/" + ids[0], key)
            latencies.append(time.monotonic() - t)
            assert status == 200, status
            if time.monotonic() - last_poll > 1.0:
                last_poll = time.monotonic()
                stored = metric(base, "dashd_data_lines_pulled_total")
                if stored >= expected:
                    break
        took = time.monotonic() - started
        latencies.sort()

        def pct(q: float) -> float:
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        print("stored %d of %d lines in %.1f s (%.0f lines/s, connections included)"
              % (stored, expected, took, stored / took), flush=True)
        print("GET /api/v2/devices/ID while it ran: %d requests, p50 %.1f ms, p99 %.1f ms, "
              "max %.1f ms (target: p99 < 100 ms)"
              % (len(latencies), pct(0.5), pct(0.99), latencies[-1] * 1000), flush=True)
        print("dashd RSS %.1f MB; pulls failed %d"
              % (rss_kb(dashd.pid) / 1024, metric(base, "dashd_data_pulls_failed_total")))
        return 0 if stored >= expected else 1
    finally:
        if devices is not None:
            devices.terminate()
            devices.wait(10)
        dashd.terminate()
        dashd.wait(30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
