"""
SIGHUP: dashd keeps running and says so in the log.

Its default action ends a process at once (no drain, no STOPPING=1), which
under ``Restart=on-failure`` drops every device: a stray ``kill -HUP`` or
``systemctl kill -s HUP`` (log rotation scripts send it by habit) must not
do that. dashd has nothing to reload on SIGHUP: its configuration is read at
start (restart to change it, a rolling restart in a cluster), and it logs to
standard output or the journal, which need no reopening. A log file written
with ``twistd --logfile`` is rotated, and reopened, on twistd's own SIGUSR1.

The handler only asks the reactor to log the signal: Python runs it on the
main thread between two bytecodes, where the reactor's state may be half
changed.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()


class HangupService(Service):
    """Catches SIGHUP while dashd runs."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.received = 0
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._signalled)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _signalled(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.hangup)

    def hangup(self) -> None:
        self.received += 1
        log.info("SIGHUP received: ignored (dashd has nothing to reload; restart it to "
                 "change its configuration; a twistd --logfile is reopened on SIGUSR1)")
