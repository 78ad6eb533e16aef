"""
What mDash-library devices store on their own file system, pulled into the
device's stored data.

``mDashStore("temperature", "{%Q:%d}", ...)`` in an Arduino or ESP-IDF
sketch appends the line ``TOPIC JSON`` to ``mdash.unsent`` on the device
(renamed to ``mdash.unsent.old`` past 32 KB, replacing an older one) and
sends the notification ``DB.NewData``; the data never travels by itself:
the server pulls the files with the library's ``FS.*`` calls. dashd does,
on ``DB.NewData`` and whenever a device it has pulled from before comes
online (it may have stored while offline). A pull:

1. ``FS.List``. If the device's pull record (L{dashd.store.IStore.data_pull})
   names a file set aside and the device still has it, go on reading it
   from where the record says; if the device no longer has it, the pull
   before removed it: clear the record.
2. Else take the older of ``mdash.unsent.old`` and ``mdash.unsent``: claim
   it in the record under a new name (``mdash.dashd.`` and a random part),
   then ``FS.Rename`` it to that name. The device appends to a new
   ``mdash.unsent`` from then on and never touches the file dashd reads.
   The claim is a compare-and-set (only a record that names no file takes
   it), so two pulls of one device (two nodes, or an old and a new
   connection) never both rename: the library's rename removes its target
   first, which would throw away a file being read.
3. Read it in chunks (``FS.Get`` from the stored count); the complete lines
   of a chunk become data points in the same transaction that moves the
   stored count on (L{dashd.store.IStore.store_pulled}, a compare-and-set:
   a pull that is no longer current stores nothing). A last line without
   its newline is stored when the file has nothing left.
4. ``FS.Remove`` it, clear the record, and go back to 1 until the device
   has nothing left.

So no line is lost or stored twice when the device appends meanwhile,
disconnects half-way (the next connection resumes), or dashd stops or is
killed half-way (the record says where to resume). A line is a point of the
device with the topic as its key, the JSON as its value and the time dashd
stored it; a line that is not ``TOPIC JSON`` is kept too, as the point
L{UNREADABLE} whose value is the line's text.

At most one pull per device at a time, at most ``data.pulls_at_once`` in
all, so a fleet that comes back at once does not flood the store; the
calls do not go through L{dashd.app.fleet.Fleet.call}, so subscribers are
not told of every chunk. Subscribers see ``data.stored`` for the points
of each chunk.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.defer import DeferredSemaphore, ensureDeferred
from twisted.logger import Logger

from dashd.app.fleet import Fleet
from dashd.domain import tokens
from dashd.domain.errors import DomainError
from dashd.domain.events import Event
from dashd.domain.model import Device
from dashd.domain.timeseries import MAX_KEY_LENGTH

log = Logger()

# The files of the mDash library, oldest first, and the start of the name
# dashd gives one it sets aside to read (the rest is new for each).
SOURCES = ("mdash.unsent.old", "mdash.unsent")
ASIDE_PREFIX = "mdash.dashd."
# Files a pull takes at most, before it lets another device have its turn.
MAX_FILES = 16
# The key of a point made of a line that is not "TOPIC JSON".
UNREADABLE = "mdash.unreadable"
# A line longer than this is not the library's (it writes at most a few
# hundred bytes a line); it is kept as unreadable, cut to this length.
MAX_LINE = 65536


class _Stop(Exception):
    """The pull cannot go on now (said in the message); the record stays."""


def parse_line(line: bytes) -> tuple[str, Any]:
    """The point a stored line makes: C{(topic, value)}, or
    C{(UNREADABLE, text)} for a line that is not ``TOPIC JSON``."""
    text = line.decode("utf-8", "replace")
    topic, _, rest = text.partition(" ")
    if topic and rest and len(topic) <= MAX_KEY_LENGTH:
        try:
            return topic, json.loads(rest)
        except ValueError:
            pass
    return UNREADABLE, text[:MAX_LINE]


class DataPuller:
    """Pulls devices' stored files. L{device_event} and L{device_connected}
    are the fleet observers the builder connects."""

    def __init__(self, fleet: Fleet, chunk_bytes: int, at_once: int, timeout: float) -> None:
        self._fleet = fleet
        self._chunk = chunk_bytes
        self._timeout = timeout
        self._slots = DeferredSemaphore(at_once)
        # Device ID -> asked again while its pull ran (True) or not.
        self._pulling: dict[str, bool] = {}
        # Read by dashd.ops.metrics.
        self.lines_pulled = 0
        self.pulls_failed = 0

    # When to pull

    # The names of the events L{device_event} acts on.
    DEVICE_EVENTS = ("rpc.out.DB.NewData",)

    def device_event(self, event: Event) -> None:
        """A fleet event observer: the device said it stored data."""
        if event.name == "rpc.out.DB.NewData":
            self.request(event.device_id)

    def device_connected(self, device: Device, pull: dict[str, Any] | None) -> None:
        """A fleet observer of connections: a device that stored data
        before may have stored more while offline."""
        if pull is not None:
            self.request(device.id)

    def request(self, device_id: str) -> None:
        """Pull the device's stored data (once more, if a pull runs now)."""
        if device_id in self._pulling:
            self._pulling[device_id] = True
            return
        self._pulling[device_id] = False
        d = self._slots.run(lambda: ensureDeferred(self._pull(device_id)))
        d.addErrback(lambda f: log.failure("pulling the stored data of {id}", f, id=device_id))
        d.addBoth(self._done, device_id)

    def _done(self, _: Any, device_id: str) -> None:
        again = self._pulling.pop(device_id, False)
        if again:
            self.request(device_id)

    # A pull

    async def _pull(self, device_id: str) -> None:
        store = self._fleet.store
        device = await store.get_device(device_id)
        if device is None or not self._fleet.router.is_online(device_id):
            return
        try:
            for _ in range(MAX_FILES):
                if not await self._one_file(device):
                    break
            else:
                self.request(device_id)  # more than that: after the others
        except _Stop as e:
            self.pulls_failed += 1
            log.info("device {id}: pulling its stored data stopped: {why}", id=device_id,
                     why=str(e))

    async def _one_file(self, device: Device) -> bool:
        """Pull one file; True if there may be another."""
        store, now = self._fleet.store, self._fleet.now
        known = await store.data_pull(device.id)
        files = await self._call(device, "FS.List", None)
        if not isinstance(files, list):
            raise _Stop("FS.List answered %r" % (files,))
        if known is not None and known["file"] is not None:
            if known["file"] in files:
                await self._read(device, known["file"], known["stored"])
            else:
                # Removed by the pull before, which stopped before it said so.
                await store.set_data_pull(device.id, None, 0, now(), known["file"])
            return True
        # A file set aside that no record names (a store put back from a
        # backup) is read as it is; else the oldest the library wrote.
        stray = next((f for f in files if isinstance(f, str)
                      and f.startswith(ASIDE_PREFIX)), None)
        source = None if stray is not None else next((f for f in SOURCES if f in files), None)
        if stray is None and source is None:
            if known is None:
                # Its first DB.NewData, with nothing (left) to pull:
                # remember it stores data, to pull when it comes back.
                await store.set_data_pull(device.id, None, 0, now(), None)
            return False
        name = stray if stray is not None else ASIDE_PREFIX + tokens.new_id("")
        if not await store.set_data_pull(device.id, name, 0, now(), None):
            return False  # another pull (another node's) took it first: it pulls

        if source is not None:
            await self._call(device, "FS.Rename", {"src": source, "dst": name})
        await self._read(device, name, 0)
        return True

    async def _read(self, device: Device, name: str, stored: int) -> None:
        """Store the lines of the file from byte C{stored} on, then remove it."""
        store, now = self._fleet.store, self._fleet.now
        offset, pending = stored, b""
        while True:
            answer = await self._call(device, "FS.Get",
                                      {"filename": name, "offset": offset, "len": self._chunk})
            data, left = self._chunk_of(answer, offset)
            offset += len(data)
            pending += data
            lines = pending.split(b"\n")
            pending = lines.pop()
            if left <= 0 and pending:
                lines.append(pending)  # the last line, cut short on the device
                pending = b""
            if len(pending) > MAX_LINE:
                lines.append(pending[:MAX_LINE])
                pending = b""
            points = [parse_line(line) for line in lines if line.strip()]
            upto = offset - len(pending)
            if upto != stored:
                if not await store.store_pulled(device.id, device.account_id, name, stored,
                                                upto, points, now()):
                    raise _Stop("another pull of the same file moved on")
                stored = upto
                if points:
                    self.lines_pulled += len(points)
                    self._fleet.publish(device, "data.stored", {
                        "source": "mdash", "points": [{"key": k, "value": v}
                                                      for k, v in points]})
            if left <= 0:
                break
            if not data:
                raise _Stop("FS.Get of %s gave nothing with %d bytes left" % (name, left))
        await self._call(device, "FS.Remove", {"filename": name})
        await store.set_data_pull(device.id, None, 0, now(), name)

    @staticmethod
    def _chunk_of(answer: Any, offset: int) -> tuple[bytes, int]:
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), str):
            raise _Stop("FS.Get answered %r" % (answer,))
        left = answer.get("left", 0)
        if isinstance(left, bool) or not isinstance(left, int):
            raise _Stop("FS.Get answered left=%r" % (left,))
        try:
            data = base64.b64decode(answer["data"], validate=True)
        except ValueError:
            raise _Stop("FS.Get answered data that is not base64")
        return data, left

    async def _call(self, device: Device, method: str, params: Any) -> Any:
        try:
            return await self._fleet.router.call(device.id, method, params, self._timeout)
        except DomainError as e:
            raise _Stop("%s: %s" % (method, e.message))
