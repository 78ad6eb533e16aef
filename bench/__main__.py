"""
The dashd benchmark: ``python -m bench`` (``python -m bench --help``).

It runs the baseline bridge (L{bench.baseline}) and dashd one after the
other, each in its own process on this machine, under the same load, and
prints each figure with dashd's as a ratio of the baseline's:

1. capacity: devices held by one server process, and its RSS per idle
   connected device;
2. bridged RPC calls per second (wrk, closed loop) with p50/p99 latency,
   all to one device and spread over the storm's devices; then a steady
   1,000 calls/s (open loop) over those devices;
3. connect storm: N devices connecting at once, time until every one has
   had its Dash.Heartbeat acknowledged (dashd acknowledges once the info is
   on disk);
4. shadow updates per second from devices, each acknowledged (by dashd once
   durable);
5. notification fan-out: events per second delivered to 10 and 100
   subscribers.

Load: lean devices in worker processes (L{bench.worker}), spread over
source addresses 127.0.0.2 and up; wrk for closed-loop HTTP load; an
open-loop HTTP client (in a worker) for the steady rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import selectors
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import ssl
import urllib.request
from typing import Any

from bench import wrk
from bench.profile import Recording, summarise

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


TESTS = ("capacity", "rpc_one", "rpc_spread", "rpc_steady", "shadow", "fanout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure dashd against the smallest Klein+Autobahn bridge, side by side.",
    )
    p.add_argument("--quick", action="store_true",
                   help="small scale and short runs (a couple of minutes in all)")
    p.add_argument("--targets", default="baseline,dashd",
                   help="which servers to run, in order (default: baseline,dashd)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every target this many times, alternating; medians are printed")
    p.add_argument("--capacity", type=int, help="devices for the capacity test [19000]")
    p.add_argument("--storm", type=int, help="devices in the connect storm; they stay "
                   "connected for the RPC, shadow and fan-out tests [10000]")
    p.add_argument("--duration", type=float, help="seconds of each throughput test [15]")
    p.add_argument("--rate", type=float, default=1000.0, help="steady RPC calls/s [1000]")
    p.add_argument("--shadow-devices", type=int, help="devices sending shadow updates [1000]")
    p.add_argument("--workers", type=int, default=2, help="device load-generator processes [2]")
    p.add_argument("--addresses", type=int, default=4,
                   help="source addresses (127.0.0.2, ...) per device worker [4]")
    p.add_argument("--backlog", type=int, default=4096,
                   help="listen backlog of both servers (dashd: in its tcp: endpoint) [4096]")
    p.add_argument("--dashd-config", action="append", default=[], metavar="KEY=VALUE",
                   help="extra dashd option for the benchmark's config (TOML value), repeatable")
    p.add_argument("--workdir", help="where to put data, logs and scripts [a new temp dir]")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--install-wrk", action="store_true",
                   help="install wrk with apt-get if it is missing (needs root)")
    p.add_argument("--profile", action="store_true",
                   help="record each server (dashd and the baseline) with py-spy during each "
                   "test (pip install py-spy); collapsed stacks go to the work directory, a "
                   "summary is printed")
    p.add_argument("--twistd-option", action="append", default=[], metavar="OPTION",
                   help="extra twistd option for dashd, repeatable; e.g. "
                   "--twistd-option=--profile=dashd.prof --twistd-option=--profiler=cprofile "
                   "--twistd-option=--savestats: call counts of the whole run, in dashd's work "
                   "directory, read with pstats")
    p.add_argument("--tls", action="store_true",
                   help="both servers listen with TLS (ssl: endpoints, a certificate made for "
                   "the run); devices, wrk and the HTTP clients connect with TLS")
    p.add_argument("--tests", default=",".join(TESTS),
                   help="which tests to run (the storm always runs: it connects the devices "
                   "the others use) [%s]" % ",".join(TESTS))
    args = p.parse_args(argv)
    quick = args.quick
    if args.capacity is None:
        args.capacity = 2000 if quick else 19000
    if args.storm is None:
        args.storm = min(args.capacity, 2000 if quick else 10000)
    if args.duration is None:
        args.duration = 4.0 if quick else 15.0
    if args.shadow_devices is None:
        args.shadow_devices = min(args.storm, 200 if quick else 1000)
    args.capacity = max(args.capacity, args.storm)
    args.tests = {t.strip() for t in args.tests.split(",") if t.strip()}
    unknown = args.tests - set(TESTS)
    if unknown:
        p.error("unknown tests: %s" % ", ".join(sorted(unknown)))
    if "capacity" not in args.tests:
        args.capacity = args.storm
    return args


# Processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir("/proc/%d/fd" % pid))


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process's threads other than its main thread (in
    dashd, the store's reader and writer threads; 0 for the baseline)."""
    total = 0.0
    task = "/proc/%d/task" % pid
    for tid in os.listdir(task):
        if int(tid) == pid:
            continue
        try:
            with open("%s/%s/stat" % (task, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU used during a test: by the server, by our load generators (workers
    and wrk), and by everything else on the machine (other people's work)."""

    def __init__(self, server_pid: int, worker_pids: list[int]) -> None:
        self.pids = [server_pid] + worker_pids
        self.t = time.monotonic()
        self.busy = machine_busy_seconds()
        self.cpu = [cpu_seconds(p) for p in self.pids]
        self.threads = threads_cpu_seconds(server_pid)
        self.children = _children_cpu()

    def read(self) -> dict[str, float]:
        dt = time.monotonic() - self.t
        cpu = [cpu_seconds(p) - c for p, c in zip(self.pids, self.cpu)]
        wrk_cpu = _children_cpu() - self.children
        busy = machine_busy_seconds() - self.busy
        ours = sum(cpu) + wrk_cpu
        return {
            "server_cpu_s": cpu[0],
            # A thread that ended during the test takes its CPU with it:
            # never below 0.
            "server_threads_cpu_s": max(0.0, threads_cpu_seconds(self.pids[0]) - self.threads),
            "server_cores": round(cpu[0] / dt, 2),
            "load_generator_cores": round((sum(cpu[1:]) + wrk_cpu) / dt, 2),
            "other_cores": round(max(0.0, busy - ours) / dt, 2),
        }


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with %s" % proc.returncode)
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("server did not listen on %d within %ds" % (port, timeout))


def buckets(metrics_text: str, name: str) -> dict[str, float]:
    """A Prometheus histogram's buckets in /metrics text: bound (the C{le}
    label, "+Inf" last) -> cumulative count."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^%s_bucket\{le="([^"]+)"\} (\S+)$' % re.escape(name), metrics_text, re.M)}


class WorkerProcess:
    """A bench.worker process, talked to one JSON line each way."""

    def __init__(self, name: str, log_dir: str) -> None:
        self.name = name
        self.stderr = open(os.path.join(log_dir, "worker-%s.log" % name), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=ROOT,
            preexec_fn=raise_nofile,
        )
        self._buf = b""

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float = 600) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError("worker %s: no answer within %ds" % (self.name, timeout))
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("worker %s exited (see its log)" % self.name)
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError("worker %s: %s" % (self.name, answer["error"]))
        return answer

    def call(self, cmd: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        self.send(cmd)
        return self.receive(timeout)

    def stop(self) -> None:
        try:
            self.send({"cmd": "quit"})
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def call_all(workers: list[WorkerProcess], cmds: list[dict[str, Any]], timeout: float = 600) -> list[dict[str, Any]]:
    for w, c in zip(workers, cmds):
        w.send(c)
    return [w.receive(timeout) for w in workers]


class Server:
    """dashd (twistd -n dashd) or the baseline, in its own process."""

    def __init__(self, kind: str, args: argparse.Namespace, directory: str) -> None:
        self.kind = kind
        self.directory = directory
        self.port = free_port()
        self.key: str | None = None
        os.makedirs(directory, exist_ok=True)
        self.log_path = os.path.join(directory, "%s.log" % kind)
        log = open(self.log_path, "wb")
        endpoint = "tcp:%d:interface=127.0.0.1:backlog=%d" % (self.port, args.backlog)
        self.scheme = "http"
        self._ssl: ssl.SSLContext | None = None
        if args.tls:
            # Twisted's ssl: endpoint for both servers, with its defaults.
            cert = tls_cert(directory)
            endpoint = "ssl:%d:interface=127.0.0.1:backlog=%d:privateKey=%s:certKey=%s" % (
                self.port, args.backlog, cert.key, cert.cert)
            self.scheme = "https"
            self._ssl = ssl.create_default_context(cafile=cert.ca)
        if kind == "dashd":
            config = os.path.join(directory, "dashd.toml")
            lines = ['listen = ["%s"]' % endpoint, 'data_dir = "%s"' % os.path.join(directory, "data")]
            sections: dict[str, dict[str, str]] = {}
            # One key drives all the load here: its request rate limit (an
            # abuse guard, 100/s by default) would measure itself, not dashd.
            # --dashd-config limits.requests_per_second=... puts it back.
            for item in ["limits.requests_per_second=0"] + args.dashd_config:
                name, _, value = item.partition("=")
                section, _, key = name.rpartition(".")
                sections.setdefault(section, {})[key] = value
            for section, items in sections.items():
                lines.append("[%s]" % section if section else "")
                lines.extend("%s = %s" % item for item in items.items())
            with open(config, "w") as f:
                f.write("\n".join(lines) + "\n")
            argv = [TWISTD, "-n", "--pidfile="] + args.twistd_option + ["dashd", "--config", config]
        else:
            argv = [sys.executable, "-m", "bench.baseline", "--endpoint", endpoint]
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT if kind != "dashd" else directory,
            preexec_fn=raise_nofile,
        )
        log.close()
        wait_port(self.port, self.proc)
        if kind == "dashd":
            key_file = os.path.join(directory, "data", "admin.key")
            deadline = time.monotonic() + 30
            while not os.path.exists(key_file) and time.monotonic() < deadline:
                time.sleep(0.1)
            with open(key_file) as f:
                self.key = f.read().strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str, timeout: float = 120) -> Any:
        req = urllib.request.Request("%s://127.0.0.1:%d%s" % (self.scheme, self.port, path))
        if self.key:
            req.add_header("Authorization", "Bearer " + self.key)
        with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as r:
            return json.loads(r.read())

    def _metric(self, name: str) -> float:
        """One unlabelled sample of dashd's /metrics."""
        req = urllib.request.Request("%s://127.0.0.1:%d/metrics" % (self.scheme, self.port))
        with urllib.request.urlopen(req, timeout=60, context=self._ssl) as r:
            text = r.read().decode()
        m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
        if m is None:
            raise RuntimeError("no %s in dashd's /metrics" % name)
        return float(m.group(1))

    def full_collections(self) -> tuple[int, float] | None:
        """dashd's full garbage collections so far: (how many, seconds in
        all); None for the baseline."""
        if self.kind != "dashd":
            return None
        return (int(self._metric("dashd_gc_full_collection_seconds_count")),
                self._metric("dashd_gc_full_collection_seconds_sum"))

    def stalls(self) -> dict[str, float] | None:
        """dashd's stall probe so far (L{dashd.ops.stallprobe}): bucket
        bound -> probes at most that late, cumulative; None for the
        baseline."""
        if self.kind != "dashd":
            return None
        req = urllib.request.Request("%s://127.0.0.1:%d/metrics" % (self.scheme, self.port))
        with urllib.request.urlopen(req, timeout=60, context=self._ssl) as r:
            text = r.read().decode()
        # busy: the part of each lateness dashd's reactor thread spent
        # working (its CPU time), as opposed to waiting for a core; absent
        # from dashd before 2026-11-29.
        return {kind + bound: count for kind in ("lag", "busy_lag")
                for bound, count in buckets(text, "dashd_reactor_%s_seconds" % kind).items()}

    def connected(self) -> int:
        """Devices holding a connection now (cheaper than online())."""
        if self.kind == "dashd":
            return int(self._metric("dashd_devices_connected"))
        return int(self.get("/stats")["online"])

    def online(self) -> tuple[int, int]:
        """(devices online, online devices whose info is recorded)"""
        if self.kind == "dashd":
            devices = self.get("/api/v2/devices")
            online = [d for d in devices if d["online"]]
            return len(online), sum(1 for d in online if d["info"])
        n = self.get("/stats")["online"]
        return n, n

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with open(self.log_path, "rb") as f:
            log = f.read()
        return {
            "exit": self.proc.returncode,
            "log_bytes": len(log),
            "tracebacks": log.count(b"Traceback"),
        }


def tls_cert(directory: str) -> Any:
    """A CA and a certificate for 127.0.0.1, made for this run (--tls)."""
    sys.path.insert(0, ROOT)
    from tests.certs import make_server_cert

    where = os.path.join(directory, "tls")
    os.makedirs(where, exist_ok=True)
    return make_server_cert(where, ["127.0.0.1"])


# The measurements


def split(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i::n] for i in range(n)]


def fake_tokens(n: int) -> list[str]:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    out = []
    for i in range(n):
        ident = "d" + "".join(alphabet[(i // 36 ** k) % 36] for k in range(12))
        out.append("%s-%s" % (ident, secrets.token_hex(32)))
    return out


def say(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def run_target(kind: str, args: argparse.Namespace, workdir: str, round_no: int) -> dict[str, Any]:
    directory = os.path.join(workdir, "%s-%d" % (kind, round_no))
    say("== %s (round %d): starting" % (kind, round_no + 1))
    server = Server(kind, args, directory)
    res: dict[str, Any] = {"kind": kind}
    devices_w = [WorkerProcess("%s-dev%d" % (kind, i), directory) for i in range(args.workers)]
    http_w = WorkerProcess("%s-http" % kind, directory)
    host = {"host": "127.0.0.1", "port": server.port, "tls": args.tls}
    pids = [w.proc.pid for w in devices_w + [http_w]]
    try:
        time.sleep(1.0)
        res["rss_start_kb"] = rss0 = rss_kb(server.pid)
        total = args.capacity
        if kind == "dashd":
            tokens_file = os.path.join(directory, "tokens.txt")
            r = http_w.call(dict(host, cmd="register", key=server.key, count=total,
                                 out=tokens_file, concurrency=32), timeout=1800)
            say("registered %d devices in %.1f s" % (r["registered"], r["seconds"]))
            if r["registered"] != total:
                raise RuntimeError("registration failed: %r" % r)
            with open(tokens_file) as f:
                tokens = [line.strip() for line in f if line.strip()]
            res["rss_registered_kb"] = rss0 = rss_kb(server.pid)
        else:
            tokens = fake_tokens(total)
        ids = [t.split("-", 1)[0] for t in tokens]

        profiles: list[str] = []

        class Phase:
            """CPU meter (and py-spy with --profile) around one test."""

            def __init__(self, name: str) -> None:
                self.name = name
                self.recording = None
                if args.profile:
                    path = os.path.join(directory, "profile-%s.txt" % name)
                    self.recording = Recording(server.pid, path)
                    time.sleep(0.5)
                self.meter = Meter(server.pid, pids)
                self.collections = server.full_collections()
                self.stalls = server.stalls()

            def end(self) -> dict[str, float]:
                cpu = self.meter.read()
                if self.collections is not None:
                    # Full garbage collections stop dashd for up to a second
                    # with a fleet connected: say when one fell in a test.
                    count, seconds = server.full_collections()  # type: ignore[misc]
                    count -= self.collections[0]
                    seconds -= self.collections[1]
                    full_gc[self.name] = {"count": count, "seconds": seconds}
                    if count:
                        say("  %d full garbage collection(s) during %s: %.0f ms in all"
                            % (count, self.name, seconds * 1000))
                if self.stalls is not None:
                    # How long the reactor stood still at worst: the stall
                    # probe's lateness, read as bucket counts around the test.
                    now = server.stalls()  # type: ignore[misc]
                    stalls[self.name] = entry = {}
                    for kind, prefix in (("", "lag"), ("busy_", "busy_lag")):
                        during = {b[len(prefix):]: now[b] - self.stalls.get(b, 0)
                                  for b in now if b.startswith(prefix)
                                  and b[len(prefix):][:1] in "0123456789+"}
                        if not during:
                            continue
                        bounds = sorted((b for b in during if b != "+Inf"), key=float)
                        total = during.get("+Inf", 0)
                        longest = next((b for b in bounds if during[b] == total), "+Inf")
                        if not kind:
                            entry["probes"] = total
                        entry[kind + "over_100ms"] = total - during.get("0.1", 0)
                        entry[kind + "longest_at_most"] = longest
                if self.recording is not None:
                    self.recording.stop()
                    profiles.append(self.recording.path)
                return cpu

        res["profiles"] = profiles
        full_gc: dict[str, dict[str, float]] = {}
        res["full_gc"] = full_gc
        stalls: dict[str, dict[str, Any]] = {}
        res["stalls"] = stalls

        def binds(i: int) -> list[str]:
            return ["127.0.0.%d" % (2 + i * args.addresses + k) for k in range(args.addresses)]

        # Connect storm.
        storm_tokens = tokens[: args.storm]
        say("connect storm: %d devices at once" % len(storm_tokens))
        cpu0 = cpu_seconds(server.pid)
        phase = Phase("storm")
        answers = call_all(devices_w, [
            dict(host, cmd="connect", tokens=part, binds=binds(i), timeout=300)
            for i, part in enumerate(split(storm_tokens, len(devices_w)))
        ])
        started = min(a["started"] for a in answers)
        ended = max(a["ended"] for a in answers)
        acked = sum(a["acked"] for a in answers)
        res["storm"] = {
            "devices": len(storm_tokens),
            "acked": acked,
            "seconds": ended - started,
            "retries": sum(a["retries"] for a in answers),
            "refusals": merge_counts([a["refusals"] for a in answers]),
            "p50_s": max(a["times"]["p50"] or 0 for a in answers),
            "p99_s": max(a["times"]["p99"] or 0 for a in answers),
            "server_cpu_s": cpu_seconds(server.pid) - cpu0,
            "cpu": phase.end(),
        }
        say("storm: %(acked)d/%(devices)d acknowledged in %(seconds).2f s" % res["storm"])
        time.sleep(2.0)
        res["rss_storm_kb"] = rss_kb(server.pid)

        # Capacity: top up to args.capacity, then idle.
        extra = tokens[args.storm :]
        if "capacity" in args.tests:
            if extra:
                say("capacity: %d more devices" % len(extra))
                phase = Phase("capacity")
                call_all(devices_w, [
                    dict(host, cmd="connect", tokens=part, binds=binds(i), timeout=300)
                    for i, part in enumerate(split(extra, len(devices_w)))
                ])
                phase.end()
            time.sleep(5.0)
            rss_cap = rss_kb(server.pid)
            fds = open_fds(server.pid)
            online, with_info = server.online()
            statuses = [w.call({"cmd": "status"}) for w in devices_w]
            res["capacity"] = {
                "devices": total,
                "online": online,
                "online_with_info": with_info,
                "client_open": sum(s["open"] for s in statuses),
                "rss_kb": rss_cap,
                "rss_per_device_kb": (rss_cap - rss0) / total,
                "open_fds": fds,
            }
            say("capacity: %(online)d online, %(rss_per_device_kb).1f KB RSS a device"
                % res["capacity"])
            if extra:
                # Back to the storm's devices for the load tests.
                per_worker = [len(p) for p in split(storm_tokens, len(devices_w))]
                call_all(devices_w, [{"cmd": "close", "first": n} for n in per_worker])
                # Until the server has let them all go: seeing 9,000 devices
                # leave takes dashd seconds, which would spill into the next
                # test's window.
                deadline = time.monotonic() + 120
                while server.connected() > len(storm_tokens) and time.monotonic() < deadline:
                    time.sleep(0.5)
                time.sleep(1.0)

        # RPC with wrk.
        one = os.path.join(directory, "one.lua")
        spread = os.path.join(directory, "spread.lua")
        wrk.write_script(one, ids[:1], "Sys.GetInfo", server.key)
        wrk.write_script(spread, ids[: args.storm], "Sys.GetInfo", server.key)
        url = "%s://127.0.0.1:%d" % (server.scheme, server.port)
        for test, script, conns, what in (
            ("rpc_one", one, 32, "to one device"),
            ("rpc_spread", spread, 64, "spread over %d devices" % args.storm),
        ):
            if test not in args.tests:
                continue
            say("RPC %s (wrk, %d connections)" % (what, conns))
            wrk.run(url, script, conns, 2)  # warm-up
            phase = Phase(test)
            res[test] = wrk.run(url, script, conns, args.duration)
            res[test]["cpu"] = phase.end()
            say("  %(rps).0f calls/s, p50 %(p50_ms).1f ms, p99 %(p99_ms).1f ms, non-2xx "
                "%(non_2xx)d, socket errors %(socket_errors)d" % res[test])

        if "rpc_steady" in args.tests:
            say("steady %d calls/s over %d devices" % (args.rate, args.storm))
            phase = Phase("rpc_steady")
            r = http_w.call(dict(host, cmd="steady", key=server.key, ids=ids[: args.storm],
                                 rate=args.rate, duration=args.duration),
                            timeout=args.duration + 120)
            r["cpu"] = phase.end()
            res["rpc_steady"] = r
            say("  p50 %.1f ms, p99 %.1f ms, %d ok, errors %r" % (
                (r["latency"]["p50"] or 0) * 1000, (r["latency"]["p99"] or 0) * 1000, r["ok"],
                r["errors"]))

        if "shadow" in args.tests:
            say("shadow updates from %d devices" % args.shadow_devices)
            phase = Phase("shadow")
            answers = call_all(devices_w, [
                {"cmd": "shadow", "count": n, "duration": args.duration}
                for n in [len(p) for p in split(list(range(args.shadow_devices)), len(devices_w))]
            ], timeout=args.duration + 60)
            seconds = max(a["seconds"] for a in answers)
            res["shadow"] = {
                "devices": sum(a["devices"] for a in answers),
                "acked": sum(a["acked"] for a in answers),
                "errors": sum(a["errors"] for a in answers),
                "seconds": seconds,
                "per_s": sum(a["acked"] for a in answers) / seconds,
                "cpu": phase.end(),
            }
            if kind == "dashd" and answers[0]["sample_device"]:
                doc = server.get("/api/v2/devices/%s" % answers[0]["sample_device"])
                res["shadow"]["sample_version"] = doc["shadow"]["version"]
            say("  %(per_s).0f updates/s acknowledged, %(errors)d errors" % res["shadow"])

        if "fanout" in args.tests:
            for subs in (10, 100):
                phase = Phase("fanout_%d" % subs)
                r = devices_w[0].call(dict(
                    host, cmd="fanout", path="/api/v2/notify", key=server.key, subscribers=subs,
                    publishers=min(100, args.storm), window=max(50, 5 * subs),
                    duration=args.duration,
                ), timeout=args.duration + 90)
                r["cpu"] = phase.end()
                if "events_min" in r:
                    r["events_per_s"] = r["events_min"] / r["seconds"]
                    r["deliveries_per_s"] = r["deliveries"] / r["seconds"]
                    say("fan-out to %d: %.0f events/s (%.0f deliveries/s)"
                        % (subs, r["events_per_s"], r["deliveries_per_s"]))
                res["fanout_%d" % subs] = r
        res["rss_end_kb"] = rss_kb(server.pid)
    finally:
        for w in devices_w + [http_w]:
            w.stop()
        res["exit"] = server.stop()
    say("== %s done (log: %s)" % (kind, server.log_path))
    return res


def merge_counts(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


# The report

# (label, path into a result, unit, higher is better, target for dashd)
ROWS: list[tuple[str, tuple[str, ...], str, bool, str]] = [
    ("devices connected (capacity test)", ("capacity", "online"), "", True, ">= 19000"),
    ("  RSS per idle connected device", ("capacity", "rss_per_device_kb"), "KB", False, "<= 30 KB"),
    ("RPC, one device: calls/s", ("rpc_one", "rps"), "/s", True, ">= 0.8 x baseline"),
    ("  p50 latency", ("rpc_one", "p50_ms"), "ms", False, ""),
    ("  p99 latency", ("rpc_one", "p99_ms"), "ms", False, ""),
    ("RPC, spread: calls/s", ("rpc_spread", "rps"), "/s", True, ">= 0.8 x baseline"),
    ("  p50 latency", ("rpc_spread", "p50_ms"), "ms", False, ""),
    ("  p99 latency", ("rpc_spread", "p99_ms"), "ms", False, ""),
    ("RPC, steady rate: p50 latency", ("rpc_steady", "latency", "p50"), "ms", False, ""),
    ("  p99 latency", ("rpc_steady", "latency", "p99"), "ms", False, "<= 50 ms"),
    ("  calls answered", ("rpc_steady", "ok"), "", True, ""),
    ("connect storm: all online with info", ("storm", "seconds"), "s", False, "<= 15 s"),
    ("  devices acknowledged", ("storm", "acked"), "", True, ""),
    ("shadow updates acknowledged", ("shadow", "per_s"), "/s", True, ">= 3000/s"),
    ("fan-out, 10 subscribers: events/s", ("fanout_10", "events_per_s"), "/s", True, ""),
    ("fan-out, 100 subscribers: events/s", ("fanout_100", "events_per_s"), "/s", True, ""),
]

# Server CPU time per operation: what each costs dashd, whatever share of the
# machine it got (the machine is shared: throughput swings with other work).
# (label, test, how many operations the test did)
PER_OP_ROWS: list[tuple[str, str, tuple[str, ...]]] = [
    ("connect storm, per device", "storm", ("storm", "acked")),
    ("RPC, one device, per call", "rpc_one", ("rpc_one", "ok")),
    ("RPC, spread, per call", "rpc_spread", ("rpc_spread", "ok")),
    ("RPC, steady rate, per call", "rpc_steady", ("rpc_steady", "ok")),
    ("shadow update, per update", "shadow", ("shadow", "acked")),
    ("fan-out to 10, per event", "fanout_10", ("fanout_10", "events_min")),
    ("fan-out to 100, per event", "fanout_100", ("fanout_100", "events_min")),
]


def per_op_us(result: dict[str, Any], test: str, count: tuple[str, ...],
              field: str = "server_cpu_s") -> float | None:
    cpu = _cpu(result, test, field)
    n = pick(result, count)
    if cpu is None or not n:
        return None
    return cpu / n * 1e6


CPU_ROWS = [
    ("connect storm", "storm"),
    ("RPC, one device", "rpc_one"),
    ("RPC, spread", "rpc_spread"),
    ("RPC, steady rate", "rpc_steady"),
    ("shadow updates", "shadow"),
    ("fan-out, 10 subscribers", "fanout_10"),
    ("fan-out, 100 subscribers", "fanout_100"),
]


def _cpu(result: dict[str, Any], key: str, field: str) -> float | None:
    value = result.get(key, {}).get("cpu", {}).get(field)
    return None if value is None else float(value)


def pick(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for part in path:
        if not isinstance(value, dict) or part not in value or value[part] is None:
            return None
        value = value[part]
    if path[-1] in ("p50", "p99"):
        value = value * 1000  # seconds -> ms
    return float(value)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return "%.0f" % value
    if abs(value) >= 10:
        return "%.1f" % value
    return "%.2f" % value


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    lines = []
    base = results.get("baseline", [])
    dash = results.get("dashd", [])
    rounds = max(len(base), len(dash))
    lines.append("dashd benchmark: %d round(s); capacity %d, storm %d, %g s a test, steady %g/s, "
                 "shadow devices %d%s" % (rounds, args.capacity, args.storm, args.duration,
                                          args.rate, args.shadow_devices,
                                          "; medians of rounds" if rounds > 1 else ""))
    lines.append("spread and steady RPC go over the %d storm devices%s"
                 % (args.storm, "; TLS (--tls)" if args.tls else ""))
    lines.append("")
    lines.append("%-38s %12s %12s %8s   %s" % ("", "baseline", "dashd", "ratio", "target (dashd)"))
    for label, path, unit, _, target in ROWS:
        b = median([pick(r, path) for r in base])
        d = median([pick(r, path) for r in dash])
        ratio = "%.2f" % (d / b) if b and d is not None else ""
        u = (" " + unit) if unit else ""
        lines.append("%-38s %12s %12s %8s   %s" % (
            label, fmt(b) + u if b is not None else "-", fmt(d) + u if d is not None else "-",
            ratio, target))
    lines.append("")
    lines.append("server CPU time per operation (less swayed by other work on the machine):")
    lines.append("%-38s %12s %12s %8s" % ("", "baseline", "dashd", "ratio"))
    for label, test, count in PER_OP_ROWS:
        b = median([per_op_us(r, test, count) for r in base])
        d = median([per_op_us(r, test, count) for r in dash])
        ratio = "%.2f" % (d / b) if b and d is not None else ""
        lines.append("%-38s %12s %12s %8s" % (
            label, fmt(b) + " us" if b is not None else "-", fmt(d) + " us" if d is not None else "-",
            ratio))
    lines.append("  of which outside dashd's reactor thread (its store threads):")
    for label, test, count in PER_OP_ROWS:
        d = median([per_op_us(r, test, count, "server_threads_cpu_s") for r in dash])
        if d is not None:
            lines.append("  %-36s %12s %12s" % (label, "", fmt(d) + " us"))
    lines.append("")
    lines.append("CPU during each test, in cores (this machine has %s): server / load generators "
                 "/ everything else (others' work)" % os.cpu_count())
    lines.append("%-38s %20s %20s" % ("", "baseline", "dashd"))
    for label, key in CPU_ROWS:
        cells = []
        for runs in (base, dash):
            parts = []
            for field in ("server_cores", "load_generator_cores", "other_cores"):
                parts.append(fmt(median([_cpu(r, key, field) for r in runs])))
            cells.append("/".join(parts))
        lines.append("%-38s %20s %20s" % (label, cells[0], cells[1]))
    for name, runs in results.items():
        for i, r in enumerate(runs):
            e = r.get("exit", {})
            lines.append("%s round %d: tracebacks in log %s, log %d bytes, server RSS at end %s KB"
                         % (name, i + 1, e.get("tracebacks"), e.get("log_bytes", 0),
                            r.get("rss_end_kb")))
            pauses = ["%s %d (%.0f ms)" % (test, g["count"], g["seconds"] * 1000)
                      for test, g in r.get("full_gc", {}).items() if g["count"]]
            if name == "dashd":
                lines.append("  full garbage collections during the tests: %s"
                             % (", ".join(pauses) or "none"))
                still = ["%s %d (longest <= %s s)" % (test, g["over_100ms"], g["longest_at_most"])
                         for test, g in r.get("stalls", {}).items()]
                lines.append("  reactor stalls over 100 ms (stall probe): %s"
                             % (", ".join(still) or "none measured"))
                busy = ["%s %d (longest <= %s s)" % (test, g["busy_over_100ms"],
                                                     g["busy_longest_at_most"])
                        for test, g in r.get("stalls", {}).items() if "busy_over_100ms" in g]
                if busy:
                    lines.append("    of them the reactor's own work (its CPU time, not waiting "
                                 "for a core): %s" % ", ".join(busy))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import autobahn
    import klein
    import twisted

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "autobahn": autobahn.__version__,
        "klein": klein.__version__,
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk.ensure_wrk(args.install_wrk)
    raise_nofile()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < args.capacity + 200:
        print("the open-files limit (%d) is too low for %d devices" % (hard, args.capacity),
              file=sys.stderr)
        return 2
    workdir = args.workdir or tempfile.mkdtemp(prefix="dashd-bench-")
    os.makedirs(workdir, exist_ok=True)
    info = machine()
    say("machine: %s, %s cores, %s GB; Python %s, Twisted %s, Autobahn %s, Klein %s" % (
        info["cpu"], info["cores"], info["memory_gb"], info["python"], info["twisted"],
        info["autobahn"], info["klein"]))
    say("work directory: %s" % workdir)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    for round_no in range(args.rounds):
        for target in targets:
            results[target].append(run_target(target, args, workdir, round_no))
    text = report(results, args)
    print(text)
    for runs in results.values():
        for r in runs:
            for path in r.get("profiles", []):
                print()
                print(summarise(path, 20))
    info["load_average_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            settings = dict(vars(args), tests=sorted(args.tests))
            json.dump({"args": settings, "machine": info, "results": results, "report": text},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
