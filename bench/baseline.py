"""
The baseline: the smallest REST-to-device bridge Klein and Autobahn allow,
with no authentication, no store, no timeouts and no access log, serving
the same URLs as dashd so that the same load runs against both.

- ``/api/v2/rpc``: devices connect (the device ID is the part of the bearer
  token before the first ``-``; the token is not checked). Any call from a
  device is answered at once (``true``; ``{"version": N}`` for
  ``Dash.Shadow.Update``, nothing is kept); a notification (no ``id``) is
  sent to every notification subscriber as ``rpc.out.METHOD``.
- ``GET|POST /api/v2/devices/:id/rpc/:method``: sends the call to the
  device and answers with its result.
- ``/api/v2/notify``: notification subscribers.
- ``GET /stats``: how many devices are connected.

    python -m bench.baseline --port 8081 [--backlog 4096]
    python -m bench.baseline --endpoint ssl:8443:privateKey=key.pem:certKey=cert.pem
"""

from __future__ import annotations

import argparse
import json
import resource
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from klein import Klein
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.defer import Deferred
from twisted.web.server import Site

app = Klein()
devices: dict[str, DeviceProtocol] = {}
subscribers: set[NotifyProtocol] = set()


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class DeviceProtocol(WebSocketServerProtocol):
    device_id = ""

    def onConnect(self, request: Any) -> str | None:
        token = request.headers.get("authorization", "").partition(" ")[2]
        self.device_id = token.split("-", 1)[0]
        return request.protocols[0] if request.protocols else None

    def onOpen(self) -> None:
        self.calls: dict[int, Deferred[Any]] = {}
        self.next_id = 0
        self.version = 0
        devices[self.device_id] = self

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = json.loads(payload)
        method = frame.get("method")
        if method is None:
            d = self.calls.pop(frame.get("id"), None)
            if d is not None:
                d.callback(frame.get("result"))
            return
        if frame.get("id") is None:
            event = dumps({"name": "rpc.out." + method, "id": self.device_id,
                           "data": frame.get("params")}).encode()
            for subscriber in subscribers:
                subscriber.sendMessage(event)
            return
        result: Any = True
        if method == "Dash.Shadow.Update":
            self.version += 1
            result = {"version": self.version}
        reply = {"id": frame["id"], "result": result}
        if frame.get("src"):
            reply["dst"] = frame["src"]
        self.sendMessage(dumps(reply).encode())

    def call(self, method: str, params: Any) -> Deferred[Any]:
        self.next_id += 1
        d: Deferred[Any] = Deferred()
        self.calls[self.next_id] = d
        frame = {"id": self.next_id, "method": method}
        if params is not None:
            frame["params"] = params
        self.sendMessage(dumps(frame).encode())
        return d

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if devices.get(self.device_id) is self:
            del devices[self.device_id]


class NotifyProtocol(WebSocketServerProtocol):
    def onOpen(self) -> None:
        subscribers.add(self)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        subscribers.discard(self)


device_factory = WebSocketServerFactory()
device_factory.protocol = DeviceProtocol
notify_factory = WebSocketServerFactory()
notify_factory.protocol = NotifyProtocol


@app.route("/api/v2/rpc", branch=False)
def device_channel(request: Any) -> Any:
    return WebSocketResource(device_factory)


@app.route("/api/v2/notify", branch=False)
def notify_channel(request: Any) -> Any:
    return WebSocketResource(notify_factory)


@app.route("/api/v2/devices/<device_id>/rpc/<method>", methods=["GET", "POST"])
def rpc(request: Any, device_id: str, method: str) -> Any:
    request.setHeader(b"content-type", b"application/json")
    device = devices.get(device_id)
    if device is None:
        request.setResponseCode(503)
        return b'{"error":{"code":503,"message":"offline"}}'
    params = json.loads(request.content.read() or b"null") if request.method == b"POST" else None
    return device.call(method, params).addCallback(lambda result: dumps(result).encode())


@app.route("/stats", methods=["GET"])
def stats(request: Any) -> bytes:
    return dumps({"online": len(devices), "subscribers": len(subscribers)}).encode()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.baseline")
    p.add_argument("--port", type=int)
    p.add_argument("--endpoint", help="a Twisted endpoint to listen on instead (e.g. ssl:...)")
    p.add_argument("--interface", default="127.0.0.1")
    p.add_argument("--backlog", type=int, default=50)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.endpoint:
        serverFromString(reactor, args.endpoint).listen(Site(app.resource()))
    elif args.port:
        reactor.listenTCP(args.port, Site(app.resource()), backlog=args.backlog,
                          interface=args.interface)
    else:
        p.error("--port or --endpoint")
    reactor.run()


if __name__ == "__main__":
    main()
