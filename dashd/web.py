"""
The HTTP side shared by every route: a Site whose requests refuse bodies
over the size limit before reading them, give up on clients too slow to
send a request, carry the security headers a dashboard needs, answer CORS
only for configured origins, and whose access log never shows a secret.
"""

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

access_log = Logger(namespace="dashd.access")

_SECRET_IN_QUERY = re.compile(rb"(access_token=)[^&]*", re.IGNORECASE)

# Sent with every response. The API answers JSON only; the dashboard's
# pages load scripts and styles from dashd itself and nowhere else.
SECURITY_HEADERS = {
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"X-Frame-Options": b"DENY",
    b"Content-Security-Policy": b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
}
CORS_ALLOW_HEADERS = b"Authorization, Content-Type"
CORS_ALLOW_METHODS = b"GET, POST, DELETE"


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _error_bytes(code: int, message: str) -> bytes:
    return json_bytes({"error": {"code": code, "message": message}}) + b"\n"


class DashdRequest(Request):
    """
    A request that keeps its body in memory (it is bounded), answers 413 as
    soon as the headers (or the chunks received so far) show that the body is
    over the limit, without reading the rest, and 408 if the whole request
    has not arrived within the request timeout.
    """

    _refused = False
    _received = 0
    _deadline: Any = None

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        site = getattr(channel, "site", None)
        if site is not None:
            # Created when the request line arrives; the clock runs from there.
            self._deadline = site.reactor.callLater(site.request_timeout, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(408, b"Request Timeout",
                     "the request was not complete within %g s" % self.channel.site.request_timeout)

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()
        limit = self.channel.site.max_body_bytes
        if length is not None and length > limit:
            self._refuse_too_large(limit)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        limit = self.channel.site.max_body_bytes
        if self._received > limit:
            self._refuse_too_large(limit)
            return
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._cancel_deadline()
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def _refuse_too_large(self, limit: int) -> None:
        self._refuse(413, b"Request Entity Too Large",
                     "the request body is larger than %d bytes" % limit)

    def _refuse(self, code: int, phrase: bytes, message: str, headers: bytes = b"") -> None:
        """Answer with a JSON error and close, bypassing the resource tree
        (before the request is complete, or while dashd stops)."""
        self._cancel_deadline()
        if self._refused:
            return
        self._refused = True
        self.content = BytesIO()
        body = _error_bytes(code, message)
        transport = self.channel.transport
        if transport is None:
            return
        transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n%s"
            b"Connection: close\r\n\r\n" % (code, phrase, len(body), headers) + body
        )
        transport.loseConnection()

    def process(self) -> None:
        site = self.channel.site
        if site.draining:
            # dashd is stopping: no new work on a kept-alive connection.
            self._refuse(503, b"Service Unavailable", "dashd is shutting down; retry shortly",
                         b"Retry-After: 5\r\n")
            return
        if (self.getHeader(b"upgrade") or b"").lower() != b"websocket":
            # A WebSocket handshake becomes a connection of its own; every
            # other request is work in flight until its answer is written.
            site.started(self)
            self.notifyFinish().addBoth(lambda _: site.finished(self))
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        origin = self.getHeader(b"origin")
        if origin is not None and origin.decode("latin-1") in self.channel.site.cors_origins:
            self.setHeader(b"Access-Control-Allow-Origin", origin)
            self.setHeader(b"Vary", b"Origin")
            if self.method == b"OPTIONS":
                # A preflight: answer it here, whatever the route.
                self.setHeader(b"Access-Control-Allow-Methods", CORS_ALLOW_METHODS)
                self.setHeader(b"Access-Control-Allow-Headers", CORS_ALLOW_HEADERS)
                self.setHeader(b"Access-Control-Max-Age", b"600")
                self.setResponseCode(204)
                self.finish()
                return
        super().process()


class _MaskedRequest:
    """What the access log sees of a request: the same, minus secrets."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self.uri = _SECRET_IN_QUERY.sub(rb"\1***", request.uri)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def masked_log_formatter(timestamp: str, request: Request) -> str:
    return combinedLogFormatter(timestamp, _MaskedRequest(request))  # type: ignore[arg-type]


class DashdSite(Site):
    requestFactory = DashdRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        max_body_bytes: int,
        idle_timeout: float,
        access_log: bool,
        request_timeout: float = 30.0,
        cors_origins: list[str] | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__(
            resource, timeout=idle_timeout, logFormatter=masked_log_formatter, reactor=reactor
        )
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.cors_origins = frozenset(cors_origins or ())
        self._access_log = access_log
        # Set when dashd begins to stop: requests still arriving on open
        # connections get 503; those in flight are let finish.
        self.draining = False
        self.in_flight: set[Request] = set()
        self._idle_waiters: list[Deferred[None]] = []
        # Called with each finished request (for metrics).
        self.request_observers: list[Callable[[Request], None]] = []

    def started(self, request: Request) -> None:
        self.in_flight.add(request)

    def finished(self, request: Request) -> None:
        self.in_flight.discard(request)
        if not self.in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def idle(self) -> Deferred[None]:
        """Fire once no request is in flight."""
        if not self.in_flight:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def log(self, request: Request) -> None:
        for observer in self.request_observers:
            observer(request)
        if self._access_log:
            line = self._logFormatter(self._logDateTime, request)
            access_log.info("{line}", line=line)
