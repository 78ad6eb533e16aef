"""
The HTTP side shared by every route: a Site whose requests refuse bodies
over the size limit before reading them, give up on clients too slow to
send a request, carry the security headers a dashboard needs, answer CORS
only for configured origins, and whose access log never shows a secret.

Bodies are small and kept in memory, except on the routes a L{SpoolRule}
names (the firmware upload): there the size limit and the time limit are
the rule's, and the body is written to a file in the rule's directory as it
arrives, chunk by chunk as twisted.web delivers it; a
``multipart/form-data`` body is parsed as it streams (with the
``multipart`` package's push parser), so that only the file part lands in
the file. The route finds it as C{request.upload}; the file is deleted when
the request ends unless the route L{Upload.claim}s it.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

import multipart
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.http import (
    RESPONSES,
    HTTPChannel,
    _GenericHTTPChannelProtocol,
    combinedLogFormatter,
    parse_qs,
)
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from dashd.batching import TurnBatch
from dashd.jsontext import compact

access_log = Logger(namespace="dashd.access")
# Access log lines written as one event at most (see DashdSite.log).
ACCESS_LOG_BATCH = 100
log = Logger()

# Query arguments that are secrets (as their names read percent-decoded, the
# way twisted.web reads them: access%5Ftoken is access_token), and the path of
# one-time firmware download links (dashd.app.firmware), a secret too.
SECRET_ARGS = (b"access_token", b"ticket")
_FIRMWARE_PATH = b"/api/v2/firmware/"
_QUERY_SEPARATOR = re.compile(rb"([&;])")

# What a multipart body may hold besides its file: a few short fields.
MAX_FORM_FIELDS = 8
MAX_FIELD_BYTES = 1024


@dataclass(frozen=True)
class Refusal:
    """How a L{SpoolRule}'s gate refuses a request: the status, the message
    and any headers of its answer."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SpoolRule:
    """Requests with this method whose path matches C{path} may send bodies
    of up to C{max_bytes}, in up to C{timeout} seconds from their first
    line, which are written to a file in C{directory}.

    C{gate}, given the request once its headers are in, decides whether its
    body is taken at all: it fires with None (go on) or a L{Refusal}, and
    until it has, nothing more is read from the client and no file exists
    (the authentication and the checks of the route, made from the headers,
    so that nobody can make dashd write to its disk without the right to)."""

    method: bytes
    path: re.Pattern[bytes]
    max_bytes: int
    directory: str
    # Seconds the whole request may take (instead of http.request_timeout).
    timeout: float
    gate: Callable[[Any], Deferred[Refusal | None]] | None = None


@dataclass
class Upload:
    """
    The body of a spooled request, on disk: the raw body, or the file part of
    a multipart body (the part named C{file}, or else the first with a file
    name). C{error} says why it is unusable (a malformed multipart body, no
    file part); C{fields} holds the other (short) form fields.
    """

    path: str
    size: int = 0
    filename: str | None = None
    content_type: str | None = None
    multipart: bool = False
    fields: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    claimed: bool = False

    def claim(self) -> str:
        """Take the file over: the caller now deletes it."""
        self.claimed = True
        return self.path

    def discard(self) -> None:
        if not self.claimed:
            self.claimed = True
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warn("could not delete upload {path}: {error}", path=self.path, error=e)


class _Spool:
    """Writes a request body to a file as it arrives, parsing multipart."""

    def __init__(self, directory: str, content_type: bytes | None) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=directory)
        self._file = os.fdopen(fd, "wb")
        self.upload = Upload(path=path)
        self._parser: multipart.PushMultipartParser | None = None
        self._target: str | None = None  # "file", "field" or None (skip)
        self._field_name = ""
        self._field = bytearray()
        ctype, options = multipart.parse_options_header(
            (content_type or b"").decode("latin-1")
        )
        if ctype == "multipart/form-data":
            self.upload.multipart = True
            boundary = options.get("boundary")
            if not boundary:
                self.upload.error = "the multipart body has no boundary"
            else:
                self._parser = multipart.PushMultipartParser(
                    boundary, max_segment_count=MAX_FORM_FIELDS + 1
                )
        else:
            self.upload.content_type = ctype or None

    def feed(self, data: bytes) -> None:
        if self.upload.error is not None:
            return
        if self._parser is None:
            self._write(data)
            return
        try:
            for event in self._parser.parse(data):
                self._event(event)
        except multipart.MultipartError as e:
            self.upload.error = "the multipart body is malformed: %s" % e

    def _event(self, event: Any) -> None:
        if isinstance(event, multipart.MultipartSegment):
            is_file = event.name == "file" or event.filename is not None
            if is_file and self.upload.filename is None and self._target != "done":
                self._target = "file"
                self.upload.filename = event.filename or "file"
                self.upload.content_type = event.content_type or None
            elif not is_file and len(self.upload.fields) < MAX_FORM_FIELDS:
                self._target = "field"
                self._field_name = event.name
                self._field = bytearray()
            else:
                self._target = None
        elif event is None:
            if self._target == "field":
                self.upload.fields[self._field_name] = self._field.decode("utf-8", "replace")
            self._target = None
        elif self._target == "file":
            self._write(event)
        elif self._target == "field" and len(self._field) + len(event) <= MAX_FIELD_BYTES:
            self._field += event

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self.upload.size += len(data)

    def finish(self) -> Upload:
        if self._parser is not None and self.upload.error is None:
            try:
                self._parser.close()
            except multipart.MultipartError as e:
                self.upload.error = "the multipart body is malformed: %s" % e
            if self.upload.error is None and self.upload.filename is None:
                self.upload.error = (
                    "the multipart body has no file part (send it as -F file=@FILE)"
                )
        self._file.close()
        return self.upload

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.upload.discard()



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
    return compact(value).encode("utf-8")


