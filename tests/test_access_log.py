"""
The access log (http.access_log = true) writes the lines of one reactor
turn as one log event, and masks secrets. Unit tests of DashdSite.log with
a fake clock and stand-in requests; the end-to-end side (a real request's
line, masked, in dashd's log) is in test_rest and test_systemd.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.web.resource import Resource

from dashd.api import site as web


class _Request:
    """What the combined log formatter reads of a finished request."""

    def __init__(self, uri: bytes, code: int = 200) -> None:
        self.uri = uri
        self.method = b"GET"
        self.clientproto = b"HTTP/1.1"
        self.code = code
        self.sentLength = 12

    def getClientAddress(self) -> IPv4Address:
        return IPv4Address("TCP", "192.0.2.7", 50000)

    def getHeader(self, name: bytes) -> bytes | None:
        return None


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(web, "access_log", Logger(namespace="dashd.access", observer=seen.append))
    return seen


def _site(clock: Clock, access_log: bool = True) -> web.DashdSite:
    site = web.DashdSite(Resource(), max_body_bytes=1024, idle_timeout=60,
                         access_log=access_log, reactor=clock)
    site.startFactory()
    return site


def _lines(events: list[dict[str, Any]]) -> list[list[str]]:
    return [e["lines"].split("\n") for e in events]


def test_the_lines_of_one_turn_are_one_event(events):
    clock = Clock()
    site = _site(clock)
    for i in range(3):
        site.log(_Request(b"/api/v2/devices/d%d" % i))
    assert events == []  # nothing until the turn ends
    clock.advance(0)
    (lines,) = _lines(events)
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith('"192.0.2.7" - - [')
        assert '"GET /api/v2/devices/d%d HTTP/1.1" 200 12' % i in line
    site.log(_Request(b"/next", 404))
    clock.advance(0)
    assert len(events) == 2 and '"GET /next HTTP/1.1" 404' in events[1]["lines"]
    site.stopFactory()


def test_a_full_batch_goes_at_once_and_stopping_writes_the_rest(events):
    clock = Clock()
    site = _site(clock)
    for i in range(web.ACCESS_LOG_BATCH + 5):
        site.log(_Request(b"/r%d" % i))
    # The first batch did not wait for the end of the turn.
    assert [len(lines) for lines in _lines(events)] == [web.ACCESS_LOG_BATCH]
    site.stopFactory()
    assert [len(lines) for lines in _lines(events)] == [web.ACCESS_LOG_BATCH, 5]
    clock.advance(0)
    assert len(events) == 2  # nothing written twice


def test_secrets_are_masked_and_off_means_nothing(events):
    clock = Clock()
    site = _site(clock)
    site.log(_Request(b"/api/v2/devices?access_token=k1.secret&x=1"))
    clock.advance(0)
    (lines,) = _lines(events)
    assert "access_token=***" in lines[0] and "secret" not in lines[0]
    site.stopFactory()

    # However the name is spelt for twisted.web to read it as access_token,
    # and the one-time tickets of the notification stream and firmware links.
    for uri in (b"/api/v2/devices?access%5Ftoken=k1.secret", b"/x?a=1;%61ccess_token=k1.secret",
                b"/api/v2/devices?ACCESS_TOKEN=k1.secret", b"/api/v2/notify?ticket=k1.secret",
                b"/api/v2/%66irmware/k1.secret", b"/api/v2/firmware/k1.secret?x=1"):
        site = _site(clock)
        site.log(_Request(uri))
        clock.advance(0)
        line = _lines(events)[-1][0]
        assert "k1.secret" not in line and "***" in line, (uri, line)
        site.stopFactory()
    # And in the Referer.
    site = _site(clock)
    request = _Request(b"/api/v2/devices")
    request.getHeader = lambda name: (b"https://x/?access%5Ftoken=k1.secret"  # type: ignore
                                      if name == b"referer" else None)
    site.log(request)
    clock.advance(0)
    line = _lines(events)[-1][0]
    assert "k1.secret" not in line and "access%5Ftoken=***" in line, line
    site.stopFactory()
    count = len(events)

    quiet = _site(clock, access_log=False)
    quiet.log(_Request(b"/api/v2/devices"))
    clock.advance(0)
    quiet.stopFactory()
    assert len(events) == count
