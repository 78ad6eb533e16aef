"""
Firmware updates (OTA): dashd gets a firmware file over REST and brings it
to one device.

Push mode (the default; every device library):

    OTA.Begin {"size": N}
    OTA.Write {"data": BASE64}     one a chunk of ota.chunk_bytes, in order,
    ...                            at most ota.writes_in_flight unanswered
    OTA.End

Pull mode (Mongoose OS): dashd serves the file at a one-time link
``/api/v2/firmware/SECRET`` and calls ``OTA.Update {"url": LINK,
"commit_timeout": N}``; the device downloads it and answers when it has.
A device without ``OTA.Update`` (the mDash library answers -32601) gets the
file by push instead, said in the status's ``note``. Older Mongoose OS
reboots into the new firmware without answering ``OTA.Update``: a device
that goes offline during it is awaited as one that reboots (its info says
whether the new firmware took). While it updates, Mongoose OS says how it
goes in ``Dash.OTAState {"state", "msg"}``: the last one is the status's
``device_state`` (and each is in the device's history).

Then the device reboots into the new firmware. When it is back and tells
its info (``Dash.Heartbeat`` or ``Sys.GetInfo``) with a ``fw_id`` other than
the one it had, the update is done but uncommitted: Mongoose OS reverts to
the old firmware unless ``OTA.Commit`` comes within ``commit_timeout``.
dashd calls ``OTA.Commit`` when asked (``POST /devices/:id/ota/commit``),
or at once if the upload asked for ``auto_commit``.

The status of a device's last update (in ``GET /devices/:id`` as ``ota``,
and stored, so it outlives a restart)::

    {"id": "o...", "mode": "push" | "pull", "state": STATE,
     "file": "fw.zip", "kind": "zip" | "bin", "size": N, "sent": N,
     "percent": 0-100, "auto_commit": false, "commit_timeout": N (pull),
     "manifest": {...} (zip), "fw_id_before": "...", "fw_id": "..." (back),
     "started": T, "updated": T, "reason": "..." (failed, or a failed commit),
     "note": "..." (pull done otherwise), "device_state": {"state", "msg", "t"}}

STATE is ``uploading`` / ``downloading`` (the transfer; one at a time per
device), ``rebooting`` (the device has it all; expected back within
``ota.reboot_timeout``), ``uncommitted``, ``committed`` or ``failed``.
Subscribers get ``ota.status`` (the whole status) on every change of state
and ``ota.progress`` (``{"percent", "sent", "size"}``) as the percentage
grows.

Memory: a push holds at most ``writes_in_flight`` chunks (and their base64)
of the file; it reads the file one chunk at a time. A pull is served from
the file by a producer that the connection paces.
"""

from __future__ import annotations

import base64
import bz2
import json
import os
import secrets
import struct
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from dashd.app.devices import Devices
from dashd.app.fleet import Fleet
from dashd.channel import frames
from dashd.config import Config
from dashd.domain import access, tokens
from dashd.domain.errors import (
    Busy,
    Conflict,
    DeviceFailed,
    DomainError,
    Forbidden,
    Invalid,
    Offline,
    TimedOut,
    TooLarge,
    Unsupported,
)
from dashd.domain.events import Event
from dashd.domain.model import ApiKey, Device

log = Logger()

TRANSFERRING = ("uploading", "downloading")
AWAITING = ("rebooting", "uncommitted")
FINISHED = ("committed", "failed")

# Bytes of OTA.Write frames sent and not yet answered, at most: well below
# the 64 KiB a connection buffers before dashd takes its device for one that
# does not read.
MAX_BYTES_IN_FLIGHT = 32768

ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip")
BIN_TYPES = ("application/octet-stream",)
MAX_MANIFEST_BYTES = 65536
# The longest commit_timeout a pull update may ask for.
MAX_COMMIT_TIMEOUT = 30 * 86400
# What of a Mongoose OS manifest.json the status shows.
MANIFEST_KEYS = ("name", "platform", "version", "build_id")


class InvalidFirmware(Invalid):
    """The file is not firmware dashd can send."""


class UnknownFirmwareKind(Unsupported):
    """A kind of file dashd does not know as firmware."""


def firmware_kind(filename: str | None, content_type: str | None) -> str:
    """``zip`` (Mongoose OS) or ``bin`` (an image sent as it is), from the
    file name's extension, else from the content type."""
    name = (filename or "").lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(".bin"):
        return "bin"
    ctype = (content_type or "").lower()
    if ctype in ZIP_TYPES:
        return "zip"
    if ctype in BIN_TYPES:
        return "bin"
    what = ("%r" % filename) if filename else ("of type %s" % ctype if ctype else "without a type")
    raise UnknownFirmwareKind(
        "unknown kind of firmware file %s: send a Mongoose OS .zip or a .bin image "
        "(by file name, ?filename=, or Content-Type application/zip or "
        "application/octet-stream)" % what
    )


