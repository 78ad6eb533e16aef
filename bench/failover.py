"""
Failover: how soon after a node's death its devices are usable through the
other node, and what their return costs that node.

    .venv/bin/python bench/failover.py --devices 10000

    options: --workers 4 (device processes) --addresses 4 (source addresses
    127.0.0.2... each) --redial 0.1,1.0 (seconds) --sample 200 (devices
    called through B) --node-timeout 2 --profile (py-spy on B; with
    DASHD_PROFILE_GIL=1 only samples holding the GIL: B's CPU)
    --twistd /work/main/.venv/bin/twistd (run the nodes from another tree,
    e.g. main, to compare; the load generator stays this tree's)

Starts two dashd nodes (``twistd -n dashd``, bench/cluster.py's Node) on a
fresh PostgreSQL database and Redis namespace, registers the devices, and
connects them to node A from lean devices (bench/lean.py's LeanDevice, a
bare Twisted protocol answering every call with its params) in several
load-generator processes (bench/worker.py, as ``python -m bench`` uses
them), spread over source addresses 127.0.0.2 and up. Each device redials
node B a random 0.1-1.0 s (``--redial``) after its connection to A drops,
like firmware with a second server address. Then A gets SIGKILL.

What "usable" means here, per device, timed from the SIGKILL:

- reconnected: its WebSocket to B is open (B answered the upgrade with
  101, so it read the device's credentials and took it);
- acknowledged: B answered its ``Dash.Heartbeat`` (dashd answers once it
  has recorded the connection and the device's info in PostgreSQL);
- online in presence: B's attach of the device reached Redis (seen as the
  ``at`` message the attach script publishes to the cluster): from then
  every node routes calls for the device to B;
- usable = acknowledged and online in presence, the later of the two.

That every usable device answers calls is checked on a sample
(``--sample``, random devices): each is called (``Sim.Echo`` through B's
REST API, one client connection pool in its device's process) as soon as
its heartbeat is acknowledged, and again 50 ms after any answer but 200
with its params: the time of the first good answer, the answers that were
not (there should be none), and the sample's call latency. Last, B's own
view: the time B's ``dashd_cluster_devices_online`` says all are online
(polled once every device is online in presence).

Load-independent figures: node B's CPU time (utime + stime from /proc)
from the SIGKILL until every device is usable, per reconnecting device
(and 3 s later, to include what trails), the CPU time of the PostgreSQL
backends serving the run's database (from /proc, same window with the 3 s),
and PostgreSQL transactions per device (pg_stat_database, read 11 s after,
when the backends have reported). The wall-clock figures depend on the machine's load: say it
(the load average is printed).

The issue-22 target: with 10,000 devices, all usable in under 5 s. A
process may hold 20,000 files here: each worker holds its devices' sockets
(a device has one at a time), B holds all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bench.cluster  # noqa: E402
from bench.__main__ import WorkerProcess, call_all, cpu_seconds, split  # noqa: E402
from bench.cluster import Node, drop_cluster  # noqa: E402
from bench.profile import Recording, summarise  # noqa: E402
from bench.worker import percentiles  # noqa: E402


def online_on(node: Node) -> int:
    """The devices node's presence replica counts online (its metrics)."""
    with urllib.request.urlopen(node.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith("dashd_cluster_devices_online "):
            return int(float(line.split()[1]))
    raise RuntimeError("no dashd_cluster_devices_online in %s/metrics" % node.url)


class Attaches(threading.Thread):
    """When each device's attach reached Redis: the ``at`` messages on the
    namespace's broadcast channel (dashd.cluster.presence), first of each
    device after C{arm()}."""

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe("%s:all" % namespace)
        # (the subscription confirmation: subscribed from here on)
        while self.pubsub.get_message(timeout=5) is None:
            pass
        self.at: dict[str, float] = {}
        self.armed = False
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            message = self.pubsub.get_message(timeout=0.2)
            if message is None or not self.armed:
                continue
            data = message["data"]
            if not isinstance(data, bytes) or b'"at"' not in data:
                continue
            t = time.monotonic()
            value = json.loads(data)
            if value.get("t") == "at":
                self.at.setdefault(value["id"], t)

    def stop(self) -> None:
        self.stopping = True
        self.join(5)
        self.pubsub.close()
        self.client.close()


def backend_cpu(database: str) -> dict[int, float]:
    """CPU seconds (utime + stime) of each PostgreSQL backend serving
    C{database} on this machine (its process title names the database)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                title = f.read()
            if not title.startswith(b"postgres: ") or (" %s " % database).encode() not in title:
                continue
            found[int(entry)] = cpu_seconds(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run(args: argparse.Namespace) -> None:
    if args.twistd:
        bench.cluster.TWISTD = args.twistd
    directory = tempfile.mkdtemp(prefix="dashd-bench-failover-")
    name = "dashd_bench_%s" % secrets.token_hex(4)
    namespace = "dashdbench-%s" % secrets.token_hex(4)
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute("CREATE DATABASE %s" % name)
    store_url = urlunsplit(urlsplit(args.postgres)._replace(path="/" + name))
    a = Node(os.path.join(directory, "a"), store_url, args.redis, namespace)
    b = Node(os.path.join(directory, "b"), store_url, args.redis, namespace)
    for node in (a, b):
        with open(node.config, "a") as f:
            f.write("node_timeout = %g\n" % args.node_timeout)
    workers: list[WorkerProcess] = []
    attaches: Attaches | None = None
    n = args.devices
    try:
        a.start(wait_key=True)
        b.start(wait_key=False)
        assert a.proc is not None and b.proc is not None
        with open(os.path.join(a.directory, "data", "admin.key")) as f:
            key = f.read().strip()
        workers = [WorkerProcess("dev%d" % i, directory) for i in range(args.workers)]
        tokens_file = os.path.join(directory, "tokens.txt")
        r = workers[0].call(dict(cmd="register", host="127.0.0.1", port=a.port, key=key,
                                 count=n, out=tokens_file, concurrency=32), timeout=1800)
        if r["registered"] != n:
            raise SystemExit("registration failed: %r" % r)
        with open(tokens_file) as f:
            tokens = [line.strip() for line in f if line.strip()]

        def binds(i: int) -> list[str]:
            return ["127.0.0.%d" % (2 + i * args.addresses + k) for k in range(args.addresses)]

        parts = split(tokens, len(workers))
        answers = call_all(workers, [
            dict(cmd="connect", host="127.0.0.1", port=a.port, tokens=part, binds=binds(i),
                 fallback={"host": "127.0.0.1", "port": b.port}, redial=args.redial,
                 timeout=600)
            for i, part in enumerate(parts)
        ], timeout=700)
        acked = sum(x["acked"] for x in answers)
        if acked != n:
            raise SystemExit("only %d of %d devices connected to A" % (acked, n))
        print("%d devices connected to A in %.1f s" % (
            n, max(x["ended"] for x in answers) - min(x["started"] for x in answers)))
        deadline = time.monotonic() + 120
        while online_on(b) < n:
            if time.monotonic() > deadline:
                raise SystemExit("B does not see all devices online on A")
            time.sleep(0.2)
        # What the connections before cost reaches pg_stat_database first
        # (a backend reports when idle, within 10 s).
        time.sleep(11)
        commits = _commits(args.postgres, name)
        attaches = Attaches(args.redis, namespace)
        attaches.start()
        idle0, idle_t0 = cpu_seconds(b.proc.pid), time.monotonic()
        time.sleep(2)
        idle_cores = (cpu_seconds(b.proc.pid) - idle0) / (time.monotonic() - idle_t0)
        recording = None
        if args.profile:
            recording = Recording(b.proc.pid, os.path.join(directory, "profile-b.txt"))
            time.sleep(0.5)
        load_before = loadavg()
        for w, part in zip(workers, parts):
            w.send(dict(cmd="failover", key=key, method="Sim.Echo", timeout=args.timeout,
                        sample=round(args.sample * len(part) / n)))
        time.sleep(0.2)  # (the workers have read the command)
        attaches.armed = True
        cpu0 = cpu_seconds(b.proc.pid)
        pg0 = backend_cpu(name)
        killed = time.monotonic()
        a.proc.send_signal(signal.SIGKILL)
        results = [w.receive(args.timeout + 60) for w in workers]
        deadline = time.monotonic() + args.timeout
        while len(attaches.at) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        cpu_done = cpu_seconds(b.proc.pid)
        done_at = time.monotonic()
        while online_on(b) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        b_counts = time.monotonic() - killed
        if recording is not None:
            recording.stop()
        time.sleep(max(0.0, done_at + 3 - time.monotonic()))
        cpu_settled = cpu_seconds(b.proc.pid)
        pg_cpu = sum(t - pg0.get(pid, 0.0) for pid, t in backend_cpu(name).items())
        load_after = loadavg()
        time.sleep(11)
        commits = _commits(args.postgres, name) - commits

        rows = [row for r in results for row in r["devices"]]
        dropped = [row[1] - killed for row in rows if row[1] is not None]
        reopened = [row[2] - killed for row in rows if row[2] is not None]
        back = {row[0]: row[3] - killed for row in rows if row[3] is not None}
        online = {d: t - killed for d, t in attaches.at.items()}
        usable = [max(back[d], online[d]) for d in back if d in online]
        sample_usable = {d: t - killed for r in results for d, t in r["usable"].items()}
        first_try = {d: t for r in results for d, t in r["first_try"].items()}
        call_latency = [sample_usable[d] - (first_try[d] - killed) for d in sample_usable]
        other: Counter[str] = Counter()
        for r in results:
            other.update(r["answers"])
        sampled = sum(round(args.sample * len(p) / n) for p in parts)

        def line(label: str, values: list[float]) -> str:
            p = percentiles(values)
            if not values:
                return "  %-34s none" % label
            return ("  %-34s %5d/%d  p50 %6.2f  p90 %6.2f  p99 %6.2f  max %6.2f s"
                    % (label, len(values), n, p["p50"], p["p90"], p["p99"], p["max"]))

        print("failover of %d devices from node A's SIGKILL (node_timeout %g s, redial %g-%g s,"
              " %d worker processes); load average %s before, %s after"
              % (n, args.node_timeout, args.redial[0], args.redial[1], len(workers),
                 load_before, load_after))
        print(line("connection to A dropped", dropped))
        print(line("reconnected to B (101)", reopened))
        print(line("heartbeat acknowledged by B", list(back.values())))
        print(line("online in presence (Redis)", list(online.values())))
        print(line("usable (both of the above)", usable))
        print(line("sample: first good call via B", list(sample_usable.values())))
        print("  sample: %d of %d devices answered through B; answers other than 200: %s;"
              " call latency p50 %.3f s, max %.3f s"
              % (len(sample_usable), sampled, dict(other) or "none",
                 percentiles(call_latency)["p50"] or 0, percentiles(call_latency)["max"] or 0))
        print("  B's own count says all online: %.2f s" % b_counts)
        all_usable = len(usable) == n and len(sample_usable) == sampled
        print("  ALL USABLE: %s%s" % ("yes, in %.2f s" % max(usable) if all_usable else "NO",
                                      " (target: under 5 s)"))
        print("  node B CPU: %.1f ms a device until all usable (%.2f s), %.1f ms with 3 s more;"
              " B idle before: %.3f cores"
              % ((cpu_done - cpu0) / n * 1000, cpu_done - cpu0,
                 (cpu_settled - cpu0) / n * 1000, idle_cores))
        print("  PostgreSQL backends' CPU (this database): %.1f ms a device, from the kill until"
              " 3 s after all usable" % (pg_cpu / n * 1000))
        print("  PostgreSQL transactions: %d (%.2f a device); device redials beyond the first:"
              " %d, refusals %s" % (commits, commits / n,
                                    sum(r["retries"] for r in results) - len(dropped),
                                    dict(sum((Counter(r["refusals"]) for r in results),
                                             Counter())) or "none"))
        if recording is not None:
            print(summarise(recording.path, 40))
            kept = os.path.abspath(args.profile_file or "failover-profile-b-%d.txt" % n)
            shutil.copyfile(recording.path, kept)
            print("(the raw profile: %s; python -m bench.profile FILE)" % kept)
    finally:
        if attaches is not None:
            attaches.stop()
        for w in workers:
            w.stop()
        b.stop()
        a.stop()
        drop_cluster(args, name, namespace, directory)


def _commits(url: str, database: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database"
                           " WHERE datname = %s", (database,)).fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4,
                        help="device processes (each holds devices/workers sockets) [4]")
    parser.add_argument("--addresses", type=int, default=4,
                        help="source addresses (127.0.0.2, ...) per worker [4]")
    parser.add_argument("--redial", default="0.1,1.0",
                        help="a device redials B a random MIN,MAX seconds after A drops [0.1,1.0]")
    parser.add_argument("--sample", type=int, default=200,
                        help="devices called through B's REST API as they come back [200]")
    parser.add_argument("--node-timeout", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=300,
                        help="give up on the failover after this many seconds [300]")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--twistd", help="the nodes' twistd (another tree's venv) [this one's]")
    parser.add_argument("--profile", action="store_true",
                        help="record node B with py-spy from the kill until all are usable "
                        "(DASHD_PROFILE_GIL=1: only samples holding the GIL, i.e. B's CPU)")
    parser.add_argument("--profile-file", help="where to keep the raw profile "
                        "[failover-profile-b-DEVICES.txt]")
    args = parser.parse_args()
    args.redial = tuple(float(x) for x in args.redial.split(","))
    if args.devices / args.workers > 19000:
        parser.error("more than 19,000 devices a worker: add --workers")
    run(args)


if __name__ == "__main__":
    main()
