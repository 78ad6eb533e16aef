"""
The alarms benchmark (issue 20): devices reporting once a second, with and
without one threshold rule over all of them, and how soon an alarm reaches
a webhook receiver after the report that raised it.

    .venv/bin/python -m bench.alarms [--devices 10000] [--duration 30] [--trips 200]

1. dashd (twistd, SQLite, its defaults but for webhooks to 127.0.0.1)
   and N devices (bench.worker processes) each reporting ``{"temp": 20..29}``
   once a second, spread evenly (open loop), for --duration seconds: dashd's
   CPU seconds per acknowledged report, without any rule.
2. A webhook to a receiver in this process and a rule ``temp above 50,
   clear 30`` over every device; the same load again: CPU per report with
   the rule.
3. Meanwhile (in 2.), --trips other devices, one after the other, report
   ``{"temp": 99}``: the time from that report leaving the device to the
   ``alarm.raised`` delivery reaching the receiver, whose p50/p99 is printed.

The figures depend on the machine; the machine's load is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.__main__ import Meter, Server, WorkerProcess, call_all, machine, split
from bench.worker import percentiles


class Receiver:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.raised: dict[str, float] = {}
        self.count = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                t = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                event = json.loads(body)
                outer.count += 1
                if event["kind"] == "alarm.raised":
                    outer.arrived.setdefault(event["data"]["device_id"], t)
                    outer.raised.setdefault(event["data"]["device_id"], event["data"]["raised"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def post(server: Server, path: str, body: Any) -> Any:
    req = urllib.request.Request("http://127.0.0.1:%d/api/v2%s" % (server.port, path),
                                 data=json.dumps(body).encode(), method="POST")
    req.add_header("Authorization", "Bearer " + (server.key or ""))
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def phase(server: Server, workers: list[WorkerProcess], counts: list[int],
          duration: float, during: Any = None) -> dict[str, Any]:
    meter = Meter(server.pid, [w.proc.pid for w in workers])
    for w, n in zip(workers, counts):
        w.send({"cmd": "rate", "count": n, "interval": 1.0, "duration": duration})
    if during is not None:
        during()
    results = [w.receive(duration + 120) for w in workers]
    cpu = meter.read()
    acked = sum(r["acked"] for r in results)
    sent = sum(r["sent"] for r in results)
    return dict(cpu, sent=sent, acked=acked, errors=sum(r["errors"] for r in results),
                reports_per_s=round(acked / duration, 1),
                cpu_us_per_report=round(cpu["server_cpu_s"] / max(1, acked) * 1e6, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--trips", type=int, default=200)
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="dashd-bench-alarms-")
    receiver = Receiver()
    ns = argparse.Namespace(backlog=4096, twistd_option=[], tls=False, dashd_config=[
        "webhooks.allow_http=true", 'webhooks.allowed_networks=["127.0.0.0/8"]'])
    server = Server("dashd", ns, os.path.join(workdir, "dashd"))
    workers = [WorkerProcess("d%d" % i, workdir) for i in range(args.workers)]
    trip_w = WorkerProcess("trips", workdir)
    try:
        total = args.devices + args.trips
        tokens_file = os.path.join(workdir, "tokens.txt")
        host = {"host": "127.0.0.1", "port": server.port}
        r = trip_w.call(dict(host, cmd="register", key=server.key, count=total,
                             out=tokens_file, concurrency=32), timeout=3600)
        print("registered %d devices in %.1f s" % (r["registered"], r["seconds"]), flush=True)
        with open(tokens_file) as f:
            tokens = [line.strip() for line in f if line.strip()]
        parts = split(tokens[: args.devices], len(workers))
        call_all(workers, [dict(host, cmd="connect", tokens=part, timeout=600) for part in parts],
                 timeout=900)
        trip_w.call(dict(host, cmd="connect", tokens=tokens[args.devices:], timeout=300))
        print("connected %d + %d devices" % (args.devices, args.trips), flush=True)
        counts = [len(part) for part in parts]
        without = phase(server, workers, counts, args.duration)
        print("without a rule:", json.dumps(without), flush=True)

        post(server, "/webhooks", {"url": "http://127.0.0.1:%d/hook" % receiver.port,
                                   "events": ["alarm.raised"]})
        post(server, "/alarm-rules", {"name": "hot", "severity": "major", "condition": {
            "kind": "threshold", "key": "temp", "above": 50, "clear": 30}})
        # The engine first reads each device's alarms (in batches) when it is
        # next heard of: once, after the rule is made; not measured.
        phase(server, workers, counts, 5.0)
        sent: dict[str, float] = {}

        def trips() -> None:
            gap = max(0.05, (args.duration - 5) / max(1, args.trips))
            time.sleep(2)
            for i in range(args.trips):
                out = trip_w.call({"cmd": "trip", "position": i, "temp": 99})
                if out["device_id"]:
                    sent[out["device_id"]] = out["t"]
                time.sleep(gap)

        with_rule = phase(server, workers, counts, args.duration, during=trips)
        print("with the rule:", json.dumps(with_rule), flush=True)
        deadline = time.time() + 10
        while len([d for d in sent if d in receiver.arrived]) < len(sent) and \
                time.time() < deadline:
            time.sleep(0.1)
        latencies = [receiver.arrived[d] - t for d, t in sent.items() if d in receiver.arrived]
        lat = percentiles(latencies)
        decided = percentiles([receiver.raised[d] - t for d, t in sent.items()
                               if d in receiver.raised])
        print("of which from the report to the decision to raise: p50 %.3f s, p99 %.3f s"
              % (decided["p50"] or -1, decided["p99"] or -1))
        rise = (with_rule["cpu_us_per_report"] / without["cpu_us_per_report"] - 1) * 100
        print("alarms delivered: %d of %d trips; latency p50 %.3f s, p99 %.3f s, max %.3f s"
              % (len(latencies), len(sent), lat["p50"] or -1, lat["p99"] or -1,
                 max(latencies) if latencies else -1))
        print("CPU per report: %.1f us without the rule, %.1f us with it: %+.1f%%"
              % (without["cpu_us_per_report"], with_rule["cpu_us_per_report"], rise))
        print("machine:", json.dumps(machine()))
    finally:
        for w in workers + [trip_w]:
            w.stop()
        server.proc.terminate()
        server.proc.wait(30)
        receiver.server.shutdown()


if __name__ == "__main__":
    main()