# What a firmware .zip may hold: entries, central directory bytes, and the
# compression methods whose decompressors dashd can hold to a bounded output
# per step (mos build writes deflate).
MAX_ZIP_ENTRIES = 1000
MAX_ZIP_DIRECTORY_BYTES = 1 << 20
ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate",
               zipfile.ZIP_BZIP2: "bzip2"}
# Bytes read from the file, and produced by a decompressor, per step.
ZIP_STEP = 65536
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"


def check_zip(path: str, max_unpacked: int = 64 << 20) -> dict[str, Any]:
    """
    Check that C{path} is a sound zip holding a ``manifest.json`` (at its top
    or one folder down, as ``mos build`` makes it); return the manifest.

    Memory and time stay bounded whatever the file says of itself: the
    central directory's size and number of entries are capped before it is
    read; the sizes the entries declare may add up to C{max_unpacked} at most;
    each entry is decompressed L{ZIP_STEP} bytes at a time (never in one call:
    a few KB of bzip2 can hold gigabytes), its CRC checked as it goes, and
    it is refused as soon as it produces more than it declared. Methods other
    than L{ZIP_METHODS}, and encrypted entries, are refused. Run it off the
    reactor thread.

    @raise InvalidFirmware: saying what is wrong.
    """
    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)  # type: ignore[attr-defined]
            if not end:
                raise InvalidFirmware("the file is not a valid .zip: no end of central "
                                      "directory")
            if end[zipfile._ECD_ENTRIES_TOTAL] > MAX_ZIP_ENTRIES:  # type: ignore[attr-defined]
                raise InvalidFirmware("the .zip holds more than %d entries" % MAX_ZIP_ENTRIES)
            if end[zipfile._ECD_SIZE] > MAX_ZIP_DIRECTORY_BYTES:  # type: ignore[attr-defined]
                raise InvalidFirmware("the .zip's central directory is larger than %d bytes"
                                      % MAX_ZIP_DIRECTORY_BYTES)
            f.seek(0)
            with zipfile.ZipFile(f) as z:
                infos = z.infolist()
                if len(infos) > MAX_ZIP_ENTRIES:
                    raise InvalidFirmware("the .zip holds more than %d entries"
                                          % MAX_ZIP_ENTRIES)
                declared = sum(info.file_size for info in infos)
                if declared > max_unpacked:
                    raise InvalidFirmware(
                        "the .zip would unpack to %d bytes, more than the limit of %d"
                        % (declared, max_unpacked))
                for info in infos:
                    if info.compress_type not in ZIP_METHODS:
                        raise InvalidFirmware(
                            "%s in the .zip is compressed with method %d, which dashd does "
                            "not accept (only %s)" % (info.filename, info.compress_type,
                                                      ", ".join(ZIP_METHODS.values())))
                    if info.flag_bits & 0x1:
                        raise InvalidFirmware("%s in the .zip is encrypted" % info.filename)
                candidates = [
                    info for info in infos
                    if info.filename.rstrip("/").split("/")[-1] == "manifest.json"
                    and info.filename.count("/") <= 1 and not info.is_dir()
                ]
                if not candidates:
                    raise InvalidFirmware(
                        "the .zip holds no manifest.json: it is not a Mongoose OS firmware "
                        "(build one with mos build)"
                    )
                manifest_info = min(candidates, key=lambda i: i.filename.count("/"))
                if manifest_info.file_size > MAX_MANIFEST_BYTES:
                    raise InvalidFirmware("the .zip's manifest.json is too large")
                raw = b""
                for info in infos:
                    kept = _check_entry(f, info, keep=info is manifest_info)
                    if info is manifest_info:
                        raw = kept
    except InvalidFirmware:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError,
            RuntimeError, ValueError, OSError, zlib.error, struct.error) as e:
        raise InvalidFirmware("the file is not a valid .zip: %s" % e)
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidFirmware("the .zip's manifest.json is not valid JSON: %s" % e)
    if not isinstance(manifest, dict):
        raise InvalidFirmware("the .zip's manifest.json is not a JSON object")
    return {k: manifest[k] for k in MANIFEST_KEYS if isinstance(manifest.get(k), (str, int))}


