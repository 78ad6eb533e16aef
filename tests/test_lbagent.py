"""
The load balancer's agent (L{dashd.ops.lbagent}) on a Clock: its one line
for each state of the node, and /readyz's reasons, which it shares.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from dashd.ops.lbagent import DEGRADED, DRAIN, READY, AgentFactory
from dashd.ops.lifecycle import Readiness
from dashd.store import StoreUnreachable


def answer(readiness: Readiness, ping, clock: Clock | None = None) -> bytes:
    clock = clock or Clock()
    proto = AgentFactory(readiness, ping, clock).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    clock.advance(3)
    assert transport.disconnecting
    return transport.value()


def serving() -> Readiness:
    r = Readiness()
    r.state = "serving"
    return r


def test_ready_when_serving_and_the_store_answers():
    assert answer(serving(), lambda: succeed(None)) == READY == b"up ready 100%\n"


def test_degraded_while_the_database_or_redis_is_away():
    down = lambda: fail(StoreUnreachable("the database is unreachable: refused"))  # noqa: E731
    assert answer(serving(), down) == DEGRADED == b"up ready 1%\n"
    stuck = lambda: Deferred()  # noqa: E731  (never answers: the 2 s timeout)
    assert answer(serving(), stuck) == DEGRADED
    readiness = serving()
    readiness.checks.append(lambda: "Redis is unreachable")
    assert answer(readiness, lambda: succeed(None)) == DEGRADED


def test_drain_while_starting_or_stopping():
    assert answer(Readiness(), lambda: succeed(None)) == DRAIN == b"drain\n"
    stopping = serving()
    stopping.state = "stopping"
    assert answer(stopping, lambda: succeed(None)) == DRAIN
