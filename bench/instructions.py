"""
Instructions dashd executes per REST RPC call, counted by valgrind's
callgrind: the same figure whatever else the machine is doing, so two
versions can be compared on a busy, shared machine where timings swing.

    .venv/bin/python -m bench.instructions [--calls 500] [--targets baseline,dashd] [--tls]

Starts each server (the baseline bridge of L{bench.baseline}, then dashd)
under ``valgrind --tool=callgrind`` with counting off, connects one
simulated device (in this process, not counted), makes ``--calls`` warm-up
calls, then counts the instructions of the server's process during
``--calls`` more (one at a time, ``GET .../rpc/Sys.GetInfo``) and prints
the count per call, and dashd's as a ratio of the baseline's: the CPU a
call costs, compared in a way that holds on a busy machine. With C{--tls}
both servers listen with TLS (a certificate made for the run) and the
device and the HTTP client connect with it. Needs valgrind (Debian's
package).
"""

from __future__ import annotations

import argparse
import contextlib
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

from typing import Iterator

from twisted.internet import defer, task

PYTHON = sys.executable
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, key: str, body: dict, context=None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": "Bearer " + key,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60, context=context) as reply:
        return json.loads(reply.read())


def control(pid: int, *args: str) -> str:
    return subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True,
                          text=True, timeout=120).stdout


TLS: dict = {}


def tls_cert(work: str):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.certs import make_server_cert

    return make_server_cert(work, ["127.0.0.1"])


# What is asked: a REST RPC call (the default), or the device's view
# (--request device: GET /api/v2/devices/ID, what a client polls).
REQUEST = {"rpc": "%s/api/v2/devices/%s/rpc/Sys.GetInfo", "device": "%s/api/v2/devices/%s"}
_request = "rpc"


async def calls(reactor, base: str, key: str, device_id: str, n: int, agent=None) -> None:
    import treq

    url = REQUEST[_request] % (base, device_id)
    extra = {"agent": agent} if agent is not None else {"persistent": True}
    for _ in range(n):
        reply = await treq.get(url, headers={"Authorization": ["Bearer " + key]}, **extra)
        await reply.content()
        assert reply.code == 200, reply.code


