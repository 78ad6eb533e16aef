"""
The control socket: how dashctl acts through a running dashd, so that
what it changes has the same live effects as the REST API (a revoked key's
streams closed, a rotated or deleted device's connection cut, on every node
of a cluster).

A UNIX socket, ``control.sock`` in the data directory, readable and
writable by dashd's own user only: whoever can use it can read the store
and ``admin.key`` anyway, so it needs no key. The protocol is one JSON
object a line:

    request:  {"command": "keys revoke", "args": {"key_id": "k..."}}
    answer:   {"result": ...}
          or  {"error": {"kind": "LastAdminKey", "message": "...", ...}}

(the commands are L{dashd.app.console.COMMANDS}; errors are
L{dashd.domain.errors.to_wire}). A connection may send several requests;
each is answered in order. Changes are written to the audit log of the
account they touched, by ``dashctl``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.application import strports
from twisted.application.service import Service
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from dashd.app import console
from dashd.app.audit import AuditLog
from dashd.domain.access import CONSOLE
from dashd.domain.errors import DomainError, Internal, Invalid, to_wire
from dashd.jsontext import compact

log = Logger()

# A request line at most (a command's arguments are a few short strings).
MAX_LINE = 65536
# The longest path a UNIX socket address may hold on Linux.
MAX_SOCKET_PATH = 107


class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, app: Any, audit: AuditLog | None) -> None:
        self._app = app
        self._audit = audit
        self._queue: list[bytes] = []
        self._busy = False

    def lineReceived(self, line: bytes) -> None:
        self._queue.append(line)
        if not self._busy:
            self._next()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._send({"error": to_wire(Invalid("the request is over %d bytes" % MAX_LINE))})
        self.transport.loseConnection()

    def _next(self) -> None:
        if not self._queue:
            self._busy = False
            return
        self._busy = True
        line = self._queue.pop(0)
        d = ensureDeferred(self._handle(line))
        d.addCallback(self._send)
        d.addErrback(log.failure, "answering on the control socket")
        d.addBoth(lambda _: self._next())

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError as e:
            return {"error": to_wire(Invalid("the request is not JSON: %s" % e))}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"error": to_wire(Invalid('a request is {"command": NAME, "args": {...}}'))}
        command, args = request["command"], request.get("args", {})
        try:
            done = await console.run(self._app, command, args)
        except DomainError as e:
            return {"error": to_wire(e)}
        except Exception:
            log.failure("control command {command}", command=command)
            return {"error": to_wire(Internal("internal error"))}
        self._record(command, done)
        return {"result": done.result}

    def _record(self, command: str, done: console.Done) -> None:
        """An audit entry, in the account it touched, for a change made
        from dashctl (reads touch none and are not recorded, as on REST)."""
        if self._audit is None or done.account_id is None:
            return
        self._audit.record({
            "t": self._app.clock.seconds(),
            "account_id": done.account_id,
            "key_id": CONSOLE.id,
            "method": "DASHCTL",
            "path": "%s %s" % (command, done.target),
            "device_id": done.device_id,
            "status": 200,
            "error": None,
        })

    def _send(self, answer: dict[str, Any]) -> None:
        if self.transport is not None and self.transport.connected:
            self.sendLine(compact(answer).encode("utf-8"))


class ControlFactory(Factory):
    def __init__(self, app: Any, audit: AuditLog | None) -> None:
        self._app = app
        self._audit = audit

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        protocol = ControlProtocol(self._app, self._audit)
        protocol.factory = self
        return protocol


def control_service(path: str, app: Any, audit: AuditLog | None, reactor: Any) -> Service:
    """The listening control socket at C{path} (mode 0600). A socket file
    left there is stale: dashd holds the data directory's lock."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError("the control socket's path %s is longer than %d bytes (choose a "
                         "shorter data_dir)" % (path, MAX_SOCKET_PATH))
    escaped = path.replace("\\", "\\\\").replace(":", "\\:")
    service = strports.service("unix:%s:mode=600:lockfile=0" % escaped,
                               ControlFactory(app, audit), reactor=reactor)
    return _RemoveStale(service, path)


class _RemoveStale(Service):
    """Removes a socket file a killed dashd left before listening."""

    def __init__(self, inner: Service, path: str) -> None:
        self._inner = inner
        self._path = path

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        self._inner.privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self._inner.startService()

    def stopService(self) -> Any:
        super().stopService()
        return self._inner.stopService()
