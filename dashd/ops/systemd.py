"""
What dashd tells systemd: the service notification protocol (``sd_notify``)
of a ``Type=notify`` unit.

systemd passes the address of a datagram socket in ``$NOTIFY_SOCKET`` (a
path, or ``@name`` in the abstract namespace); a service reports its state
by sending it newline-separated ``KEY=VALUE`` assignments. dashd sends:

- ``READY=1`` (with a ``STATUS=``) once the store is open and every
  listening port is bound, so ``systemctl start`` returns when dashd serves
  and units ordered after it start only then;
- ``STOPPING=1`` as soon as it begins a graceful stop;
- ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` when the unit has
  ``WatchdogSec=``: the pings come from the reactor thread, so a reactor
  that stopped turning gets the service restarted.

Without ``$NOTIFY_SOCKET`` (not run by systemd) all of this does nothing.
The socket is non-blocking: a notification that cannot be sent at once is
logged and dropped, the reactor never waits for systemd.

Socket activation (``systemd/dashd.socket``) needs nothing here: Twisted's
``systemd:`` endpoint adopts the descriptors systemd passes
(``$LISTEN_FDS``, ``$LISTEN_PID``, ``$LISTEN_FDNAMES``).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send C{state} (e.g. C{"READY=1"}) to systemd; False if there is no
    C{$NOTIFY_SOCKET} or the message could not be sent at once."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    elif not address.startswith("/"):
        log.warn("ignoring NOTIFY_SOCKET={address}: not a path", address=address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode("utf-8"), address)
    except OSError as e:
        log.warn("could not notify systemd ({state}): {error}",
                 state=state.split("\n", 1)[0], error=e)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between C{WATCHDOG=1} pings if systemd asks for them."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        interval = int(usec) / 1e6 / 2
    except ValueError:
        return None
    return interval if interval > 0 else None


class NotifyService(Service):
    """
    The last child of the service tree: it starts after every port is bound
    and stops before anything else, so READY and STOPPING bracket the time
    dashd serves.

    @param ready: returns a Deferred that fires once dashd can serve (the
        store's first-start work is done).
    @param status: returns a one-line description for C{STATUS=}.
    @param on_ready: called when READY=1 is sent (readiness for /readyz).
    """

    def __init__(
        self,
        ready: Callable[[], Deferred[Any] | None],
        status: Callable[[], str],
        reactor: Any,
        on_ready: Callable[[], None] = lambda: None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._ready = ready
        self._status = status
        self._reactor = reactor
        self._on_ready = on_ready
        self._environ = environ
        self._watchdog: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        d = maybeDeferred(self._ready)
        d.addCallback(lambda _: self._serving())
        d.addErrback(lambda f: log.failure("before notifying systemd", f))

    def _serving(self) -> None:
        if not self.running:
            return
        self._on_ready()
        notify("READY=1\nSTATUS=%s" % self._status(), self._environ)
        interval = watchdog_interval(self._environ)
        if interval is not None:
            self._watchdog = LoopingCall(notify, "WATCHDOG=1", self._environ)
            self._watchdog.clock = self._reactor
            self._watchdog.start(interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        notify("STOPPING=1\nSTATUS=stopping: finishing calls in flight", self._environ)
