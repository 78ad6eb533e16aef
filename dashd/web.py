"""
The HTTP side shared by every route: a Site whose requests refuse bodies
over the size limit before reading them, whose access log never shows a
secret, and which answers every error as JSON.
"""

from __future__ import annotations

import json
import re
from io import BytesIO
from typing import Any

from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

access_log = Logger(namespace="dashd.access")

_SECRET_IN_QUERY = re.compile(rb"(access_token=)[^&]*", re.IGNORECASE)


# json.dumps with options builds a new encoder each call; this one is reused.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def json_bytes(value: Any) -> bytes:
    return _encode(value).encode("utf-8")


class DashdRequest(Request):
    """
    A request that keeps its body in memory (it is bounded) and answers 413
    as soon as the headers (or the chunks received so far) show that the body
    is over the limit, without reading the rest of it.
    """

    _refused = False
    _received = 0

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
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse_too_large(self, limit: int) -> None:
        self._refused = True
        self.content = BytesIO()
        body = json_bytes(
            {"error": {"code": 413, "message": "the request body is larger than %d bytes" % limit}}
        ) + b"\n"
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % len(body) + body
        )
        transport.loseConnection()


class _MaskedRequest:
    """What the access log sees of a request: the same, minus secrets."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self.uri = _SECRET_IN_QUERY.sub(rb"\1***", request.uri)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def masked_log_formatter(timestamp: str, request: Request) -> str:
    if _SECRET_IN_QUERY.search(request.uri) is None:
        # Nothing to mask (the usual case): no wrapper in the way.
        return combinedLogFormatter(timestamp, request)
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
        reactor: Any = None,
    ) -> None:
        super().__init__(
            resource, timeout=idle_timeout, logFormatter=masked_log_formatter, reactor=reactor
        )
        self.max_body_bytes = max_body_bytes
        self._access_log = access_log

    def log(self, request: Request) -> None:
        if self._access_log:
            line = self._logFormatter(self._logDateTime, request)
            access_log.info("{line}", line=line)