def _check_entry(f: Any, info: zipfile.ZipInfo, keep: bool) -> bytes:
    """Read one entry's data a step at a time, checking that it unpacks to
    the size it declared and matches its CRC; return what it unpacks to if
    C{keep} (the manifest, whose size is capped), else b""."""
    f.seek(info.header_offset)
    header = f.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
        raise InvalidFirmware("the .zip is damaged: %s has no local header" % info.filename)
    fields = _LOCAL_HEADER.unpack(header)
    f.seek(fields[-2] + fields[-1], os.SEEK_CUR)  # the name and the extra field
    if info.compress_type == zipfile.ZIP_DEFLATED:
        decompressor: Any = zlib.decompressobj(-15)
    elif info.compress_type == zipfile.ZIP_BZIP2:
        decompressor = bz2.BZ2Decompressor()
    else:
        decompressor = None
    left = info.compress_size
    produced = 0
    crc = 0
    kept = bytearray()

    def take(data: bytes) -> None:
        nonlocal produced, crc
        produced += len(data)
        if produced > info.file_size:
            raise InvalidFirmware("the .zip is damaged: %s unpacks to more than the %d bytes "
                                  "it declares" % (info.filename, info.file_size))
        crc = zlib.crc32(data, crc)
        if keep:
            kept.extend(data)

    while left > 0:
        data = f.read(min(ZIP_STEP, left))
        if not data:
            raise InvalidFirmware("the .zip is truncated: %s ends early" % info.filename)
        left -= len(data)
        if decompressor is None:
            take(data)
        elif isinstance(decompressor, bz2.BZ2Decompressor):
            take(decompressor.decompress(data, ZIP_STEP))
            while not decompressor.eof and not decompressor.needs_input:
                take(decompressor.decompress(b"", ZIP_STEP))
        else:
            take(decompressor.decompress(data, ZIP_STEP))
            while decompressor.unconsumed_tail:
                take(decompressor.decompress(decompressor.unconsumed_tail, ZIP_STEP))
    if isinstance(decompressor, bz2.BZ2Decompressor):
        while not decompressor.eof and not decompressor.needs_input:
            take(decompressor.decompress(b"", ZIP_STEP))
    elif decompressor is not None:
        take(decompressor.flush())
    if produced != info.file_size:
        raise InvalidFirmware("the .zip is damaged: %s unpacks to %d bytes, not the %d it "
                              "declares" % (info.filename, produced, info.file_size))
    if crc != info.CRC:
        raise InvalidFirmware("the .zip is damaged: %s fails its CRC check" % info.filename)
    return bytes(kept)


class _Failed(Exception):
    """An update ends in failure, for the reason given."""


def _ignore(failure: Failure) -> None:
    """Consume the outcome of a call whose result no longer matters."""


@dataclass
class _Update:
    device: Device
    status: dict[str, Any]
    path: str | None
    secret: str | None = None
    timer: IDelayedCall | None = None
    # Seen "online" since the transfer ended: only a new connection's info
    # says which firmware the device now runs.
    reconnected: bool = False
    saved: list[Deferred[Any]] = field(default_factory=list)
    # In a cluster: the node that drove the transfer, when it is another
    # one (this node heard of the update from its ota.status events).
    driver: str | None = None

    @property
    def device_id(self) -> str:
        return self.device.id

    @property
    def state(self) -> str:
        return str(self.status["state"])


