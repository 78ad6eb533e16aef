"""
The one table from errors to HTTP answers, used by Klein's error handler
and by the door (L{dashd.api.door}) alike: every failure a request ends in
is answered here as ``{"error": {"code": N, "message": "..."}}`` with the
status its kind of error maps to. ``code`` is the HTTP status, except for
L{DeviceFailed}, which passes the device's own JSON-RPC code on.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import HTTPException as WerkzeugHTTPException
from werkzeug.exceptions import MethodNotAllowed as NoSuchMethod
from werkzeug.exceptions import NotFound as NoSuchRoute

from dashd.api.site import json_bytes
from dashd.domain import errors

log = Logger()

# Looked up along the error's class hierarchy: the most specific entry wins.
STATUS: dict[type[errors.DomainError], int] = {
    errors.Invalid: 400,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.Unsupported: 415,
    errors.Busy: 429,
    errors.Internal: 500,
    errors.DeviceFailed: 502,
    errors.Offline: 503,
    errors.Stalled: 503,
    errors.Unavailable: 503,
    errors.TimedOut: 504,
}


class HttpError(Exception):
    """What only HTTP knows of: a route or method that does not exist."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def status_of(error: errors.DomainError) -> int:
    for cls in type(error).__mro__:
        status = STATUS.get(cls)  # type: ignore[arg-type]
        if status is not None:
            return status
    return 500


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1."""
    return str(max(1, int(math.ceil(seconds))))


def answer(error: errors.DomainError | HttpError) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The status, headers and body that answer C{error}."""
    if isinstance(error, HttpError):
        return error.status, error.headers, {"error": {"code": error.status,
                                                       "message": error.message}}
    status = status_of(error)
    headers: dict[str, str] = {}
    if isinstance(error, errors.Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="dashd"'
    if error.retry_after is not None:
        headers["Retry-After"] = retry_after(error.retry_after)
    code = error.code if isinstance(error, errors.DeviceFailed) else status
    return status, headers, {"error": {"code": code, "message": error.message}}


def render(request: Any, failure: Failure) -> bytes | None:
    """Answer C{request} for C{failure}: the body to write, or None if the
    client went away (the request was cancelled)."""
    if failure.check(CancelledError):
        return None
    error = failure.value
    if isinstance(error, NoSuchRoute):
        path = request.path.decode("latin-1", "replace")
        error = HttpError(404, "no such route: %s" % path)
    elif isinstance(error, NoSuchMethod):
        allowed = getattr(error, "valid_methods", None)
        error = HttpError(
            405,
            "%s is not allowed on %s"
            % (request.method.decode("latin-1"), request.path.decode("latin-1", "replace")),
            {"Allow": ", ".join(allowed)} if allowed else None,
        )
    elif isinstance(error, WerkzeugHTTPException):
        # Another answer of the URL map (a redirect to a canonical path, say):
        # no such route, as far as the API is concerned.
        path = request.path.decode("latin-1", "replace")
        if error.code is not None and 400 <= error.code < 500 and error.code != 404:
            error = HttpError(error.code, "%s: %s" % (error.name, path))
        else:
            error = HttpError(404, "no such route: %s" % path)
    elif not isinstance(error, (errors.DomainError, HttpError)):
        log.failure("unhandled error on {uri}", failure, uri=request.path)
        error = errors.Internal("internal error")
    status, headers, body = answer(error)
    # For the audit log, once the request is answered.
    request.dashd_error = error.message
    request.setResponseCode(status)
    for name, value in headers.items():
        request.setHeader(name, value)
    request.setHeader(b"content-type", b"application/json")
    return json_bytes(body) + b"\n"
