"""
Domain errors: every kind crosses the wire (between cluster nodes, over the
control socket) as itself, and the REST API answers each with one status.
"""

from __future__ import annotations

import pytest
from twisted.python.failure import Failure

from dashd.api import status
from dashd.domain import errors


def test_every_kind_crosses_the_wire_as_itself():
    for name, cls in errors.KINDS.items():
        if cls is errors.DeviceFailed:
            error = errors.DeviceFailed("no such pin", -32602)
        elif issubclass(cls, errors.Invalid):
            error = cls("bad", field="name")
        else:
            error = cls("why", retry_after=3.0) if cls is errors.Busy else cls("why")
        back = errors.from_wire(errors.to_wire(error))
        assert type(back) is cls and back.message == error.message, name
        assert back.retry_after == error.retry_after
        if cls is errors.DeviceFailed:
            assert back.code == -32602
        if issubclass(cls, errors.Invalid):
            assert back.field == "name"


def test_a_subclass_travels_as_its_kind():
    class StaleVersion(errors.Conflict):
        pass

    wire = errors.to_wire(StaleVersion("stale"))
    assert wire == {"kind": "Conflict", "message": "stale"}


@pytest.mark.parametrize("value", [None, 3, {"kind": "NoSuchKind", "message": "x"},
                                   {"kind": "DeviceFailed", "message": "x", "code": "9"},
                                   {"kind": "Busy", "message": "x", "retry_after": True}])
def test_what_cannot_be_read_is_internal_or_keeps_its_kind(value):
    error = errors.from_wire(value)
    if isinstance(value, dict) and value["kind"] == "DeviceFailed":
        assert (type(error), error.code) == (errors.DeviceFailed, -32000)
    elif isinstance(value, dict) and value["kind"] == "Busy":
        assert (type(error), error.retry_after) == (errors.Busy, None)
    else:
        assert type(error) is errors.Internal


def test_every_kind_has_its_status():
    expected = {
        "Invalid": 400, "Unsupported": 415, "Unauthenticated": 401, "Forbidden": 403,
        "NotFound": 404, "Conflict": 409, "LastAdminKey": 409, "TooLarge": 413, "Busy": 429,
        "Offline": 503, "Stalled": 503, "Unavailable": 503, "TimedOut": 504,
        "DeviceFailed": 502, "Internal": 500,
    }
    assert set(expected) == set(errors.KINDS)
    for name, code in expected.items():
        cls = errors.KINDS[name]
        error = cls("x", -1) if cls is errors.DeviceFailed else cls("x")
        assert status.status_of(error) == code, name


class _Request:
    def __init__(self) -> None:
        self.code = None
        self.headers: dict[str, str] = {}
        self.path = b"/api/v2/x"
        self.method = b"GET"

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name, value) -> None:
        name = name.decode() if isinstance(name, bytes) else name
        value = value.decode() if isinstance(value, bytes) else value
        self.headers[name.lower()] = value


def test_answers_carry_their_headers_and_the_device_s_code():
    request = _Request()
    body = status.render(request, Failure(errors.Busy("slow down", retry_after=2.2)))
    assert (request.code, request.headers["retry-after"]) == (429, "3")
    assert body == b'{"error":{"code":429,"message":"slow down"}}\n'
    request = _Request()
    status.render(request, Failure(errors.Unauthenticated("who?")))
    assert request.headers["www-authenticate"] == 'Bearer realm="dashd"'
    request = _Request()
    body = status.render(request, Failure(errors.DeviceFailed("bad pin", -32602)))
    assert (request.code, body) == (502, b'{"error":{"code":-32602,"message":"bad pin"}}\n')