def _error_bytes(code: int, message: str) -> bytes:
    return json_bytes({"error": {"code": code, "message": message}}) + b"\n"


class DashdRequest(Request):
    """
    A request that keeps its body in memory (it is bounded), answers 413 as
    soon as the headers (or the chunks received so far) show that the body is
    over the limit, without reading the rest, and 408 if the whole request
    has not arrived within the request timeout. On the routes of a
    L{SpoolRule} the limits are the rule's and the body goes to a file
    (C{self.upload}); C{self.content} is then empty.

    Bodies are never parsed as forms into C{args} (twisted.web would read a
    whole multipart body into memory to do so).
    """

    _refused = False
    _received = 0
    _deadline: Any = None
    _started: float | None = None
    # Received whole (requestReceived ran): no deadline any more.
    _complete = False
    _spool: _Spool | None = None
    _rule: SpoolRule | None = None
    upload: Upload | None = None
    # While a SpoolRule's gate decides: the body chunks read meanwhile (the
    # client is not read from), a complete request's line, and whether the
    # client waits for 100 Continue.
    _gated: list[bytes] | None = None
    _received_line: tuple[bytes, bytes, bytes] | None = None
    continue_wanted = False

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kwargs)
        site = getattr(channel, "site", None)
        if site is not None:
            # Created when the request line arrives; the clock runs from there.
            # Its timer is set only if the request is not whole once the
            # channel has taken in what it read (arm_deadline): most arrive
            # whole in one read, and a timer set and cancelled at once was
            # work on every request.
            self._started = site.reactor.seconds()

    def arm_deadline(self) -> None:
        """Set the request's timer (C{http.request_timeout} from its first
        line) if it is still being received and has none yet."""
        if self._deadline is not None or self._complete or self._refused \
                or self._started is None:
            return
        channel = getattr(self, "channel", None)
        site = getattr(channel, "site", None)
        if site is None:
            return
        left = site.request_timeout - (site.reactor.seconds() - self._started)
        if left <= 0:
            self._too_slow()
            return
        self._deadline = site.reactor.callLater(left, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self, timeout: float | None = None) -> None:
        self._deadline = None
        if timeout is None:
            timeout = self.channel.site.request_timeout
        self._refuse(408, b"Request Timeout",
                     "the request was not complete within %g s" % timeout)

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()
        site = self.channel.site
        # The request line is known by now, but Request learns it only once
        # the body is in (requestReceived); HTTPChannel keeps it meanwhile.
        uri = getattr(self.channel, "_path", b"")
        rule = site.spool_rule(getattr(self.channel, "_command", b""), uri)
        self._limit = site.max_body_bytes if rule is None else rule.max_bytes
        if length is not None and length > self._limit:
            self._refuse_too_large(self._limit)
            return
        if rule is None:
            return
        self._rule = rule
        # A large upload takes longer than a small request; both count from
        # the request's first line.
        self._cancel_deadline()
        left = rule.timeout - (site.reactor.seconds() - self._started)
        if left <= 0:
            self._too_slow(rule.timeout)
            return
        self._deadline = site.reactor.callLater(left, self._too_slow, rule.timeout)
        if rule.gate is None:
            self._start_spool()
            return
        # The gate sees the request line as the route will (Request learns
        # it only in requestReceived, once the body is in).
        self.method = getattr(self.channel, "_command", b"")
        self.uri = uri
        self.path, _, query = uri.partition(b"?")
        self.args = parse_qs(query, 1) if query else {}
        # Read nothing more from the client (what came with the headers is
        # held in memory: at most one read) until the gate has decided.
        self._gated = []
        self.channel.transport.pauseProducing()
        try:
            d = rule.gate(self)
        except Exception:
            log.failure("the gate of {path}", path=uri)
            self._refuse(500, b"Internal Server Error", "internal error")
            return
        d.addCallback(self._gate_decided)
        d.addErrback(self._gate_failed)

    def _gate_decided(self, refusal: Refusal | None) -> None:
        if self._refused or self._gated is None or self.channel is None \
                or self.channel.transport is None:
            return  # refused meanwhile (too slow, too large), or the client left
        if refusal is not None:
            self._refuse(refusal.status, RESPONSES.get(refusal.status, b"Error"),
                         refusal.message,
                         b"".join(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1"))
                                  for k, v in refusal.headers.items()))
            # Answered like any request: counted, audited, in the access log.
            self.code = refusal.status
            self.clientproto = getattr(self.channel, "_version", b"HTTP/1.1")
            self.channel.site.log(self)
            return
        held, self._gated = self._gated, None
        if not self._start_spool():
            return
        for data in held:
            self._take(data)
            if self._refused:
                return
        transport = self.channel.transport
        transport.resumeProducing()
        if self._received_line is not None:
            line, self._received_line = self._received_line, None
            self.requestReceived(*line)
        elif self.continue_wanted:
            self.continue_wanted = False
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _gate_failed(self, failure: Any) -> None:
        log.failure("the gate of an upload", failure)
        self._gate_decided(Refusal(500, "internal error"))

    def _start_spool(self) -> bool:
        rule = self._rule
        assert rule is not None
        try:
            self._spool = _Spool(rule.directory, self.requestHeaders.getRawHeaders(
                b"content-type", [None])[0])
        except OSError as e:
            log.error("cannot store an upload in {dir}: {error}", dir=rule.directory, error=e)
            self._refuse(507, b"Insufficient Storage", "the server cannot store the upload")
            return False
        # Whatever happens to the request, an unclaimed file goes.
        self.notifyFinish().addBoth(self._discard_upload)
        return True

    def _discard_upload(self, _: Any) -> None:
        if self._spool is not None:
            self._spool.abort()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._refuse_too_large(self._limit)
            return
        if self._gated is not None:
            self._gated.append(data)
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        if self._spool is not None:
            try:
                self._spool.feed(data)
            except OSError as e:
                log.error("cannot store an upload: {error}", error=e)
                self._refuse(507, b"Insufficient Storage", "the server cannot store the upload")
            return
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            self._complete = True
            self._cancel_deadline()
            return
        if self._gated is not None:
            # All of it came with the headers: answered once the gate has
            # decided.
            self._received_line = (command, path, version)
            return
        self._complete = True
        self._cancel_deadline()
        if self._spool is not None:
            try:
                self.upload = self._spool.finish()
            except OSError as e:
                log.error("cannot store an upload: {error}", error=e)
                self._refuse(507, b"Insufficient Storage", "the server cannot store the upload")
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
        if self._spool is not None:
            self._spool.abort()
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

    def _handleStar(self) -> None:
        """``*`` as a path (the asterisk form): OPTIONS gets an empty 200, as
        twisted.web answers it; anything else a 405 that says why."""
        if self.method == b"OPTIONS":
            self.setResponseCode(200)
            self.finish()
            return
        self.setResponseCode(405)
        self.setHeader(b"Allow", b"OPTIONS")
        self.setHeader(b"Content-Type", b"application/json")
        self.write(_error_bytes(405, "only OPTIONS may be sent to *"))
        self.finish()

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


