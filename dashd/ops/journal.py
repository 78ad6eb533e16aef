"""
Logging to the systemd journal with structured fields.

``twistd --logger=dashd.ops.journal.observer dashd ...`` (as in
``systemd/dashd.service``): when dashd's standard output is the journal
(systemd sets ``$JOURNAL_STREAM`` to the device and inode of that stream),
each event goes to journald over its native protocol, as one entry with

- ``MESSAGE``: the event as text (with the traceback of a failure);
- ``PRIORITY``: the syslog level of the event's log level;
- ``SYSLOG_IDENTIFIER=dashd``, ``DASHD_NAMESPACE``: the module that logged;
- ``DASHD_<KEY>`` for each plain value of the event: ``DASHD_ID`` (the
  device or key), ``DASHD_PEER``, ``DASHD_REASON``, ...

so that ``journalctl -u dashd DASHD_ID=d3k9x0a7mq2zt`` shows one device's
story and ``journalctl -u dashd -p warning`` only what needs a look.
Anywhere else the events go to standard output as text, as without
``--logger``. A datagram journald cannot take at once (it is busy, or the
entry is too large) is written to standard output instead: nothing is lost
and the reactor never waits.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
from typing import Any, Mapping, TextIO

from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "dashd"

_PRIORITY = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}
_FIELD_OK = re.compile(r"[^A-Z0-9_]")
# Large values are cut in the entry (the text on stdout keeps them whole).
MAX_VALUE = 16384


def _field_name(key: str) -> str:
    name = "DASHD_" + _FIELD_OK.sub("_", key.upper())
    return name[:64]


def _encode_field(name: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        # Binary-safe form: name, newline, little-endian 64-bit length, data.
        return name.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode("ascii") + b"=" + data + b"\n"


def entry(event: Mapping[str, Any]) -> bytes:
    """The native-protocol datagram for one log event."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = "%s\n%s" % (text, failure.getTraceback())
    level = event.get("log_level", LogLevel.info)
    fields = [
        ("MESSAGE", text[:MAX_VALUE * 4]),
        ("PRIORITY", str(_PRIORITY.get(level, 6))),
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("DASHD_NAMESPACE", str(event.get("log_namespace", "-"))),
    ]
    for key, value in event.items():
        if key.startswith("log_") or key == "format" or key.startswith("_"):
            continue
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            fields.append((_field_name(key), str(value)[:MAX_VALUE]))
    return b"".join(_encode_field(name, value) for name, value in fields)


@implementer(ILogObserver)
class JournalObserver:
    def __init__(self, path: str = JOURNAL_SOCKET, fallback: TextIO | None = None) -> None:
        self._path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)
        self._fallback = textFileLogObserver(fallback or sys.stdout)

    def __call__(self, event: Mapping[str, Any]) -> None:
        try:
            self._socket.sendto(entry(event), self._path)
        except OSError:
            self._fallback(event)  # type: ignore[arg-type]


def connected_to_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    """True if C{stream} is the journal stream systemd announced."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


def observer(environ: Mapping[str, str] | None = None, stream: TextIO | None = None,
             path: str = JOURNAL_SOCKET) -> Any:
    """The observer factory for C{twistd --logger}."""
    env = os.environ if environ is None else environ
    out = sys.stdout if stream is None else stream
    if connected_to_journal(env, out) and os.path.exists(path):
        return JournalObserver(path, out)
    return textFileLogObserver(out)
