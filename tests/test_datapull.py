"""
The pull of mDashStore data in one process: the puller against a device
file system (the simulator's, called directly) and a real SQLite store.
What end-to-end tests cannot arrange: two pulls of the same device at once
(two nodes, or a connection that replaced another mid-pull).
"""

from __future__ import annotations

import collections
import json

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import deferLater

from dashd.app.datapull import UNREADABLE, DataPuller, parse_line
from dashd.app.fleet import Fleet
from dashd.channel.hub import LocalHub
from dashd.config import Config
from dashd.domain.errors import DeviceFailed
from dashd.domain.model import Account, Device
from dashd.simulator import RpcError, SimulatedDevice
from dashd.store.sqlite import SQLiteStore
from support import eventually


def test_a_line_is_a_topic_and_json_or_kept_as_its_text():
    assert parse_line(b'temp {"v":1}') == ("temp", {"v": 1})
    assert parse_line(b"count 3") == ("count", 3)
    assert parse_line(b"no-json-here") == (UNREADABLE, "no-json-here")
    assert parse_line(b"temp {broken") == (UNREADABLE, "temp {broken")
    assert parse_line(b"\xff\xfe x") == (UNREADABLE, "\ufffd\ufffd x")


class _DeviceRouter:
    """A router whose one device is a simulator's file system, answering on
    a later reactor turn (so that two pulls interleave)."""

    def __init__(self, sim: SimulatedDevice) -> None:
        self.sim = sim
        self.calls: list[str] = []

    def is_online(self, device_id: str) -> bool:
        return True

    def call(self, device_id: str, method: str, params, timeout) -> Deferred:
        self.calls.append(method)

        def answer():
            try:
                return self.sim.handlers[method](params)
            except RpcError as e:
                raise DeviceFailed(e.message, e.code)

        return deferLater(reactor, 0, lambda: None).addCallback(
            lambda _: maybeDeferred(answer))

    def desired_changed(self, device_id, document) -> None:
        pass


async def _device_with_lines(tmp_path, lines: int):
    from dashd.domain.model import ApiKey

    store = SQLiteStore(str(tmp_path / "dashd.sqlite3"), reactor)
    store.start()
    await store.create_account(Account(id="a1", name="a", created=0.0),
                               ApiKey(id="k1", account_id="a1", name="", kind="admin",
                                      created=0.0), "0" * 64)
    await store.create_device(Device(id="d1", account_id="a1", name="d", created=0.0), "0" * 64)
    sim = SimulatedDevice("ws://unused", "d1-x", reactor, dialect="mdash")
    for n in range(lines):
        sim.store("temperature", {"n": n})
    router = _DeviceRouter(sim)
    fleet = Fleet(store, router, LocalHub(), reactor, Config())
    return store, sim, router, fleet


async def _stored_once(store, lines: int) -> None:
    found = await store.query_data("a1", "d1", 0, 5000, None)
    counts = collections.Counter(json.dumps(p["value"]) for p in found)
    assert [v for v, c in counts.items() if c > 1] == []
    assert sorted(p["value"]["n"] for p in found) == list(range(lines))


@pytest_twisted.ensureDeferred
async def test_two_pulls_of_one_device_at_once_take_its_file_once(tmp_path):
    store, sim, router, fleet = await _device_with_lines(tmp_path, 300)
    try:
        # Two pullers: two nodes, or an old and a new connection's.
        pullers = [DataPuller(fleet, 256, 4, 5.0) for _ in range(2)]
        for puller in pullers:
            puller.request("d1")
        await eventually(lambda: all(not p._pulling for p in pullers), 30)
        await _stored_once(store, 300)
        assert sim.files == {}
        assert router.calls.count("FS.Rename") == 1
        assert sum(p.lines_pulled for p in pullers) == 300
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_second_pull_joining_mid_file_stores_no_line_twice(tmp_path):
    store, sim, router, fleet = await _device_with_lines(tmp_path, 300)
    try:
        first, second = DataPuller(fleet, 256, 4, 5.0), DataPuller(fleet, 256, 4, 5.0)
        first.request("d1")
        await eventually(lambda: first.lines_pulled > 0, 10)
        second.request("d1")  # resumes the same file from the record, meanwhile
        await eventually(lambda: not first._pulling and not second._pulling, 30)
        await _stored_once(store, 300)
        assert sim.files == {}
    finally:
        await store.stop()