class DashdHTTPChannel(HTTPChannel):
    """HTTP/1.1 as twisted.web speaks it, except that a client waiting for
    C{100 Continue} before it sends an upload's body gets it only once the
    upload's gate (L{SpoolRule}) has let it in, that what twisted.web
    refuses as malformed gets a JSON body saying so, and that a request line
    or headers over its limits get 414 or 431."""

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._answer_and_close(400, b"Bad Request", "malformed HTTP request")

    def _too_long(self) -> None:
        """The request line, or the headers, are over twisted.web's limits
        (a line of LineReceiver.MAX_LENGTH, totalHeadersSize in all): say
        which, rather than drop the connection or answer a bare 400."""
        if getattr(self, "_HTTPChannel__first_line", 0):
            self._answer_and_close(414, b"URI Too Long",
                                   "the request line is longer than %d bytes"
                                   % min(self.MAX_LENGTH, self.totalHeadersSize))
        else:
            self._answer_and_close(431, b"Request Header Fields Too Large",
                                   "the request's headers are larger than %d bytes"
                                   % self.totalHeadersSize)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        # The request still being received, if any, gets its timer now.
        requests = self.requests
        if requests:
            arm = getattr(requests[-1], "arm_deadline", None)
            if arm is not None:
                arm()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._too_long()

    def lineReceived(self, line: bytes) -> None:
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._too_long()
            return
        super().lineReceived(line)

    def _answer_and_close(self, code: int, phrase: bytes, message: str) -> None:
        transport = self.transport
        if transport is None:
            return
        body = _error_bytes(code, message)
        transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                        % (code, phrase, len(body), body))
        self.loseConnection()

    def _send100Continue(self) -> None:
        request = self.requests[-1] if self.requests else None
        if request is not None and getattr(request, "_gated", None) is not None:
            request.continue_wanted = True
            return
        super()._send100Continue()


