"""
Instructions a server executes per device shadow update, counted by
valgrind's callgrind (all its threads: dashd's store writer too), the
baseline bridge and dashd side by side, as L{bench.instructions} does for
RPC calls: a figure that holds on a busy, shared machine.

    .venv/bin/python -m bench.shadow_instructions [--updates 2000] [--devices 20]

``--devices`` simulated devices (in this process, not counted) each send
``Dash.Shadow.Update`` (``{"temp": 20..29, "seq": N}`` reported), one
outstanding each, as the benchmark's shadow test does; a warm-up of
``--updates``, then ``--updates`` more counted. dashd acknowledges an update
once it is durable, so several devices' updates share a commit as under
load. Kernel work (fsync, the socket calls) is not counted.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile

from twisted.internet import defer, task

from bench.instructions import (PYTHON, callgrind_threads, callgrind_total, control, free_port,
                                post, start, stopped_after)


async def updates(devices: list, n: int) -> None:
    """C{n} updates in all, one outstanding per device."""
    left = [n]

    async def loop(sim) -> None:
        while left[0] > 0:
            left[0] -= 1
            seq = left[0]
            await sim.report({"temp": 20 + seq % 10, "seq": seq})

    await defer.gatherResults([defer.ensureDeferred(loop(s)) for s in devices],
                              consumeErrors=True)


def count(target: str, n: int, k: int, separate_threads: bool = False) -> list[int]:
    """Instructions per update: the whole process's, then (with
    C{separate_threads}) each thread's in callgrind's order (the first is
    the reactor's)."""
    work = tempfile.mkdtemp(prefix="dashd-shadow-instructions-")
    port = free_port()
    server, key, token, device_id = start(target, work, port, separate_threads=separate_threads)
    base = "http://127.0.0.1:%d" % port
    if target == "baseline":
        tokens = ["bench%d-x" % i for i in range(1, k + 1)]
    else:
        tokens = [token] + [post(base + "/api/v2/devices", key, {})["token"]
                            for _ in range(k - 1)]
    with stopped_after(server):
        async def run(reactor):
            from dashd.simulator import SimulatedDevice

            sims = [SimulatedDevice("ws://127.0.0.1:%d/api/v2/rpc" % port, t, reactor)
                    for t in tokens]
            for s in sims:
                s.start()
            for s in sims:
                await s.wait_open()
            await task.deferLater(reactor, 2, lambda: None)
            await updates(sims, n)
            control(server.pid, "--instr=on")
            await updates(sims, n)
            control(server.pid, "--instr=off")
            control(server.pid, "--dump")
            for s in sims:
                await s.stop()

        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    if separate_threads:
        threads = callgrind_threads(work)
        shutil.rmtree(work, ignore_errors=True)
        per = [threads[t] // n for t in sorted(threads)]
        return [sum(threads.values()) // n] + per
    return [callgrind_total(work) // n]


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.shadow_instructions")
    p.add_argument("--updates", type=int, default=2000)
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--targets", default="baseline,dashd")
    p.add_argument("--separate-threads", action="store_true",
                   help="count each thread apart too (callgrind --separate-threads=yes)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(" ".join(map(str, count(args.one, args.updates, args.devices,
                                      args.separate_threads))))
        return 0
    figures = {}
    for target in args.targets.split(","):
        out = subprocess.run([PYTHON, "-m", "bench.shadow_instructions", "--one", target,
                              "--updates", str(args.updates), "--devices", str(args.devices)]
                             + (["--separate-threads"] if args.separate_threads else []),
                             capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr)
            return 1
        numbers = [int(x) for x in out.stdout.split("\n")[-2].split()]
        figures[target] = numbers[0]
        print("%-8s %12d instructions a shadow update (%d counted, %d devices)"
              % (target, figures[target], args.updates, args.devices), flush=True)
        if len(numbers) > 1:
            print("         by thread (the first is the reactor's): %s"
                  % ", ".join("{:,}".format(x) for x in numbers[1:]), flush=True)
    if "baseline" in figures and "dashd" in figures:
        print("dashd / baseline: %.2f" % (figures["dashd"] / figures["baseline"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
