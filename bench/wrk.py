"""
Closed-loop HTTP load with wrk (Debian's ``wrk`` package): a Lua script
picks the device of each request and prints the figures as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

WRK_MISSING = (
    "wrk (the HTTP load tool) is not installed; as root: "
    "apt-get update && apt-get install -y wrk  (or run python -m bench --install-wrk)"
)

_SCRIPT = """
local ids = {%(ids)s}
local n = #ids
local method = "%(method)s"
%(auth)s
local counter = 0
request = function()
  counter = counter + 1
  local id = ids[(counter %% n) + 1]
  if n > 1 then id = ids[math.random(n)] end
  return wrk.format("GET", "/api/v2/devices/" .. id .. "/rpc/" .. method)
end
done = function(summary, latency, requests)
  io.write(string.format(
    "JSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"connect\\":%%d,\\"read\\":%%d," ..
    "\\"write\\":%%d,\\"status\\":%%d,\\"timeout\\":%%d,\\"p50_us\\":%%d,\\"p90_us\\":%%d," ..
    "\\"p99_us\\":%%d,\\"max_us\\":%%d}\\n",
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(90)),
    math.floor(latency:percentile(99)), math.floor(latency.max)))
end
"""


def ensure_wrk(install: bool) -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk with apt-get ...", file=sys.stderr, flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False)
        path = shutil.which("wrk")
        if path:
            return path
    raise SystemExit(WRK_MISSING)


def write_script(path: str, ids: list[str], method: str, key: str | None) -> None:
    auth = ('wrk.headers["Authorization"] = "Bearer %s"' % key) if key else ""
    with open(path, "w") as f:
        f.write(_SCRIPT % {
            "ids": ",".join('"%s"' % i for i in ids),
            "method": method,
            "auth": auth,
        })


def run(url: str, script: str, connections: int, seconds: float, threads: int = 1) -> dict[str, Any]:
    out = subprocess.run(
        [
            "wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % max(1, round(seconds)),
            "--timeout", "10s", "-s", script, url,
        ],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    for line in out.stdout.splitlines():
        if line.startswith("JSON "):
            r = json.loads(line[5:])
            secs = r["duration_us"] / 1e6
            ok = r["requests"] - r["status"]
            return {
                "requests": r["requests"],
                "ok": ok,
                "non_2xx": r["status"],
                "socket_errors": r["connect"] + r["read"] + r["write"] + r["timeout"],
                "seconds": secs,
                "rps": ok / secs if secs else 0.0,
                "p50_ms": r["p50_us"] / 1000,
                "p90_ms": r["p90_us"] / 1000,
                "p99_ms": r["p99_us"] / 1000,
                "max_ms": r["max_us"] / 1000,
                "connections": connections,
            }
    raise RuntimeError("wrk printed no result:\n%s\n%s" % (out.stdout, out.stderr))
