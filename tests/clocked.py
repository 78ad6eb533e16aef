"""
What the unit tests on a Clock are made of: the real application
(L{dashd.app.application.build_application} over a L{Fleet} with a
L{LocalRouter} and a L{LocalHub}) on an L{InlineSQLiteStore} in a temporary
file, with a L{twisted.internet.task.Clock} for time. Every store job has
run and its Deferred has fired when the call returns, so a test needs no
reactor and never waits: it advances the clock. Devices are L{FakeDevice}s,
a real L{DeviceSession} whose send and close are recorded.

See docs/development.md, "Unit tests on a Clock".
"""

from __future__ import annotations

import json
from typing import Any, Coroutine

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from dashd.app.application import Application, build_application
from dashd.app.firmware import OtaManager
from dashd.app.fleet import Fleet
from dashd.assembly import make_authenticator
from dashd.channel.hub import LocalHub
from dashd.channel.router import LocalRouter
from dashd.channel.session import DeviceSession
from dashd.config import Config
from dashd.domain.events import Event
from dashd.domain.model import ApiKey, Device
from dashd.store.sqlite import InlineSQLiteStore

# Where the clock starts: a plausible Unix time, so that expiry times and
# "created" look like real ones.
START = 1_800_000_000.0


def done(d: Deferred[Any] | Coroutine[Any, Any, Any]) -> Any:
    """The result of a Deferred (or coroutine) that has fired; its error
    raised if it failed. Fails the test if it has not fired: on a Clock
    with the inline store, whatever does not wait for time fires at once."""
    d = ensureDeferred(d)
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "still waiting: %r" % d
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def failure_of(d: Deferred[Any] | Coroutine[Any, Any, Any], *errors: type) -> Any:
    """The exception a fired Deferred failed with (one of C{errors})."""
    d = ensureDeferred(d)
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "still waiting: %r" % d
    assert isinstance(outcome[0], Failure), "succeeded with %r" % (outcome[0],)
    assert outcome[0].check(*errors), outcome[0]
    return outcome[0].value


def pending(d: Deferred[Any]) -> Deferred[Any]:
    """C{d}, checked to have not fired yet."""
    assert not d.called, "fired already: %r" % (d.result,)
    return d


class World:
    """dashd's parts for one test: C{clock}, C{config}, C{store}, C{router},
    C{hub}, C{fleet}, C{auth}, C{ota}, C{app}; C{admin}, the bootstrap
    admin key (C{admin_secret} its secret); C{events}, every event
    published; C{failures}, what was logged with a traceback (L{close}
    fails the test if anything was)."""

    def __init__(self, tmp_path: Any, config: dict[str, Any] | None = None) -> None:
        # As the end-to-end fixtures fail a test whose dashd logged a
        # traceback, close() fails one whose parts logged a failure.
        self.failures: list[dict[str, Any]] = []
        self._observer = lambda event: (
            self.failures.append(event) if "log_failure" in event else None)
        globalLogPublisher.addObserver(self._observer)
        self.clock = Clock()
        self.clock.advance(START)
        self.config = Config(config or {})
        # synchronous=OFF: nothing here outlives a crash, so no fsyncs.
        self.store = InlineSQLiteStore(str(tmp_path / "dashd.sqlite3"), synchronous="OFF")
        self.store.start()
        self.router = LocalRouter()
        self.hub = LocalHub()
        self.fleet = Fleet(self.store, self.router, self.hub, self.clock, self.config)
        self.auth = make_authenticator(self.store, self.config, self.clock)
        self.ota = OtaManager(self.fleet, self.config, str(tmp_path / "firmware"), self.clock)
        self.events: list[Event] = []
        # As dashd.assembly.build connects them.
        self.fleet.event_observers.append(self.ota.device_event)
        self.fleet.info_observers.append(self.ota.device_info)
        self.fleet.event_observers.append(self.events.append)
        self.app: Application = build_application(self.fleet, self.auth, self.ota)
        done(self.ota.start())
        self.admin: ApiKey
        self.admin, self.admin_secret = done(self.app.keys.bootstrap())

    def register(self, name: str = "dev") -> tuple[Device, str]:
        """A new device of the admin's account, and its token."""
        return done(self.app.devices.register(self.admin, name))

    def connect(self, device: Device | None = None, answer_info: bool = True,
                fw_id: str = "fw-1") -> "FakeDevice":
        """A connected device (a new one unless given). Unless not
        C{answer_info}, it sends Dash.Heartbeat at once with C{fw_id}, as
        mDash devices do, so dashd does not ask it for Sys.GetInfo."""
        if device is None:
            device, _ = self.register()
        fake = FakeDevice(self, device)
        fake.open()
        if answer_info:
            fake.request("Dash.Heartbeat", {"fw_id": fw_id, "fw_version": fw_id})
        return fake

    def named(self, name: str, device_id: str | None = None) -> list[Event]:
        return [e for e in self.events
                if e.name == name and (device_id is None or e.device_id == device_id)]

    def close(self) -> None:
        done(self.ota.stop())
        done(self.store.stop())
        globalLogPublisher.removeObserver(self._observer)
        assert not self.failures, "\n".join(
            formatEvent(e) + "\n" + e["log_failure"].getTraceback() for e in self.failures)


class FakeDevice:
    """The device end of a real L{DeviceSession}: every frame dashd sends
    it, decoded, in C{sent}; C{closed_with} the (code, reason) dashd closed
    it with. After a close nothing more reaches it (as over a WebSocket);
    L{gone} is the connection going (what the WebSocket's onClose does)."""

    def __init__(self, world: World, device: Device) -> None:
        self.world = world
        self.device_id = device.id
        self.sent: list[dict[str, Any]] = []
        self.closed_with: tuple[int, str] | None = None
        self._ids = 1000
        self._answered: set[Any] = set()
        self.session = DeviceSession(device, world.fleet, self._send, self._close, peer="test")

    def _send(self, text: str) -> None:
        if self.closed_with is None:
            self.sent.append(json.loads(text))

    def _close(self, code: int, reason: str) -> None:
        if self.closed_with is None:
            self.closed_with = (code, reason)

    def open(self) -> None:
        self.session.opened()

    def gone(self, reason: str = "connection lost") -> None:
        self.session.closed(reason)

    # What dashd asked

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        """The calls dashd made (frames with a method), of C{method} if given."""
        return [f for f in self.sent
                if "method" in f and (method is None or f["method"] == method)]

    def unanswered(self) -> list[dict[str, Any]]:
        return [f for f in self.calls() if f["id"] not in self._answered]

    # What the device says

    def answer(self, call: dict[str, Any], result: Any = True) -> None:
        self._answered.add(call["id"])
        self.session.received({"id": call["id"], "result": result})

    def refuse(self, call: dict[str, Any], code: int, message: str = "refused") -> None:
        self._answered.add(call["id"])
        self.session.received({"id": call["id"], "error": {"code": code, "message": message}})

    def request(self, method: str, params: Any = None) -> dict[str, Any] | None:
        """Call dashd; return its reply (None if none came)."""
        self._ids += 1
        before = len(self.sent)
        self.session.received({"id": self._ids, "method": method, "params": params})
        replies = [f for f in self.sent[before:] if f.get("id") == self._ids and "method" not in f]
        return replies[0] if replies else None