def start(target: str, work: str, port: int, cert=None,
          separate_threads: bool = False,
          ping_interval: int = 0) -> tuple[subprocess.Popen, str, str, str]:
    """Start C{target} under callgrind with counting off; return the
    process, its API key (none for the baseline), a device's token and ID.
    With C{separate_threads}, callgrind counts each thread apart (see
    L{callgrind_threads}); C{ping_interval}: dashd's keep-alive pings (0:
    none, so that a count holds only the work measured)."""
    out = os.path.join(work, "callgrind.out")
    log = open(os.path.join(work, "server.log"), "wb")
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                "--callgrind-out-file=" + out]
    if separate_threads:
        valgrind.append("--separate-threads=yes")
    endpoint = "tcp:%d:interface=127.0.0.1" % port
    base = "http://127.0.0.1:%d" % port
    context = None
    if cert is not None:
        import ssl

        endpoint = "ssl:%d:interface=127.0.0.1:privateKey=%s:certKey=%s" % (
            port, cert.key, cert.cert)
        base = "https://127.0.0.1:%d" % port
        context = ssl.create_default_context(cafile=cert.ca)
    if target == "baseline":
        server = subprocess.Popen(valgrind + [PYTHON, "-m", "bench.baseline", "--endpoint",
                                              endpoint],
                                  stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "baseline did not start"
            try:
                urllib.request.urlopen(base + "/stats", timeout=5, context=context).read()
                break
            except OSError:
                time.sleep(0.5)
        # The baseline takes the part of the token before "-" as the ID.
        return server, "", "bench1-x", "bench1"
    config = os.path.join(work, "dashd.toml")
    with open(config, "w") as f:
        f.write('listen = ["%s"]\ndata_dir = %s\n'
                "[limits]\nrequests_per_second = 0\nfailed_auth_per_minute = 0\n"
                "[device]\nping_interval = %d\n"
                "[gc]\nfull_collection_interval = 0\n"
                % (endpoint, json.dumps(os.path.join(work, "data")), ping_interval))
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
    device = post(base + "/api/v2/devices", key, {}, context)
    return server, key, device["token"], device["id"]


@contextlib.contextmanager
def stopped_after(server: subprocess.Popen) -> Iterator[None]:
    """Run a count's C{task.react} inside: its clean exit (SystemExit 0)
    is not an error, and the server under callgrind is stopped however the
    count ends (its counts are written as it exits)."""
    try:
        yield
    except SystemExit as e:
        if e.code:
            raise
    finally:
        server.terminate()
        server.wait(120)


def callgrind_threads(work: str) -> dict[int, int]:
    """Each thread's instructions (by callgrind's thread number: 1 is the
    main thread, the reactor's), from a run with C{separate_threads}; the
    files in C{work} are left."""
    totals: dict[int, int] = {}
    for name in os.listdir(work):
        m = re.match(r"^callgrind\.out.*-(\d+)$", name)
        if m:
            with open(os.path.join(work, name)) as f:
                for line in f:
                    t = re.match(r"^(?:summary|totals): (\d+)", line)
                    if t:
                        number = int(m.group(1))
                        totals[number] = max(totals.get(number, 0), int(t.group(1)))
    return totals


def callgrind_total(work: str) -> int:
    """The instructions callgrind counted (its dump's total, all threads)
    in C{work}, which is then removed."""
    total = 0
    for name in os.listdir(work):
        if name.startswith("callgrind.out"):
            with open(os.path.join(work, name)) as f:
                for line in f:
                    m = re.match(r"^(?:summary|totals): (\d+)", line)
                    if m:
                        total = max(total, int(m.group(1)))
    shutil.rmtree(work, ignore_errors=True)
    return total


def count(target: str, n: int, tls: bool = False) -> int:
    """Instructions C{target}'s process executes per REST RPC call."""
    work = tempfile.mkdtemp(prefix="dashd-instructions-")
    port = free_port()
    cert = tls_cert(work) if tls else None
    server, key, token, device_id = start(target, work, port, cert)
    with stopped_after(server):
        async def run(reactor):
            from dashd.simulator import SimulatedDevice

            scheme, options, agent = "", None, None
            if cert is not None:
                from twisted.internet import ssl
                from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

                with open(cert.ca) as f:
                    ca = ssl.Certificate.loadPEM(f.read())
                options = ssl.optionsForClientTLS("127.0.0.1", trustRoot=ca)
                agent = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=ca),
                              pool=HTTPConnectionPool(reactor, persistent=True))
                scheme = "s"
            sim = SimulatedDevice("ws%s://127.0.0.1:%d/api/v2/rpc" % (scheme, port), token, reactor,
                                  tls_options=options)
            sim.start()
            await sim.wait_open()
            await task.deferLater(reactor, 2, lambda: None)
            base = "http%s://127.0.0.1:%d" % (scheme, port)
            await defer.ensureDeferred(calls(reactor, base, key, device_id, n, agent))
            control(server.pid, "--instr=on")
            await defer.ensureDeferred(calls(reactor, base, key, device_id, n, agent))
            control(server.pid, "--instr=off")
            control(server.pid, "--dump")
            await sim.stop()

        # One reactor per process: each target is counted in a child.
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    return callgrind_total(work) // n


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions")
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--targets", default="baseline,dashd",
                   help="which servers to count, in order (default: baseline,dashd)")
    p.add_argument("--tls", action="store_true", help="both servers on TLS")
    p.add_argument("--request", choices=sorted(REQUEST), default="rpc",
                   help="rpc: GET .../rpc/Sys.GetInfo (default); device: GET "
                        "/api/v2/devices/ID")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    global _request
    _request = args.request
    if args.one:
        print(count(args.one, args.calls, args.tls))
        return 0
    figures = {}
    for target in args.targets.split(","):
        # A reactor cannot be restarted: each count runs in a process of its own.
        out = subprocess.run([PYTHON, "-m", "bench.instructions", "--one", target,
                              "--calls", str(args.calls), "--request", args.request]
                             + (["--tls"] if args.tls else []),
                             capture_output=True, text=True, check=True)
        figures[target] = int(out.stdout.split()[-1])
        print("%-8s %12d instructions a %s (%d counted%s)"
              % (target, figures[target], "REST RPC call" if args.request == "rpc" else
                 "GET /api/v2/devices/ID", args.calls, ", TLS" if args.tls else ""),
              flush=True)
    if "baseline" in figures and "dashd" in figures:
        print("dashd / baseline: %.2f" % (figures["dashd"] / figures["baseline"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
