"""
Restart under load: 5,000 connected devices, a thousand of them sending
shadow updates and a REST client writing tags, when dashd is killed with
SIGKILL and started again. Every device comes back online, and every write
that was acknowledged (a reply to the device, a 200 to REST) is there.

The devices are the benchmark's lean clients (bench/lean.py) in a worker
process, spread over several source addresses; dashd is a real process.
This test blocks: everything it drives runs in other processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from support import DashdProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 5000
UPDATING = 1000
WRITTEN = 40


class Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker"], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def ask(self, **command) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert "error" not in answer, answer
        return answer

    def stop(self) -> None:
        try:
            self.ask(cmd="quit")
        except Exception:
            pass
        self.proc.kill()
        self.proc.wait(10)


def _get(server: DashdProcess, key: str, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(server.url + path,
                                     headers={"Authorization": "Bearer " + key})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def _connected(server: DashdProcess) -> int:
    status, body = _get(server, "", "/metrics")
    for line in body.decode().splitlines() if status == 200 else ():
        if line.startswith("dashd_devices_connected "):
            return int(float(line.split()[1]))
    return -1


class TagWriter(threading.Thread):
    """Writes tags.n = 1, 2, ... to some devices through REST until stopped,
    remembering the last value each got a 200 for."""

    def __init__(self, server: DashdProcess, key: str, device_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.server, self.key, self.device_ids = server, key, device_ids
        self.acked: dict[str, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            for device_id in self.device_ids:
                body = json.dumps({"shadow": {"tags": {"n": n}}}).encode()
                request = urllib.request.Request(
                    self.server.url + "/api/v2/devices/" + device_id, data=body,
                    headers={"Authorization": "Bearer " + self.key}, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=10) as r:
                        if r.status == 200:
                            self.acked[device_id] = n
                except (urllib.error.HTTPError, OSError):
                    time.sleep(0.05)  # down, or stopping: try the next one


def test_kill_and_restart_under_load(tmp_path):
    server = DashdProcess(str(tmp_path), {
        # Production-like: pings are rare, Sys.GetInfo waits for heartbeats
        # that a storm delays.
        "device": {"ping_interval": 30.0, "ping_timeout": 30.0, "info_request_delay": 10.0},
        "http": {"access_log": False},
    })
    server.start()
    worker = Worker()
    writer = None
    try:
        key = server.admin_key
        tokens_file = str(tmp_path / "tokens")
        started = time.monotonic()
        registered = worker.ask(cmd="register", host="127.0.0.1", port=server.port, key=key,
                                count=DEVICES, out=tokens_file, concurrency=16)
        assert registered["registered"] == DEVICES, registered
        print("registered %d devices in %.1f s" % (DEVICES, registered["seconds"]))
        with open(tokens_file) as f:
            tokens = [line.strip() for line in f if line.strip()]
        binds = ["127.0.0.%d" % i for i in range(2, 7)]
        worker.ask(cmd="connect", host="127.0.0.1", port=server.port, tokens=tokens, binds=binds)
        assert _connected(server) == DEVICES
        print("registered and connected %d devices in %.1f s"
              % (DEVICES, time.monotonic() - started))

        worker.ask(cmd="shadow_start", count=UPDATING)
        device_ids = [t.split("-", 1)[0] for t in tokens]
        writer = TagWriter(server, key, device_ids[-WRITTEN:])
        writer.start()
        # Until writes of both kinds have been acknowledged (within a
        # deadline: on a busy machine the first ones may take a while); the
        # writes go on, so some are in flight when dashd is killed.
        deadline = time.monotonic() + 60
        while not (writer.acked and worker.ask(cmd="shadow_durable")["durable"]):
            assert time.monotonic() < deadline, "no write acknowledged within 60 s"
            time.sleep(0.2)

        server.kill9()
        killed = time.monotonic()
        server.start()
        deadline = time.monotonic() + 180
        while _connected(server) < DEVICES:
            assert time.monotonic() < deadline, "only %d of %d devices came back" % (
                _connected(server), DEVICES)
            time.sleep(0.5)
        print("all %d devices back %.1f s after the kill" % (DEVICES, time.monotonic() - killed))
        writer.stopping.set()
        writer.join(30)

        durable = worker.ask(cmd="shadow_durable")["durable"]
        assert len(durable) >= UPDATING * 0.9
        status, body = _get(server, key, "/api/v2/devices")
        assert status == 200
        devices = {d["id"]: d for d in json.loads(body)}
        assert len(devices) == DEVICES
        assert all(d["online"] for d in devices.values())
        lost = [(i, seq, devices[i]["shadow"]["state"]["reported"].get("seq"))
                for i, seq in durable.items()
                if (devices[i]["shadow"]["state"]["reported"].get("seq") or 0) < seq]
        assert not lost, "acknowledged updates missing: %r" % lost[:5]
        missing = [(i, n) for i, n in writer.acked.items()
                   if devices[i]["shadow"]["tags"].get("n", 0) < n]
        assert not missing, "acknowledged REST writes missing: %r" % missing[:5]
    finally:
        if writer is not None:
            writer.stopping.set()
        worker.stop()
        if server.proc is not None:
            server.stop()
    assert not server.problems()
