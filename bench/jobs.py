"""
Fleet jobs under load (issue 18's benchmark lines).

    .venv/bin/python -m bench.jobs [--devices 10000] [--firmware-devices 1000]
                                   [--image-kb 256] [--store-url URL]
                                   [--parts rpc,firmware,rollout] [--no-reader]
                                   [--gets N]

Starts dashd (``twistd -n dashd``, SQLite in a temporary directory unless
``--store-url`` names a PostgreSQL database), registers the devices and
runs them in processes of their own, then:

1. ``rpc``: an RPC job (``Sim.Echo``) on every device, no rate limit,
   concurrency 10,000, while one REST client reads a device (``GET
   /api/v2/devices/ID``, on one keep-alive connection) over and over: prints devices a second (from the
   job's creation to its completion; target >= 1,000) and the GET latencies
   (target: p99 <= 100 ms);
2. ``firmware``: a firmware job pushing an image of ``--image-kb`` KB from
   the library to ``--firmware-devices`` devices, concurrency 50: prints
   devices a minute and dashd's RSS before and at its highest (which should
   follow the concurrency, not the fleet);
3. ``rollout``: a staged RPC job whose first phase (10 %) fails beyond its
   error threshold: prints whether the job paused and how many devices of
   the later phases got anything (must be 0).

The devices are ``bench.worker`` processes of lean devices (``bench.lean``:
a bare protocol each, echoing every call's params), so that the load
generator costs a small part of what dashd does and dashd has its core;
only the devices of the firmware part, which must take an update, are
``dashd.simulator`` devices (a full client each). The first tenth of all
devices fail ``Job.Step`` (the rollout's first phase).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from bench.__main__ import WorkerProcess, buckets, call_all, cpu_seconds
from bench.datapull import TWISTD, free_port, metric, request, rss_kb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PER_PROCESS = 2500  # full simulated devices a process
LEAN_PER_PROCESS = 5000  # lean devices a bench.worker process


def run_devices(url: str, tokens_file: str, first: int, count: int) -> None:
    """A process of full simulated devices (those the firmware part updates):
    devices [first, first + count) of the tokens file; the first 10 % of all
    fail Job.Step (the rollout's first phase)."""
    from twisted.internet import reactor

    from dashd.simulator import SimulatedDevice

    with open(tokens_file) as f:
        tokens = [line.strip() for line in f if line.strip()]
    failing = len(tokens) // 10
    for i in range(first, min(len(tokens), first + count)):
        device = SimulatedDevice(url, tokens[i], reactor, reconnect_delay=(1.0, 5.0))
        device.handlers["Job.Step"] = device.handlers["Sim.Fail"] if i < failing else \
            device.handlers["Sim.Echo"]
        device.start()
    reactor.run()


def histograms(base: str) -> dict[str, dict[str, float]]:
    """dashd's reactor lag (L{dashd.ops.stallprobe}) and store job duration
    histograms: name -> bucket -> count."""
    with urllib.request.urlopen(base + "/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return {name: buckets(text, name)
            for name in ("dashd_reactor_lag_seconds", "dashd_store_job_duration_seconds")}


def over(before: dict[str, float], after: dict[str, float], limit: float) -> str:
    """Of what a histogram counted between two readings: how many, how many
    over C{limit} seconds, and the bucket that holds the 99th percentile and
    the largest."""
    total = after.get("+Inf", 0) - before.get("+Inf", 0)
    bounds = sorted((float(b), b) for b in after if b != "+Inf")
    under = {b: after[b] - before.get(b, 0) for _, b in bounds}
    beyond = total - next((under[b] for v, b in bounds if v >= limit), total)
    p99 = next((b for v, b in bounds if under[b] >= 0.99 * total), "+Inf")
    worst = next((b for v, b in bounds if under[b] >= total), "+Inf")
    return "%d, %d over %g s, p99 <= %s s, the largest <= %s s" % (
        total, beyond, limit, p99, worst)


def wait_for(base: str, key: str, job_id: str, states: tuple[str, ...], timeout: float,
             timeline: list | None = None) -> dict:
    """Poll the job until it is in one of C{states}; append (seconds,
    progress) to C{timeline} at each look."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        status, body = request("GET", base + "/api/v2/jobs/" + job_id, key)
        job = json.loads(body)
        if timeline is not None:
            timeline.append((time.monotonic() - started, job["progress"]))
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.2)



def register_all(base: str, key: str, n: int, threads: int) -> list[tuple[str, str]]:
    """Register C{n} devices (named b0, b1, ...) over C{threads} connections
    at once: their tokens and IDs, in order."""
    def register(i: int) -> tuple[str, str]:
        status, body = request("POST", base + "/api/v2/devices", key, {"name": "b%d" % i})
        assert status == 200, body
        reply = json.loads(body)
        return reply["token"], reply["id"]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(register, range(n)))

def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.jobs",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10000)
    p.add_argument("--firmware-devices", type=int, default=1000)
    p.add_argument("--image-kb", type=int, default=256)
    p.add_argument("--store-url", default="", help="a PostgreSQL database instead of SQLite")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--parts", default="rpc,firmware,rollout",
                   help="which of rpc, firmware, rollout to run (comma-separated)")
    p.add_argument("--profile", default="",
                   help="write a cProfile of dashd (twistd --profile) to this file")
    p.add_argument("--py-spy", default="",
                   help="sample dashd with py-spy during the rpc job into this file "
                        "(collapsed stacks; py-spy must be installed)")
    p.add_argument("--no-reader", action="store_true",
                   help="the rpc job without the REST reader beside it (dashd's CPU an "
                        "execution alone)")
    p.add_argument("--gets", type=int, default=0,
                   help="before the parts: this many GET /api/v2/devices/ID on one "
                        "keep-alive connection, no job running: dashd's CPU a GET")
    p.add_argument("--devices-process", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.devices_process:
        url, tokens, first, count = args.devices_process
        run_devices(url, tokens, int(first), int(count))
        return 0

    work = tempfile.mkdtemp(prefix="dashd-jobs-")
    port = free_port()
    config = os.path.join(work, "dashd.toml")
    with open(config, "w") as f:
        f.write('listen = ["tcp:%d:interface=127.0.0.1:backlog=4096"]\ndata_dir = %s\n'
                "[limits]\nrequests_per_second = 0\nfailed_auth_per_minute = 0\n"
                "[calls]\nmax_queued_per_account = %d\n"
                "[ota]\nmax_bytes = %d\n"
                % (port, json.dumps(os.path.join(work, "data")), args.devices + 100,
                   max(16777216, args.image_kb * 2048)))
        if args.store_url:
            f.write("[store]\nurl = %s\n" % json.dumps(args.store_url))
    base = "http://127.0.0.1:%d" % port
    log = open(os.path.join(work, "dashd.log"), "wb")
    profile = ["--profile=" + os.path.abspath(args.profile), "--profiler=cprofile",
               "--savestats"] if args.profile else []
    parts = set(args.parts.split(","))
    dashd = subprocess.Popen([TWISTD, "-n", "--pidfile="] + profile
                             + ["dashd", "--config", config],
                             stdout=log, stderr=subprocess.STDOUT)
    processes: list[subprocess.Popen] = []
    workers: list[WorkerProcess] = []
    try:
        key_file = os.path.join(work, "data", "admin.key")
        deadline = time.monotonic() + 30
        while not os.path.exists(key_file):
            assert time.monotonic() < deadline, "dashd did not start (%s)" % work
            time.sleep(0.1)
        time.sleep(0.5)
        with open(key_file) as f:
            key = f.read().strip()
        registered = register_all(base, key, args.devices, 8)
        tokens = [t for t, _ in registered]
        ids = [i for _, i in registered]
        tokens_file = os.path.join(work, "tokens")
        with open(tokens_file, "w") as f:
            f.write("\n".join(tokens) + "\n")
        full = min(args.devices, args.firmware_devices) if "firmware" in parts else 0
        for first in range(0, full, PER_PROCESS):
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "bench.jobs", "--devices-process",
                 "ws://127.0.0.1:%d/api/v2/rpc" % port, tokens_file, str(first),
                 str(min(PER_PROCESS, full - first))], cwd=ROOT))
        failing = args.devices // 10
        chunks = [(a, min(args.devices, a + LEAN_PER_PROCESS))
                  for a in range(full, args.devices, LEAN_PER_PROCESS)]
        workers.extend(WorkerProcess("jobs-dev%d" % i, work) for i in range(len(chunks)))
        answers = call_all(workers, [
            {"cmd": "connect", "host": "127.0.0.1", "port": port, "tokens": tokens[a:b],
             "binds": ["127.0.0.%d" % (2 + i)], "timeout": 300,
             "fail_methods": ["Job.Step"], "fail_count": max(0, min(b, failing) - a)}
            for i, (a, b) in enumerate(chunks)], timeout=330)
        print("lean devices: %d connected with info in %.1f s (%d retries)" % (
            sum(a["acked"] for a in answers),
            max((a["ended"] for a in answers), default=0)
            - min((a["started"] for a in answers), default=0),
            sum(a["retries"] for a in answers)), flush=True)
        deadline = time.monotonic() + 300
        while True:
            try:
                status, body = request("GET", base + "/api/v2/devices/count?where=online",
                                       key)
            except OSError:  # dashd busy with the devices connecting: ask again
                continue
            online = json.loads(body)["count"]
            if online >= args.devices or time.monotonic() > deadline:
                break
            time.sleep(1)
        print("%d devices online; dashd on %s, RSS %.1f MB" % (
            online, "PostgreSQL" if args.store_url else "SQLite", rss_kb(dashd.pid) / 1024),
            flush=True)

        if args.gets:
            gets_alone(base, key, ids, args.gets, dashd.pid)
        if "rpc" in parts:
            rpc_job(base, key, ids, args.timeout, dashd.pid, args.py_spy,
                    reader_on=not args.no_reader)
        if "firmware" in parts:
            firmware_job(base, key, ids, work, dashd.pid, args)
        if "rollout" in parts:
            rollout(base, key, ids)
        return 0
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        for worker in workers:
            worker.stop()
        dashd.terminate()
        dashd.wait(30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def gets_alone(base: str, key: str, ids: list[str], count: int, pid: int) -> None:
    """GET /api/v2/devices/ID C{count} times on one keep-alive connection,
    nothing else asked of dashd: its CPU a GET (user + system, /proc)."""
    host, port = base.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    path = "/api/v2/devices/" + ids[-1]
    headers = {"Authorization": "Bearer " + key}

    def some(n: int) -> None:
        for _ in range(n):
            conn.request("GET", path, headers=headers)
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 200, reply.status

    some(min(200, count))  # warm: the key's cache, the device's record
    cpu = cpu_seconds(pid)
    started = time.monotonic()
    some(count)
    took = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu
    conn.close()
    print("GET /api/v2/devices/ID alone: %d in %.1f s, dashd CPU %.0f us a GET"
          % (count, took, 1e6 * cpu / count), flush=True)


def rpc_job(base: str, key: str, ids: list[str], timeout: float, pid: int,
            spy: str = "", reader_on: bool = True) -> None:
    """1. An RPC job on every device, no rate limit, with REST beside it."""
    latencies: list[float] = []
    done = threading.Event()

    def reader() -> None:
        # One keep-alive connection, as a polling client holds one.
        host, port = base.split("//", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        path = "/api/v2/devices/" + ids[-1]
        headers = {"Authorization": "Bearer " + key}
        while not done.is_set():
            t = time.monotonic()
            conn.request("GET", path, headers=headers)
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 200, reply.status
            latencies.append(time.monotonic() - t)
        conn.close()

    thread = threading.Thread(target=reader, daemon=True)
    # Once the devices' connections are settled (their info stored): the
    # store jobs counted are the job's.
    jobs_before = metric(base, "dashd_store_job_duration_seconds_count")
    for _ in range(60):
        time.sleep(1)
        count = metric(base, "dashd_store_job_duration_seconds_count")
        if count - jobs_before < 20:
            break
        jobs_before = count
    jobs_before = metric(base, "dashd_store_job_duration_seconds_count")
    # What dashd spends with nothing asked of it (its devices' pings and
    # timers), to take out of the job's CPU: the job's wall time, and with
    # it that share, grows with the machine's load.
    idle_cpu, idle_t = cpu_seconds(pid), time.monotonic()
    time.sleep(5)
    idle = (cpu_seconds(pid) - idle_cpu) / (time.monotonic() - idle_t)
    if reader_on:
        thread.start()
    sampler = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--pid", str(pid),
         "--format", "raw", "--nonblocking", "--rate", "200", "-o", spy],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if spy else None
    cpu = cpu_seconds(pid)
    seen = histograms(base)
    started = time.monotonic()
    status, body = request("POST", base + "/api/v2/jobs", key, {
        "name": "bench rpc", "target": {"where": "online"}, "concurrency": 10000,
        "action": {"type": "rpc", "method": "Sim.Echo", "params": {"n": 1}}})
    assert status == 201, body
    timeline: list = []
    job = wait_for(base, key, json.loads(body)["id"], ("completed", "aborted"),
                   timeout, timeline)
    took = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu
    now_seen = histograms(base)
    lag, store = (over(seen[name], now_seen[name], 0.1) for name in (
        "dashd_reactor_lag_seconds", "dashd_store_job_duration_seconds"))
    if sampler is not None:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(60)
    done.set()
    if reader_on:
        thread.join(30)
    store_jobs = metric(base, "dashd_store_job_duration_seconds_count") - jobs_before
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    print("rpc job: %d of %d devices succeeded in %.1f s: %.0f devices/s (target >= 1,000)"
          % (job["progress"]["succeeded"], job["progress"]["total"], took,
             job["progress"]["succeeded"] / took), flush=True)
    print("  dashd CPU meanwhile: %.2f s, %.0f us an execution (with the GETs'), %.0f%% of a core"
          % (cpu, 1e6 * cpu / max(1, job["progress"]["total"]), 100 * cpu / took), flush=True)
    print("  dashd idle before the job: %.0f%% of a core; the job's CPU net of it: %.0f us an "
          "execution" % (100 * idle, 1e6 * (cpu - idle * took) / max(1, job["progress"]["total"])),
          flush=True)
    print("  reactor lag probe ticks meanwhile: %s" % lag, flush=True)
    print("  store jobs' durations (queued to done): %s" % store, flush=True)
    print("  store jobs meanwhile: %d, %.2f an execution (with those of %d GETs)"
          % (store_jobs, store_jobs / max(1, job["progress"]["total"]), len(latencies)),
          flush=True)
    # About one line a second: when executions were sent, and ended.
    shown = -1.0
    for t, progress in timeline:
        if t - shown >= 1 or t == timeline[-1][0]:
            shown = t
            print("  at %5.1f s: %s" % (t, " ".join(
                "%s %d" % (k, v) for k, v in sorted(progress.items()) if v and k != "total")),
                flush=True)
    if latencies:
        print("  GET /api/v2/devices/ID meanwhile: %d requests, p50 %.1f ms, p99 %.1f ms, "
              "max %.1f ms (target: p99 <= 100 ms)"
              % (len(latencies), pct(0.5), pct(0.99), latencies[-1] * 1000), flush=True)



def firmware_job(base: str, key: str, ids: list[str], work: str, pid: int,
                 args: argparse.Namespace) -> None:
    """2. A firmware job from the library, concurrency 50."""
    image = os.path.join(work, "bench.bin")
    with open(image, "wb") as f:
        f.write(b"\xe9" + os.urandom(args.image_kb * 1024 - 1))
    upload = subprocess.run(
        ["curl", "-sS", "-H", "Authorization: Bearer " + key, "-F", "file=@" + image,
         base + "/api/v2/firmware"], capture_output=True, text=True, timeout=120)
    firmware = json.loads(upload.stdout)
    before = rss_kb(pid)
    highest = before
    started = time.monotonic()
    status, body = request("POST", base + "/api/v2/jobs", key, {
        "name": "bench firmware", "target": {"devices": ids[:min(1000, args.firmware_devices)]}
        if args.firmware_devices <= 1000 else {"where": "online"}, "concurrency": 50,
        "action": {"type": "firmware", "firmware": firmware["id"]}})
    assert status == 201, body
    job_id = json.loads(body)["id"]
    while True:
        highest = max(highest, rss_kb(pid))
        status, body = request("GET", base + "/api/v2/jobs/" + job_id, key)
        job = json.loads(body)
        ended = job["progress"]["succeeded"] + job["progress"]["failed"] \
            + job["progress"]["timed_out"]
        if job["state"] != "running" or ended >= args.firmware_devices \
                or time.monotonic() - started > args.timeout:
            break
        time.sleep(0.5)
    took = time.monotonic() - started
    print("firmware job: %d KB image, %d devices succeeded, %d failed in %.1f s: "
          "%.0f devices/min; dashd RSS %.1f MB before, %.1f MB at most"
          % (args.image_kb, job["progress"]["succeeded"], job["progress"]["failed"], took,
             60 * job["progress"]["succeeded"] / took, before / 1024, highest / 1024),
          flush=True)
    if job["progress"]["failed"] or job["progress"]["timed_out"]:
        # Why, by error message: a failure must be the device's, not dashd's.
        status, body = request("GET", base + "/api/v2/jobs/%s/executions?state=failed,timed_out"
                               "&limit=500" % job_id, key)
        why = collections.Counter(
            "%s: %s" % (e["state"], (e.get("error") or {}).get("message") or e.get("reason"))
            for e in json.loads(body))
        for message, n in why.most_common(5):
            print("  %d %s" % (n, message), flush=True)
    request("POST", base + "/api/v2/jobs/%s/cancel" % job_id, key)


def rollout(base: str, key: str, ids: list[str]) -> None:
    """3. A rollout whose first phase fails beyond its error threshold."""
    status, body = request("POST", base + "/api/v2/jobs", key, {
        "name": "bench rollout", "target": {"devices": ids[:1000]},
        "action": {"type": "rpc", "method": "Job.Step"},
        "phases": [{"percent": 10, "error_threshold": 20}, {"percent": 100}]})
    assert status == 201, body
    job = wait_for(base, key, json.loads(body)["id"], ("paused", "completed"), 300)
    status, body = request("GET", base + "/api/v2/jobs/%s/executions?limit=500"
                           % job["id"], key)
    first_phase = -(-job["progress"]["total"] // 10)
    later = [e for e in json.loads(body) if e["seq"] > first_phase]
    touched = [e for e in later if e["attempts"] or e["state"] != "queued"]
    print("rollout: %s (%s); devices of the second phase touched: %d of %d listed"
          % (job["state"], (job.get("reason") or {}).get("message"), len(touched),
             len(later)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
