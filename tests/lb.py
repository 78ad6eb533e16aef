"""
A TCP load balancer for the cluster tests, in the test's own reactor: each
connection goes to the first backend that accepts it, starting from
C{prefer} (so a test decides where a device lands, and a dead node is
skipped like HAProxy skips a server that refuses connections).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint


class _Backend(protocol.Protocol):
    def __init__(self, front: _Front) -> None:
        self.front = front

    def connectionMade(self) -> None:
        self.front.backend_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.front.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.front.transport.loseConnection()


class _Front(protocol.Protocol):
    factory: Balancer

    def connectionMade(self) -> None:
        self.buffer: list[bytes] = []
        self.backend: _Backend | None = None
        self.transport.pauseProducing()
        self._try(list(self.factory.order()))

    def _try(self, ports: list[int]) -> None:
        if not ports:
            self.transport.loseConnection()
            return
        port, rest = ports[0], ports[1:]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: _Backend(self)))
        d.addErrback(lambda _: self._try(rest))

    def backend_ready(self, backend: _Backend) -> None:
        self.backend = backend
        self.factory.connections.append(backend.transport.getPeer().port)
        for chunk in self.buffer:
            backend.transport.write(chunk)
        self.buffer = []
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.backend is None:
            self.buffer.append(data)
        else:
            self.backend.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.backend is not None:
            self.backend.transport.loseConnection()


class Balancer(protocol.Factory):
    protocol = _Front

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.prefer = 0
        # The backend port of every connection made, in order.
        self.connections: list[int] = []
        self.listening: Any = None

    def order(self) -> list[int]:
        return self.ports[self.prefer:] + self.ports[: self.prefer]

    def listen(self) -> int:
        self.listening = reactor.listenTCP(0, self, interface="127.0.0.1")
        return self.listening.getHost().port

    def stop(self) -> Any:
        return self.listening.stopListening()