def _dashd_channel(factory: Any) -> _GenericHTTPChannelProtocol:
    return _GenericHTTPChannelProtocol(DashdHTTPChannel())


def masked_uri(uri: bytes) -> bytes | None:
    """C{uri} with its secrets (L{SECRET_ARGS}, a firmware link) masked, or
    None if it holds none."""
    path, sep, query = uri.partition(b"?")
    changed = False
    decoded = unquote_to_bytes(path) if b"%" in path else path
    if decoded.startswith(_FIRMWARE_PATH) and len(decoded) > len(_FIRMWARE_PATH):
        path = _FIRMWARE_PATH + b"***"
        changed = True
    if query:
        parts = _QUERY_SEPARATOR.split(query)
        for i in range(0, len(parts), 2):
            name, eq, _ = parts[i].partition(b"=")
            if b"%" in name or b"+" in name:
                name = unquote_to_bytes(name.replace(b"+", b" "))
            if eq and name.lower() in SECRET_ARGS:
                parts[i] = parts[i].partition(b"=")[0] + b"=***"
                changed = True
        query = b"".join(parts)
    return path + sep + query if changed else None


class _MaskedRequest:
    """What the access log sees of a request: the same, minus secrets (in
    its URI and in its Referer)."""

    def __init__(self, request: Request, uri: bytes) -> None:
        self._request = request
        self.uri = uri

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            value = masked_uri(value) or value
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def masked_log_formatter(timestamp: str, request: Request) -> str:
    uri = masked_uri(request.uri) or request.uri
    referer = request.getHeader(b"referer")
    if uri is request.uri and (referer is None or masked_uri(referer) is None):
        # Nothing to mask (the usual case): no wrapper in the way.
        return combinedLogFormatter(timestamp, request)
    return combinedLogFormatter(timestamp, _MaskedRequest(request, uri))  # type: ignore[arg-type]


class DashdSite(Site):
    requestFactory = DashdRequest
    protocol = _dashd_channel
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
        spool_rules: list[SpoolRule] | None = None,
    ) -> None:
        super().__init__(
            resource, timeout=idle_timeout, logFormatter=masked_log_formatter, reactor=reactor
        )
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.cors_origins = frozenset(cors_origins or ())
        self._access_log = access_log
        # The lines of one reactor turn go out as one log event: an event
        # per request (its time formatted, the file written and flushed, or
        # a journald entry) cost more than the request.
        self._access_lines: TurnBatch[str] = TurnBatch(
            self.reactor, _write_access_lines, ACCESS_LOG_BATCH)
        # Set when dashd begins to stop: requests still arriving on open
        # connections get 503; those in flight are let finish.
        self.draining = False
        self.in_flight: set[Request] = set()
        self._idle_waiters: list[Deferred[None]] = []
        # Called with each finished request (metrics, the audit log).
        self.request_observers: list[Callable[[Request], None]] = []
        self.spool_rules = list(spool_rules or ())

    def spool_rule(self, method: bytes, uri: bytes) -> SpoolRule | None:
        path = uri.split(b"?", 1)[0]
        for rule in self.spool_rules:
            if rule.method == method and rule.path.match(path):
                return rule
        return None

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
            self._access_lines.add(self._logFormatter(self._logDateTime, request))

    def stopFactory(self) -> None:
        self._access_lines.flush()
        super().stopFactory()


def _write_access_lines(lines: list[str]) -> None:
    access_log.info("{lines}", lines="\n".join(lines))
