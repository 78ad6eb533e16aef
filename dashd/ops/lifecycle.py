"""
dashd as a process: what it does when it starts and when it stops.

Start-up:

- L{raise_open_files_limit}: every device holds a socket, so the soft limit
  on open files (often 1024) is raised to the hard limit.
- L{dashd.ops.datadir.DataDirLock}: one dashd per data directory. The lock
  (``flock`` on ``DATA_DIR/dashd.lock``, which holds the owner's PID) is
  released by the kernel however the process ends, ``kill -9`` included;
  dashctl takes it too when it works on the store itself, so it never
  changes the store under a running dashd.

Graceful stop (SIGTERM, ``systemctl stop``): the service tree stops its
children in reverse order, so

1. systemd hears STOPPING=1 (L{dashd.ops.systemd.NotifyService});
2. the listening ports close: no new connections;
3. L{DrainService}: requests still arriving on open HTTP connections get
   503, the REST calls in flight (an RPC waiting for its device, say) get
   up to ``shutdown.grace_period`` seconds to be answered, and so do, in a
   cluster, the calls other nodes passed here for devices held here (their
   devices are still connected meanwhile, so calls other nodes pass during
   the drain are served too);
4. the device connections close with 1001 (going away), which fails the
   calls still in flight at once (503), and notification subscribers are
   closed with 1001 too (L{dashd.assembly.FleetService});
5. the store finishes the writes queued and closes.
"""

from __future__ import annotations

import resource
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import TimeoutError, inlineCallbacks
from twisted.logger import Logger

from dashd.api.site import DashdSite

log = Logger()


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; return (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        # Linux refuses an infinite soft limit; its ceiling is fs.nr_open.
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1048576
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            log.warn("could not raise the open files limit from {soft} to {target}: {error}",
                     soft=soft, target=target, error=e)
            return soft, soft
        return soft, target
    return soft, soft


class Readiness:
    """What /readyz reports besides the store: dashd is serving (READY was
    reached and it is not stopping)."""

    def __init__(self) -> None:
        self.state = "starting"
        # Callables saying why dashd should take no new devices now (or
        # None), e.g. a cluster node without Redis.
        self.checks: list[Callable[[], str | None]] = []

    def problem(self) -> str | None:
        for check in self.checks:
            why = check()
            if why:
                return why
        return None

    @property
    def serving(self) -> bool:
        return self.state == "serving"


class DrainService(Service):
    """Sits just below the listening ports: when they have closed, it stops
    new requests and lets those in flight finish, up to a deadline."""

    def __init__(self, site: DashdSite, readiness: Readiness, grace_period: float,
                 clock: Any, peers: Any = None) -> None:
        """C{peers}: the cluster node (L{dashd.cluster.node.Cluster}), whose
        C{serving} calls from other nodes are drained too; None alone."""
        self.site = site
        self.readiness = readiness
        self.grace_period = grace_period
        self.clock = clock
        self.peers = peers

    def _peer_calls(self) -> int:
        return self.peers.serving if self.peers is not None else 0

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        self.readiness.state = "stopping"
        self.site.draining = True
        waiting, peer_calls = len(self.site.in_flight), self._peer_calls()
        if not waiting and not peer_calls:
            return
        if peer_calls:
            log.info("stopping: waiting up to {grace}s for {n} request(s) in flight and "
                     "{p} call(s) from other nodes", grace=self.grace_period, n=waiting,
                     p=peer_calls)
        else:
            log.info("stopping: waiting up to {grace}s for {n} request(s) in flight",
                     grace=self.grace_period, n=waiting)
        end = self.clock.seconds() + self.grace_period
        try:
            yield self.site.idle().addTimeout(self.grace_period, self.clock)
            # Calls other nodes keep passing while this one drains are
            # served too: wait until none is left, to the same deadline.
            while self._peer_calls():
                left = end - self.clock.seconds()
                if left <= 0:
                    raise TimeoutError()
                yield self.peers.serving_idle().addTimeout(left, self.clock)
        except TimeoutError:
            log.warn("stopping: {n} request(s) and {p} call(s) from other nodes still in "
                     "flight after {grace}s; their devices are disconnected now",
                     n=len(self.site.in_flight), p=self._peer_calls(),
                     grace=self.grace_period)
        else:
            log.info("stopping: the requests in flight are answered")
