"""
What each kind of work leaves to Python's cycle collector: dashd runs in
this process (the twistd plugin's service, on a real socket, freezing off),
bench.lean's raw-socket clients do one thing N times, and the collector,
with C{gc.DEBUG_SAVEALL}, says how many unreachable objects it found.
Printed per scenario, in objects per item (docs/performance.md).

    python -m bench.garbage [--count 100]

tests/test_garbage.py asserts the ones that must be zero.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import socket
import tempfile
from typing import Any, Callable

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ClientFactory, Protocol

from bench.lean import CountingSubscriber, HttpConnection, LeanDevice, http_request, ws_handshake
from dashd.domain.access import CONSOLE
from dashd.tap import Options, makeService


class _Owner:
    """The callbacks bench.lean's clients make, counted."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: self.counts.update([name])


def _connect(port: int, proto: Protocol) -> None:
    factory = ClientFactory()
    factory.buildProtocol = lambda addr: proto  # type: ignore[method-assign]
    reactor.connectTCP("127.0.0.1", port, factory)


def _sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(600):
        if check():
            return
        await _sleep(0.05)
    raise RuntimeError("timed out")


def _census() -> collections.Counter[str]:
    """What the collector finds unreachable now, by type; then freed."""
    gc.collect()
    found = collections.Counter(type(o).__module__ + "." + type(o).__qualname__
                                for o in gc.garbage)
    gc.set_debug(0)
    del gc.garbage[:]
    gc.collect()  # free them for good
    gc.set_debug(gc.DEBUG_SAVEALL)
    return found


async def run(n: int) -> None:
    directory = tempfile.mkdtemp(prefix="dashd-garbage-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = os.path.join(directory, "dashd.toml")
    with open(config, "w") as f:
        f.write('listen = ["tcp:%d:interface=127.0.0.1"]\ndata_dir = "%s"\n'
                "[limits]\nrequests_per_second = 0\nfailed_auth_per_minute = 0\n"
                "[gc]\nfull_collection_interval = 0\n" % (port, directory))
    options = Options()
    options.parseOptions(["--config", config])
    service = makeService(options, reactor)
    service.startService()
    await _until(lambda: os.path.exists(os.path.join(directory, "admin.key")))
    with open(os.path.join(directory, "admin.key")) as f:
        key = f.read().strip()
    owner = _Owner()
    devices = service.parts.application.devices
    tokens = [(await devices.register(CONSOLE))[1] for _ in range(n)]
    http = HttpConnection(owner)
    _connect(port, http)
    await _until(lambda: owner.counts["connection_ready"] > 0)

    async def get(path: str) -> int:
        d: defer.Deferred[int] = defer.Deferred()
        http.request(http_request("GET", "x", path, key, None), lambda status, body: d.callback(status))
        return await d

    rows: list[tuple[str, collections.Counter[str]]] = []
    gc.set_debug(gc.DEBUG_SAVEALL)
    _census()

    devices = [LeanDevice(i, token, owner) for i, token in enumerate(tokens)]
    for device in devices:
        device.handshake = ws_handshake("127.0.0.1", "/api/v2/rpc", tokens[device.index], None)
        _connect(port, device)
    await _until(lambda: owner.counts["device_info_acked"] >= n)
    await _sleep(0.5)
    rows.append(("device connects (WebSocket upgrade)", _census()))
    for device in devices:
        assert await get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device.device_id) == 200
    rows.append(("RPC call answered", _census()))
    for device in devices:
        device.send_shadow_update()
    await _until(lambda: owner.counts["shadow_reply"] >= n)
    await _sleep(0.3)
    rows.append(("shadow update from a device", _census()))
    subscriber = CountingSubscriber(owner)
    subscriber.handshake = ws_handshake("127.0.0.1", "/api/v2/notify", key, None)
    _connect(port, subscriber)
    await _until(lambda: owner.counts["subscriber_opened"] >= 1)
    _census()
    for i, device in enumerate(devices):
        device.send_tick(i)
    await _until(lambda: subscriber.count >= n)
    rows.append(("notification to a subscriber", _census()))
    subscriber.transport.loseConnection()
    for device in devices:
        assert await get("/api/v2/devices/%s" % device.device_id) == 200
    rows.append(("GET /api/v2/devices/ID (through Klein)", _census()))
    for device in devices:
        device.transport.loseConnection()
    await _until(lambda: service.parts.fleet.router.online_count() == 0)
    await _sleep(0.5)
    rows.append(("device disconnects", _census()))
    for device in devices:
        assert await get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device.device_id) == 503
    rows.append(("RPC call to an offline device (503)", _census()))
    for i in range(n):
        assert await get("/api/v2/devices/dnosuch%d/rpc/Sys.GetInfo" % i) == 404
    rows.append(("RPC call to an unknown device (404)", _census()))
    for i, token in enumerate(tokens):
        refused = LeanDevice(i, token, owner)
        refused.handshake = ws_handshake("127.0.0.1", "/api/v2/rpc", token[:-4] + "AAAA", None)
        _connect(port, refused)
    await _until(lambda: owner.counts["device_refused"] >= n)
    await _sleep(0.5)
    rows.append(("device handshake refused (401)", _census()))
    gc.set_debug(0)

    print("cyclic garbage per item, %d items each (dashd in this process, clients included)" % n)
    for label, found in rows:
        total = sum(found.values())
        top = ", ".join("%s %d" % (name.rsplit(".", 1)[-1], count)
                        for name, count in found.most_common(4))
        print("  %-42s %6.1f   %s" % (label, total / n, top))
    await service.stopService()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=100, help="items per scenario [100]")
    args = p.parse_args(argv)
    failures: list[Any] = []

    def go() -> None:
        d = defer.ensureDeferred(run(args.count))
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if failures:
        failures[0].raiseException()


if __name__ == "__main__":
    main()