class OtaManager:
    """The firmware updates under way, and the use cases on them. It hears
    of devices coming back through L{device_event} and L{device_info}, which
    the builder (L{dashd.assembly}) connects to the fleet's observers."""

    def __init__(self, fleet: Fleet, config: Config, directory: str, reactor: Any) -> None:
        self.fleet = fleet
        self.config = config
        self.directory = directory
        self.reactor = reactor
        self.clock = fleet.clock
        # device ID -> its update, while it transfers or awaits the device.
        self._updates: dict[str, _Update] = {}
        # secret of a pull link -> its update (until used or expired).
        self._downloads: dict[str, _Update] = {}

    # Life cycle

    def start(self) -> Deferred[None]:
        """Clear what a previous run left behind; pick up the updates that
        were waiting for their device, fail those cut off mid-transfer."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        for name in os.listdir(self.directory):
            try:
                os.unlink(os.path.join(self.directory, name))
            except OSError as e:
                log.warn("could not delete {name}: {error}", name=name, error=e)
        return ensureDeferred(self._resume())

    async def _resume(self) -> None:
        store = self.fleet.store
        for status in await store.ota_statuses(TRANSFERRING + AWAITING):
            device = await store.get_device(status["device_id"])
            if device is None:
                continue
            update = _Update(device, status, None, reconnected=True)
            if status["state"] in TRANSFERRING:
                self._fail(update, "dashd restarted during the transfer")
            else:
                self._updates[device.id] = update
                if status["state"] == "rebooting":
                    self._arm_reboot_timer(update)

    def stop(self) -> Deferred[Any]:
        """Fail the transfers under way; fire once their status is stored."""
        updates = list(self._updates.values())
        for update in updates:
            if update.state in TRANSFERRING:
                self._fail(update, "dashd stopped during the transfer")
            elif update.timer is not None and update.timer.active():
                update.timer.cancel()
        pending = [d for u in updates for d in u.saved if not d.called]
        self._updates.clear()
        return gatherResults(pending, consumeErrors=True).addErrback(_ignore)

    # Starting an update

    def running(self, device_id: str) -> dict[str, Any] | None:
        """The status of the device's transfer, if one is under way."""
        update = self._updates.get(device_id)
        if update is not None and update.state in TRANSFERRING:
            return update.status
        return None

    def check_not_running(self, device_id: str) -> None:
        status = self.running(device_id)
        if status is not None:
            raise Conflict(
                "a firmware update of device %s is already running (%s, %d%%)"
                % (device_id, status["state"], status["percent"])
            )

    def validate(self, path: str, kind: str) -> Deferred[dict[str, Any] | None]:
        """Check the file (off the reactor thread); fire with the manifest
        of a zip, or fail with L{InvalidFirmware}."""
        if kind != "zip":
            from twisted.internet.defer import succeed

            return succeed(None)
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), check_zip, path,
                                 self.config["ota.max_unpacked_bytes"])

    def start_update(
        self,
        device: Device,
        path: str,
        size: int,
        filename: str,
        kind: str,
        manifest: dict[str, Any] | None,
        pull_base_url: str | None,
        auto_commit: bool,
        commit_timeout: int,
        job_id: str | None = None,
        update_id: str | None = None,
    ) -> dict[str, Any]:
        """
        Start sending the file at C{path} (which the manager now owns) to
        the device; C{pull_base_url} chooses pull mode; C{job_id}: the fleet
        job it is for (in its status). Return the status.

        @raise Conflict: an update of the device is under way.
        @raise Offline: the device is not connected.
        """
        self.check_not_running(device.id)
        if not self.fleet.router.is_online(device.id):
            raise Offline("device %s is offline" % device.id)
        previous = self._updates.pop(device.id, None)
        if previous is not None and previous.timer is not None and previous.timer.active():
            previous.timer.cancel()
        now = self.fleet.now()
        pull = pull_base_url is not None
        status: dict[str, Any] = {
            "id": update_id or tokens.new_id("o"),
            "device_id": device.id,
            "mode": "pull" if pull else "push",
            "state": "downloading" if pull else "uploading",
            "file": filename,
            "kind": kind,
            "size": size,
            "sent": 0,
            "percent": 0,
            "auto_commit": auto_commit,
            "fw_id_before": device.info.get("fw_id"),
            "started": now,
            "updated": now,
        }
        if manifest is not None:
            status["manifest"] = manifest
        if job_id is not None:
            status["job"] = job_id
        if pull:
            status["commit_timeout"] = commit_timeout
        update = _Update(device, status, path)
        self._updates[device.id] = update
        self._changed(update)
        log.info(
            "device {id}: firmware update {update} started ({mode}, {size} bytes)",
            id=device.id, update=status["id"], mode=status["mode"], size=size,
        )
        if pull:
            update.secret = secrets.token_urlsafe(32)
            self._downloads[update.secret] = update
            url = pull_base_url.rstrip("/") + "/api/v2/firmware/" + update.secret
            d = ensureDeferred(self._pull(update, url, commit_timeout))
        else:
            d = ensureDeferred(self._push(update))
        d.addErrback(self._crashed, update)
        return status

    def pull_base_url(self, device_id: str) -> str:
        """Where the device downloads firmware from in pull mode:
        ota.public_url, else the address the device itself reached dashd at
        (never what the uploader's request says: its Host is the uploader's
        to choose).
        @raise Invalid: neither is known (the device is held by another node
            of a cluster, or is gone)."""
        if self.config["ota.public_url"]:
            return str(self.config["ota.public_url"])
        session = self.fleet.router.local_session(device_id)
        base = getattr(session, "base_url", None)
        if not base:
            raise Invalid("pull mode needs ota.public_url here: device %s is not connected to "
                          "this node, so dashd does not know an address it can reach"
                          % device_id, "mode")
        return str(base)

    # The transfer

    async def _push(self, update: _Update) -> None:
        size = update.status["size"]
        chunk = self.config["ota.chunk_bytes"]
        # Never more than a device accepts in flight (leaving room for a
        # call), nor more bytes unanswered than the connection buffers
        # before it counts the device as not reading (dashd.channel.session).
        encoded = 4 * ((chunk + 2) // 3) + 64
        window = max(1, min(self.config["ota.writes_in_flight"],
                            self.config["device.max_calls_in_flight"] - 1,
                            MAX_BYTES_IN_FLIGHT // encoded))
        try:
            await self._call(update, "OTA.Begin", {"size": size})
            if update.path is None:
                raise _Failed("the update ended")  # (failed meanwhile)
            try:
                f = open(update.path, "rb")
            except OSError as e:
                raise _Failed("dashd cannot read the firmware file: %s" % e.strerror)
            with f:
                in_flight: deque[tuple[Deferred[Any], int]] = deque()
                sent = acked = 0
                try:
                    while acked < size:
                        while sent < size and len(in_flight) < window:
                            # One bounded read a chunk, from a file that was
                            # just written (in the page cache).
                            data = f.read(min(chunk, size - sent))
                            if not data:
                                raise _Failed("the firmware file ended early")
                            params = {"data": base64.b64encode(data).decode("ascii")}
                            in_flight.append((self._call(update, "OTA.Write", params), len(data)))
                            sent += len(data)
                        d, n = in_flight.popleft()
                        await d
                        acked += n
                        self._progress(update, acked)
                finally:
                    for d, _ in in_flight:
                        d.addErrback(_ignore)
            await self._call(update, "OTA.End", None)
        except _Failed as e:
            self._fail(update, str(e))
            return
        self._transferred(update)

    async def _pull(self, update: _Update, url: str, commit_timeout: int) -> None:
        try:
            await self._call(
                update, "OTA.Update", {"url": url, "commit_timeout": commit_timeout},
                timeout=self.config["ota.pull_timeout"], passing=(DeviceFailed, Offline),
            )
        except DeviceFailed as e:
            if e.code not in frames.NOT_IMPLEMENTED:
                self._fail(update, "the device refused OTA.Update: %s (code %s)"
                           % (e.message, e.code))
                return
            # The mDash library has no OTA.Update: it cannot download.
            self._forget_link(update)
            update.status.update(mode="push", state="uploading", note=(
                "the device has no OTA.Update (it cannot download firmware itself): "
                "sent by push instead"))
            update.status.pop("commit_timeout", None)
            self._changed(update)
            await self._push(update)
            return
        except Offline:
            # Older Mongoose OS reboots into the new firmware without
            # answering: whether it took, its info says when it is back.
            update.status["note"] = (
                "the device went offline during OTA.Update without answering (older "
                "Mongoose OS reboots into the new firmware so): waiting for it to come back")
        except _Failed as e:
            self._fail(update, str(e))
            return
        self._transferred(update)

    def _call(
        self, update: _Update, method: str, params: Any, timeout: float | None = None,
        passing: tuple[type[DomainError], ...] = (),
    ) -> Deferred[Any]:
        """Call the device, turning a failure into L{_Failed} with a reason
        a person understands (but for the errors in C{passing}). (Not
        Fleet.call: that would announce every chunk of firmware to the
        subscribers as rpc.in.OTA.Write.)"""
        if self._updates.get(update.device_id) is not update or update.state in FINISHED:
            # The update ended meanwhile (failed, device deleted, shutdown).
            return _cancelled()
        if timeout is None:
            timeout = self.config["ota.step_timeout"]
        d = self.fleet.router.call(update.device_id, method, params, timeout)

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, passing):
                failure.raiseException()
            if isinstance(error, DeviceFailed):
                raise _Failed("the device refused %s: %s (code %s)"
                              % (method, error.message, error.code))
            if isinstance(error, TimedOut):
                raise _Failed("the device did not answer %s within %g s" % (method, timeout))
            if isinstance(error, Offline):
                raise _Failed("the device went offline during %s" % method)
            if isinstance(error, Busy):
                raise _Failed("the device has too many calls in flight for %s" % method)
            if isinstance(error, DomainError):
                # E.g. the device does not read its connection (503), or a
                # chunk too large for the device channel (413).
                raise _Failed("%s could not be sent: %s" % (method, error.message))
            if isinstance(error, _Failed):
                raise error
            failure.raiseException()

        return d.addErrback(failed)

    def _progress(self, update: _Update, sent: int) -> None:
        status = update.status
        status["sent"] = sent
        size = status["size"]
        percent = 100 if size <= 0 else min(100, sent * 100 // size)
        if percent != status["percent"]:
            status["percent"] = percent
            self._save(update)
            self.fleet.publish(
                update.device, "ota.progress",
                {"update": status["id"], "percent": percent, "sent": sent, "size": size},
            )

    def _transferred(self, update: _Update) -> None:
        """The device has the firmware and reboots into it."""
        if self._updates.get(update.device_id) is not update:
            return
        self._forget_file(update)
        update.status["sent"] = update.status["size"]
        update.status["percent"] = 100
        update.status["state"] = "rebooting"
        update.reconnected = False
        self._arm_reboot_timer(update)
        self._changed(update)

    def _arm_reboot_timer(self, update: _Update) -> None:
        timeout = self.config["ota.reboot_timeout"]
        update.timer = self.clock.callLater(
            timeout, self._reboot_timed_out, update,
            "the device did not come back with new firmware within %g s" % timeout,
        )

    def _reboot_timed_out(self, update: _Update, reason: str) -> None:
        if update.driver is not None and self.fleet.router.node_alive(update.driver):
            return  # the node that drove it says so (its own timer)
        self._fail(update, reason)

    # Updates driven by other nodes of a cluster

    def remote_event(self, event: Event, node: str) -> None:
        """A cluster hub observer: an event another node published. Every
        node keeps the updates that await their device (``rebooting``,
        ``uncommitted``) whichever node drove the transfer, so that the
        node the device comes back to finishes the update (its info, then
        OTA.Commit), even if the driving node died meanwhile; and so that
        ``POST .../ota/commit`` works through any node."""
        status = event.data
        if event.name == "job.state" and isinstance(status, dict) \
                and (status.get("reason") or {}).get("force"):
            self.stop_job(event.device_id, "the job was cancelled with force")
            return
        if event.name != "ota.status" or not isinstance(status, dict):
            return
        state, update_id = status.get("state"), status.get("id")
        mine = self._updates.get(event.device_id)
        same = mine is not None and mine.status.get("id") == update_id
        if state in FINISHED or state in TRANSFERRING:
            # Over (then nothing is left to do here), or a new one started
            # (which replaces the one awaited here).
            if mine is not None and (same or mine.state in AWAITING):
                self._drop(mine)
            return
        if state not in AWAITING:
            return
        if same:
            assert mine is not None
            mine.status = dict(status)
            if state == "uncommitted" and mine.timer is not None and mine.timer.active():
                mine.timer.cancel()
            return
        if mine is not None:
            if mine.state in TRANSFERRING:
                return  # (cannot be: one transfer a device)
            self._drop(mine)
        # Enough of the device to tell its subscribers; its info, when it is
        # back here, brings the whole record.
        device = Device(event.device_id, event.account_id, "", 0.0, event.shared_with)
        update = _Update(device, dict(status), None, driver=node)
        self._updates[event.device_id] = update
        if state == "rebooting":
            self._arm_reboot_timer(update)
        else:
            update.reconnected = True

    def stop_job(self, job_id: str, reason: str) -> int:
        """Stop the transfers of fleet job C{job_id} driven here (cancelled
        with force): a push sends no more chunks and never OTA.End, so the
        device does not switch to the new firmware; a pull's download link
        is revoked (a download the device has begun may still finish). An
        update past its transfer (rebooting, uncommitted) is not stopped.
        Return how many were stopped."""
        stopped = [u for u in self._updates.values()
                   if u.status.get("job") == job_id and u.state in TRANSFERRING
                   and u.driver is None]
        for update in stopped:
            self._fail(update, reason)
        return len(stopped)

    def _drop(self, update: _Update) -> None:
        if update.timer is not None and update.timer.active():
            update.timer.cancel()
        if self._updates.get(update.device_id) is update:
            del self._updates[update.device_id]

    # What the device says after the transfer

    # The names of the events L{device_event} acts on.
    DEVICE_EVENTS = ("online", "rpc.out.OTAState")

    def device_event(self, event: Event) -> None:
        """A fleet event observer: a device came back online, or said how
        its own update goes (Mongoose OS's Dash.OTAState {state, msg})."""
        update = self._updates.get(event.device_id)
        if update is None:
            return
        if event.name == "online":
            if update.state in AWAITING:
                update.reconnected = True
        elif event.name == "rpc.out.OTAState" and isinstance(event.data, dict):
            said = {k: event.data[k] for k in ("state", "msg")
                    if isinstance(event.data.get(k), (str, int, float))}
            if said:
                update.status["device_state"] = dict(said, t=self.fleet.now())
                self._changed(update)

    def device_info(self, device: Device, info: dict[str, Any]) -> None:
        """A fleet info observer: what a device said of itself."""
        update = self._updates.get(device.id)
        if update is None or update.state not in AWAITING or not update.reconnected:
            return
        fw_id = info.get("fw_id")
        if fw_id is None:
            return
        update.device = device
        status = update.status
        before = status.get("fw_id_before")
        if update.state == "rebooting":
            if fw_id == before:
                self._fail(
                    update,
                    "the device came back with the firmware it had (fw_id %s): "
                    "the update did not take" % fw_id,
                )
                return
            if update.timer is not None and update.timer.active():
                update.timer.cancel()
            status["state"] = "uncommitted"
            status["fw_id"] = fw_id
            if "fw_version" in info:
                status["fw_version"] = info["fw_version"]
            self._changed(update)
            log.info("device {id}: new firmware {fw_id}, not committed yet",
                     id=device.id, fw_id=fw_id)
            if status["auto_commit"]:
                d = ensureDeferred(self._commit(update))
                d.addErrback(self._commit_failed_quietly, update)
        elif fw_id == before:
            self._fail(
                update,
                "the device reverted to its previous firmware (fw_id %s) before the "
                "update was committed" % fw_id,
            )

    # Committing

    async def commit(self, device_id: str) -> dict[str, Any]:
        """
        Call OTA.Commit on the device; return the status.

        @raise Conflict: no update of the device awaits a commit.
        @raise Offline, DeviceFailed, TimedOut: the call failed.
        """
        update = self._updates.get(device_id)
        if update is None or update.state != "uncommitted":
            raise Conflict("device %s has no firmware update waiting to be committed" % device_id)
        return await self._commit(update)

    async def _commit(self, update: _Update) -> dict[str, Any]:
        try:
            await self.fleet.router.call(
                update.device_id, "OTA.Commit", None, self.config["ota.step_timeout"]
            )
        except DomainError as e:
            update.status["reason"] = "OTA.Commit failed: %s" % e.message
            self._save(update)
            raise
        if self._updates.get(update.device_id) is update:
            del self._updates[update.device_id]
        update.status["state"] = "committed"
        update.status.pop("reason", None)
        self._changed(update)
        log.info("device {id}: firmware {fw_id} committed",
                 id=update.device_id, fw_id=update.status.get("fw_id"))
        return update.status

    def _commit_failed_quietly(self, failure: Failure, update: _Update) -> None:
        if failure.check(DomainError):
            log.info("device {id}: automatic OTA.Commit failed: {error}",
                     id=update.device_id, error=failure.getErrorMessage())
        else:
            log.failure("device {id}: automatic OTA.Commit", failure, id=update.device_id)

    # Pull downloads

    def take_download(
        self, secret: str, use: bool = True
    ) -> tuple[_Update, str, int] | None:
        """The update a one-time link belongs to, its file and size; the
        link is used up (unless not C{use}: a HEAD request). None if it is
        unknown, used or expired."""
        update = self._downloads.get(secret)
        if update is None or update.path is None or update.state != "downloading":
            return None
        if use:
            del self._downloads[secret]
        return update, update.path, update.status["size"]

    def served(self, update: _Update, sent: int) -> None:
        """C{sent} bytes of a pull download went out to the device."""
        if update.state == "downloading":
            self._progress(update, sent)

    # Endings

    def _fail(self, update: _Update, reason: str) -> None:
        if update.state in FINISHED:
            return
        if update.timer is not None and update.timer.active():
            update.timer.cancel()
        if self._updates.get(update.device_id) is update:
            del self._updates[update.device_id]
        self._forget_file(update)
        update.status["state"] = "failed"
        update.status["reason"] = reason
        self._changed(update)
        log.info("device {id}: firmware update {update} failed: {reason}",
                 id=update.device_id, update=update.status["id"], reason=reason)

    def _crashed(self, failure: Failure, update: _Update) -> None:
        log.failure("device {id}: firmware update", failure, id=update.device_id)
        self._fail(update, "internal error")

    def _forget_link(self, update: _Update) -> None:
        if update.secret is not None:
            self._downloads.pop(update.secret, None)
            update.secret = None

    def _forget_file(self, update: _Update) -> None:
        self._forget_link(update)
        if update.path is not None:
            try:
                os.unlink(update.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warn("could not delete {path}: {error}", path=update.path, error=e)
            update.path = None

    def _changed(self, update: _Update) -> None:
        self._save(update)
        self.fleet.publish(update.device, "ota.status", dict(update.status))

    def _save(self, update: _Update) -> None:
        now = self.fleet.now()
        update.status["updated"] = now
        d = self.fleet.store.set_ota_status(update.device_id, dict(update.status), now)
        d.addErrback(self._save_failed, update)
        # Remembered so that a shutdown can wait for the last writes.
        update.saved = [s for s in update.saved if not s.called] + [d]

    def _save_failed(self, failure: Failure, update: _Update) -> None:
        log.warn("device {id}: could not store the OTA status: {error}",
                 id=update.device_id, error=failure.getErrorMessage())


class Firmware:
    """Firmware updates as people and tools ask for them: each use case
    checks what the caller may do, then hands over to the L{OtaManager}."""

    def __init__(self, ota: OtaManager, devices: Devices) -> None:
        self._ota = ota
        self._devices = devices
        # Uploads being received, in all and by key ID.
        self._uploads = 0
        self._uploads_by_key: dict[str, int] = {}

    async def prepare(self, by: ApiKey, device_id: str) -> Device:
        """Check, before the firmware file is taken in, that C{by} may
        update the device's firmware, that none is being sent to it and that
        it is online. Fire with the device."""
        device = await self._devices.visible(by, device_id)
        access.require_owner(by, device, "update a device's firmware")
        self._ota.check_not_running(device_id)
        if not self._devices.online(device_id):
            raise Offline("device %s is offline" % device_id)
        return device

    def upload_slot(self, by: ApiKey) -> Callable[[], None]:
        """Take one of the firmware uploads C{by} and dashd may receive at
        once (ota.max_uploads_per_key, ota.max_uploads); return what gives
        it back (once the upload's request has ended).
        @raise Busy: all taken."""
        config = self._ota.config
        mine = self._uploads_by_key.get(by.id, 0)
        if mine >= config["ota.max_uploads_per_key"]:
            raise Busy("key %s is already sending %d firmware upload(s), its limit; try again "
                       "once one has arrived" % (by.id, mine), retry_after=5)
        if self._uploads >= config["ota.max_uploads"]:
            raise Busy("dashd is receiving %d firmware uploads, its limit; try again shortly"
                       % self._uploads, retry_after=5)
        self._uploads += 1
        self._uploads_by_key[by.id] = mine + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._uploads -= 1
            left = self._uploads_by_key.pop(by.id, 1) - 1
            if left > 0:
                self._uploads_by_key[by.id] = left

        return release

    async def start(
        self,
        device: Device,
        path: str,
        size: int,
        filename: str | None,
        content_type: str | None,
        pull: bool,
        auto_commit: bool,
        commit_timeout: int,
    ) -> dict[str, Any]:
        """Check the file at C{path} (which the manager now owns, and
        deletes if it refuses it) and start sending it, pushed or pulled.
        Fire with the update's status."""
        try:
            pull_base_url = self._ota.pull_base_url(device.id) if pull else None
            limit = self._ota.config["ota.max_bytes"]
            if size > limit:
                raise TooLarge("the firmware file is %d bytes, more than the limit of %d"
                               % (size, limit))
            if size == 0:
                raise Invalid("the firmware file is empty")
            kind = firmware_kind(filename, content_type)
            manifest = await self._ota.validate(path, kind)
            return self._ota.start_update(
                device, path, size, filename or ("firmware." + kind), kind, manifest,
                pull_base_url=pull_base_url, auto_commit=auto_commit,
                commit_timeout=commit_timeout,
            )
        except BaseException:
            _delete(path)
            raise

    async def status(self, by: ApiKey, device_id: str) -> dict[str, Any] | None:
        """The status of the device's last update, or None."""
        await self._devices.visible(by, device_id)
        if by.kind == access.RESTRICTED:
            raise Forbidden("restricted keys may not read a device's firmware update status")
        return await self._ota.fleet.store.get_ota_status(device_id)

    async def commit(self, by: ApiKey, device_id: str) -> dict[str, Any]:
        """C{OTA.Commit} on a device back with new firmware; fire with the
        status."""
        device = await self._devices.visible(by, device_id)
        access.require_owner(by, device, "commit a device's firmware")
        return await self._ota.commit(device_id)

    def take_download(self, secret: str, use: bool = True) -> tuple[Any, str, int] | None:
        """See L{OtaManager.take_download}: the link is its own credential."""
        return self._ota.take_download(secret, use)

    def served(self, update: Any, sent: int) -> None:
        self._ota.served(update, sent)


def _delete(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _cancelled() -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(_Failed("the update ended"))
    return d
