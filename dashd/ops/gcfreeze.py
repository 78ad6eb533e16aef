"""
How dashd lets Python's cycle collector work with a large fleet.

A full collection (of the oldest generation) walks every object the
process holds, and CPython starts one whenever that generation has grown
by a quarter since the last: with 10,000-19,000 devices connected each walk
stops the reactor for 0.4-0.9 s, and under steady write load (objects that
are merely alive, in flight, when a younger collection runs are promoted)
they came every few seconds (docs/performance.md).

So what survives a full collection is frozen (C{gc.freeze}): it is still
freed by reference counting like anything else, but later collections do
not walk it again, and they stay as short as what is new since. Frozen
objects that later end up in a reference cycle would never be freed by the
collector; dashd's connections, calls and refusals leave no cycles
(tests/test_garbage.py), and for whatever else does, every
C{interval} seconds the whole heap is thawed and collected once (one
long pause, at a time of dashd's choosing rather than whenever the
promotions add up).

Most hours that collection of everything finds next to nothing: dashd's
connections, calls and refusals make no cycles, so what it frees is the
few objects that were in flight (Klein's requests, mostly) when a freeze
came. So before stopping the reactor for it (about a second with 20,000
devices), dashd asks a copy of itself: a forked child thaws and collects
its copy of the heap, with every file descriptor closed first (what a
finalizer does there touches no socket, file or log of the parent), and
writes back how many objects were garbage. Only when that reaches
L{GARBAGE_WORTH_A_PAUSE} does dashd collect everything itself; else the
garbage stays frozen, and is counted again (with whatever joined it) an
interval later, so what is left is bounded by that figure plus one
interval's worth. The child costs the parent a fork (its page tables: a
few milliseconds for a few hundred megabytes) and, while it runs, pages
copied on write (the child's walk writes to every object's header, so up
to the heap's size again for a second or two). If the probe fails (no
fork, a child killed, no answer in L{PROBE_TIMEOUT} seconds), dashd
collects as before.

While the fleet grows (a connect storm, a capacity ramp), what is new is
most of what there is, and the first full collection walked all of it
(0.5-0.7 s at 10,000-19,000 devices). So whenever L{GROWTH} more devices
are connected than at the last freeze, the heap is frozen at once
(C{gc.freeze} is a constant-time list move): a full collection then never
walks more than the last L{GROWTH} devices' objects. What was in flight at
that moment and later becomes cyclic garbage waits for the next
collection of everything.
"""

from __future__ import annotations

import gc
import os
import signal
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

# Devices connected since the last freeze that make the next one, and how
# often that is looked at (seconds).
GROWTH = 500
GROWTH_CHECK = 0.25

# Garbage (objects, as gc.collect counts them) found by the forked probe
# that makes dashd collect everything itself: about 5-10 MB. Below it the
# pause (about 50 us a connected device) buys too little.
GARBAGE_WORTH_A_PAUSE = 50_000
# Seconds the probe may take before it is killed (and dashd collects), and
# how often the parent looks whether it has finished.
PROBE_TIMEOUT = 120.0
PROBE_POLL = 0.25


def _probe_child(write_fd: int) -> None:
    """In the forked child: close everything but C{write_fd}, collect the
    whole heap, write the count of unreachable objects, exit at once."""
    code = 1
    try:
        # A stop of the service (systemd signals the whole group) ends it at
        # once; the parent's handlers would try to stop a reactor not here.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, _fd_limit())
        gc.callbacks.clear()  # the parent's metrics and freezes
        gc.unfreeze()
        found = gc.collect()
        os.write(write_fd, b"%d\n" % found)
        code = 0
    finally:
        os._exit(code)


def _fd_limit() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 65536


