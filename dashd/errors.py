"""
The errors a REST client can see. Each maps to one HTTP status and renders
as ``{"error": {"code": N, "message": "..."}}``; ``code`` is the HTTP status,
except for L{DeviceError}, which passes the device's own JSON-RPC code on.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 500

    def __init__(self, message: str, code: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.code = self.status if code is None else code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401

    def __init__(self, message: str):
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="dashd"'})


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class Conflict(ApiError):
    status = 409


class TooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class TooManyRequests(ApiError):
    status = 429

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class InternalError(ApiError):
    status = 500


class DeviceError(ApiError):
    """The device answered with a JSON-RPC error."""

    status = 502


class DeviceOffline(ApiError):
    status = 503


class ServiceUnavailable(ApiError):
    status = 503


class DeviceTimeout(ApiError):
    status = 504
