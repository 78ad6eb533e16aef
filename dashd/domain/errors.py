"""
The ways a use case can end without doing what was asked, whoever asked.

They carry no HTTP status: the REST API maps them to statuses in one table
(L{dashd.api.status}), dashctl prints their message, the device channel
answers them as JSON-RPC errors, and the cluster sends them between nodes
by kind (L{to_wire}, L{from_wire}) so that a call relayed through another
node ends in the same error as a local one.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """What went wrong, in C{message}, for the person who asked."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Seconds after which trying again makes sense (None: not said).
        self.retry_after = retry_after

    def wire_fields(self) -> dict[str, Any]:
        """What else than the message another node needs to rebuild it."""
        return {}


class Invalid(DomainError):
    """A value the caller gave is not acceptable; C{field} names it when
    there is one to name."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def wire_fields(self) -> dict[str, Any]:
        return {"field": self.field} if self.field else {}


class Unsupported(Invalid):
    """A kind of thing (a firmware file) that dashd does not know."""


class Unauthenticated(DomainError):
    """No credentials, or ones that open nothing (unknown, expired, a secret
    for the other door)."""


class Forbidden(DomainError):
    """The caller is known and may not do this."""


class NotFound(DomainError):
    """No such thing, or one the caller may not see: the two are answered
    alike, so that a caller learns nothing about what it may not see."""


class Conflict(DomainError):
    """The state does not allow it now (an update already running, a stale
    version)."""


class LastAdminKey(Conflict):
    """Revoking this key would lock its account out."""


class TooLarge(DomainError):
    """A document, body or message over its limit."""


class Busy(DomainError):
    """Too much at once: calls in flight, requests a second, failed
    authentications. C{retry_after} says when to try again."""


class Offline(DomainError):
    """The device is not connected (or went away before it answered)."""


class Stalled(DomainError):
    """The device does not read what is sent to it; no more calls until it
    does."""


class Unavailable(DomainError):
    """dashd cannot serve this now (its store is closed or behind, it is
    stopping)."""


class TimedOut(DomainError):
    """The device did not answer within the timeout."""


class DeviceFailed(DomainError):
    """The device answered with a JSON-RPC error: its C{code} and message."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    def wire_fields(self) -> dict[str, Any]:
        return {"code": self.code}


class Internal(DomainError):
    """A fault of dashd's own (logged where it happened)."""


KINDS: dict[str, type[DomainError]] = {
    cls.__name__: cls
    for cls in (
        Invalid, Unsupported, Unauthenticated, Forbidden, NotFound, Conflict, LastAdminKey,
        TooLarge, Busy, Offline, Stalled, Unavailable, TimedOut, DeviceFailed, Internal,
    )
}


def kind_of(error: DomainError) -> str:
    """The name another node or dashctl knows C{error} by: its own class
    if that is one of L{KINDS}, else the nearest one it derives from."""
    for cls in type(error).__mro__:
        if KINDS.get(cls.__name__) is cls:
            return cls.__name__
    return "Internal"


def to_wire(error: DomainError) -> dict[str, Any]:
    """C{error} as a JSON object: C{{"kind", "message", ...}}."""
    out: dict[str, Any] = {"kind": kind_of(error), "message": error.message}
    if error.retry_after is not None:
        out["retry_after"] = error.retry_after
    out.update(error.wire_fields())
    return out


def from_wire(value: Any) -> DomainError:
    """The error L{to_wire} described; anything unreadable is L{Internal}."""
    if not isinstance(value, dict):
        return Internal("internal error")
    cls = KINDS.get(str(value.get("kind")), Internal)
    message = str(value.get("message", "error"))
    error: DomainError
    if cls is DeviceFailed:
        code = value.get("code")
        error = DeviceFailed(message, code if isinstance(code, int) else -32000)
    elif issubclass(cls, Invalid):
        field = value.get("field")
        error = cls(message, field=field if isinstance(field, str) else None)
    else:
        error = cls(message)
    retry_after = value.get("retry_after")
    if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
        error.retry_after = float(retry_after)
    return error