class GarbageProbe:
    """
    How much a collection of everything would free now, asked of a forked
    copy of the process. C{start(done)}: C{done(count)} is called on the
    reactor, with None if the probe failed.
    """

    def __init__(self, reactor: Any, timeout: float = PROBE_TIMEOUT) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self.running = False

    def start(self, done: Callable[[int | None], None]) -> None:
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError as e:
            os.close(read_fd)
            os.close(write_fd)
            log.warn("garbage probe: cannot fork ({why}); collecting here", why=e)
            done(None)
            return
        if pid == 0:  # pragma: no cover (the child)
            _probe_child(write_fd)
        os.close(write_fd)
        self.running = True
        deadline = self._reactor.seconds() + self._timeout

        def check() -> None:
            try:
                waited, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                waited, status = pid, -1
            if waited == 0:
                if self._reactor.seconds() < deadline:
                    self._reactor.callLater(PROBE_POLL, check)
                    return
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = -1
                log.warn("garbage probe: no answer in {s} s; collecting here",
                         s=self._timeout)
            found: int | None = None
            if status == 0:
                try:
                    found = int(os.read(read_fd, 64).decode().strip())
                except (OSError, ValueError):
                    found = None
            os.close(read_fd)
            self.running = False
            done(found)

        self._reactor.callLater(PROBE_POLL, check)


class FreezeSurvivors(Service):
    def __init__(
        self,
        reactor: Any,
        interval: float,
        connected: Callable[[], int] | None = None,
        growth: int = GROWTH,
        probe: GarbageProbe | None = None,
        worth_a_pause: int = GARBAGE_WORTH_A_PAUSE,
    ) -> None:
        """@param connected: how many devices are connected now (to freeze
        as the fleet grows; None: only after full collections).
        @param probe: asked first at each interval whether collecting
        everything would free at least C{worth_a_pause} objects (None:
        collect every interval)."""
        self._reactor = reactor
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._freeze_scheduled = False
        self._connected = connected
        self._growth = growth
        self._grown_from = 0
        self._growth_loop: LoopingCall | None = None
        self.growth_freezes = 0
        self._probe = probe
        self._worth_a_pause = worth_a_pause
        # Intervals whose collection of everything the probe found not worth
        # its pause, and the garbage it found the last time.
        self.skipped = 0
        self.last_probe: int | None = None

    def startService(self) -> None:
        super().startService()
        gc.callbacks.append(self._collected)
        self._loop = LoopingCall(self.interval_reached)
        self._loop.clock = self._reactor
        self._loop.start(self._interval, now=False)
        if self._connected is not None:
            self._grown_from = self._connected()
            self._growth_loop = LoopingCall(self.check_growth)
            self._growth_loop.clock = self._reactor
            self._growth_loop.start(GROWTH_CHECK, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        for loop in (self._loop, self._growth_loop):
            if loop is not None and loop.running:
                loop.stop()
        gc.unfreeze()

    def check_growth(self) -> None:
        """Freeze if the fleet grew by L{GROWTH} devices since the last
        freeze; follow it down when it shrinks."""
        assert self._connected is not None
        now = self._connected()
        if now - self._grown_from >= self._growth:
            gc.freeze()
            self.growth_freezes += 1
            self._grown_from = now
        elif now < self._grown_from:
            self._grown_from = now

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        # Called on whichever thread collected, inside the collector: the
        # freeze itself is left to the reactor thread, once.
        if phase == "stop" and info["generation"] == 2 and not self._freeze_scheduled:
            self._freeze_scheduled = True
            self._reactor.callFromThread(self._freeze)

    def _freeze(self) -> None:
        self._freeze_scheduled = False
        gc.freeze()

    def interval_reached(self) -> None:
        """Collect everything, or first ask the probe whether it is worth it."""
        if self._probe is None:
            self.collect_everything()
        elif not self._probe.running:
            self._probe.start(self._probed)

    def _probed(self, found: int | None) -> None:
        self.last_probe = found
        if not self.running:
            return
        if found is None or found >= self._worth_a_pause:
            log.info("collecting everything: the probe found {found} unreachable objects",
                     found="?" if found is None else found)
            self.collect_everything()
        else:
            self.skipped += 1
            log.info("no collection of everything: the probe found only {found} "
                      "unreachable objects", found=found)

    def collect_everything(self) -> int:
        """Thaw, collect the whole heap, freeze what survives; the number of
        unreachable objects found."""
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        if found:
            log.debug("full collection of everything: {found} unreachable objects",
                      found=found)
        return found
