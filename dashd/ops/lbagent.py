"""
Readiness, and the load balancer's agent.

A node may be unfit for *new* devices while the ones it holds are fine: the
database is away (a new device cannot sign in, but the connected ones keep
being served from what the node holds), a cluster node lost Redis, dashd is
starting or draining. Cutting the node's connections then would turn a
database blip into a reconnect storm of the whole fleet. So there are two
answers, for two questions:

- "take new devices here?": ``/readyz`` (200, or 503 with the reason), and
  the same answer on the agent port for HAProxy's ``agent-check``: ``up
  ready 100%``; ``up ready 1%`` while the database or Redis is away (new
  devices go to the nodes that are fine, here only if none is; those open
  stay); ``drain`` while starting or stopping (no new connections);
- "is the process there at all?": the agent port answers at all (HAProxy's
  health check reads a line from it; a node that died or hangs does not
  answer, and only then are its connections cut: ``on-marked-down
  shutdown-sessions`` in ``etc/haproxy.cfg``).

The agent port (``lb.agent_listen``) answers one line and closes. It stays
open while dashd drains on SIGTERM (answering ``drain``), so the balancer
leaves the connections being drained alone; dashd closes them itself.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from dashd.domain.errors import DomainError

log = Logger()

STORE_PING_TIMEOUT = 2.0
# The agent's answers: serving; unfit for new devices but serving those it
# holds (1% of its weight: new devices go to the nodes that answer READY, or
# still here if none does, as in a database outage of the whole cluster);
# starting or stopping (no new connections at all).
READY = b"up ready 100%\n"
DEGRADED = b"up ready 1%\n"
DRAIN = b"drain\n"


async def why_not_ready(readiness: Any, ping: Callable[[], Deferred[Any]],
                        clock: Any) -> str | None:
    """Why this dashd should take no new devices now, or None."""
    if readiness is not None and not readiness.serving:
        return "dashd is %s" % readiness.state
    problem = readiness.problem() if readiness is not None else None
    if problem:
        return problem
    try:
        await ping().addTimeout(STORE_PING_TIMEOUT, clock)
    except TimeoutError:
        return "the store did not answer within %gs" % STORE_PING_TIMEOUT
    except DomainError as e:  # the store's StoreError: unreachable, closed...
        return e.message
    return None


class _Agent(Protocol):
    factory: AgentFactory

    def connectionMade(self) -> None:
        d = ensureDeferred(why_not_ready(self.factory.readiness, self.factory.ping,
                                         self.factory.clock))
        d.addCallbacks(self._answer, self._failed)

    def _answer(self, why: str | None) -> None:
        if self.transport is None:
            return
        readiness = self.factory.readiness
        if why is None:
            answer = READY
        elif readiness is not None and not readiness.serving:
            answer = DRAIN
        else:
            answer = DEGRADED
        self.transport.write(answer)
        self.transport.loseConnection()

    def _failed(self, failure: Any) -> None:
        log.failure("load balancer agent", failure)
        self._answer("internal error")

    def dataReceived(self, data: bytes) -> None:
        pass  # agent-send, if the balancer sends anything: not needed


class AgentFactory(Factory):
    protocol = _Agent
    noisy = False

    def __init__(self, readiness: Any, ping: Callable[[], Deferred[Any]], clock: Any) -> None:
        self.readiness = readiness
        self.ping = ping
        self.clock = clock
