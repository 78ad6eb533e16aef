"""
/api/v2/devices/:id/ota: firmware updates (see L{dashd.app.firmware}).

- ``POST /devices/:id/ota``: the firmware as a multipart file part (``curl
  -F file=@fw.zip``) or as the raw body (name it with ``?filename=`` or its
  Content-Type). The body goes to a file in the data directory as it
  arrives (L{dashd.api.site.SpoolRule}); it is checked, then sent. Query:
  ``mode=push|pull``, ``auto_commit=true|false``, ``commit_timeout=SECONDS``
  (pull). Answers 202 with the update's status once it has started.
- ``GET /devices/:id/ota``: the status of the device's last update.
- ``POST /devices/:id/ota/commit``: ``OTA.Commit`` on a device back with
  new firmware.
- ``GET /firmware/SECRET``: the one-time download link of a pull update;
  the link is its own credential (the device has no API key).
"""

from __future__ import annotations

import re
from typing import Any

from urllib.parse import unquote

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.protocols.basic import FileSender

from dashd.api import status
from dashd.api.base import ApiBase, app
from dashd.api.site import Refusal
from dashd.app.firmware import MAX_COMMIT_TIMEOUT
from dashd.domain.errors import DomainError, Invalid, NotFound

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
AUTO_COMMIT_VALUES = _TRUE + _FALSE
UPLOAD_ARGS = ("mode", "auto_commit", "commit_timeout", "filename", "access_token", "firmware")


def _arg(request: Any, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("%s is not valid UTF-8" % name, name)


class _CountingConsumer:
    """Passes a download on to the request, telling how much went out."""

    def __init__(self, request: Any, progress: Any) -> None:
        self._request = request
        self._progress = progress
        self.sent = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._request.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._request.write(data)
        self.sent += len(data)
        self._progress(self.sent)


# The path of an upload, as the site's SpoolRule sees it (not decoded).
UPLOAD_PATH = re.compile(rb"^/api/v2/devices/([^/]+)/ota/?$")


def _options(request: Any) -> tuple[str, bool, int | None]:
    """The upload's query arguments: mode, auto_commit and commit_timeout
    (None: the default)."""
    unknown = sorted(a.decode("latin-1") for a in request.args
                     if a.decode("latin-1") not in UPLOAD_ARGS)
    if unknown:
        raise Invalid("unknown query argument(s): %s (allowed: mode, auto_commit, "
                      "commit_timeout, filename, firmware)" % ", ".join(unknown))
    mode = _arg(request, "mode") or "push"
    if mode not in ("push", "pull"):
        raise Invalid("mode must be push or pull", "mode")
    auto = _arg(request, "auto_commit") or "false"
    if auto not in AUTO_COMMIT_VALUES:
        raise Invalid("auto_commit must be true or false", "auto_commit")
    commit_timeout = None
    given = _arg(request, "commit_timeout")
    if given is not None:
        if not re.fullmatch(r"[0-9]{1,8}", given) or int(given) > MAX_COMMIT_TIMEOUT:
            raise Invalid("commit_timeout must be a whole number of seconds (at most 30 "
                          "days)", "commit_timeout")
        commit_timeout = int(given)
    _arg(request, "filename")
    return mode, auto in _TRUE, commit_timeout


class OtaRoutes(ApiBase):
    def upload_gate(self, request: Any) -> Deferred[Refusal | None]:
        """The site's gate of a firmware upload (L{dashd.api.site.SpoolRule}):
        from the headers alone, before any of the body is read, authenticate
        the key and check what the route will check (its query, the device,
        the key's right to update it, no update under way, the device
        online), and take one of the uploads the key and dashd may have in
        flight, until the request ends."""
        return ensureDeferred(self._upload_gate(request))

    async def _upload_gate(self, request: Any) -> Refusal | None:
        try:
            key = await self.authenticate(request)
            m = UPLOAD_PATH.match(request.path)
            if m is None:
                return None  # Klein answers it
            try:
                device_id = unquote(m.group(1).decode("ascii"), errors="strict")
            except UnicodeError:
                raise NotFound("no such device: %s" % m.group(1).decode("latin-1"))
            _options(request)
            await self.firmware.prepare(key, device_id)
            if _arg(request, "firmware") is not None:
                # An image of the library: no body to take in.
                return None
            release = self.firmware.upload_slot(key)
        except DomainError as e:
            code, headers, _ = status.answer(e)
            # For the audit log and the access log, as if the route had answered.
            request.dashd_error = e.message
            return Refusal(code, e.message, headers)
        request.notifyFinish().addBoth(lambda _: release())
        return None

    @app.route("/api/v2/devices/<device_id>/ota", methods=["POST"])
    async def upload_firmware(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        mode, auto_commit, commit_timeout = _options(request)
        if commit_timeout is None:
            commit_timeout = self.config["ota.commit_timeout"]
        device = await self.firmware.prepare(key, device_id)

        upload = getattr(request, "upload", None)
        firmware_id = _arg(request, "firmware")
        if firmware_id is not None:
            if upload is not None and upload.size:
                raise Invalid("send either a file or ?firmware=ID (an image of the library), "
                              "not both", "firmware")
            status = await self.application.library.update_device(
                key, device_id, firmware_id, pull=mode == "pull", auto_commit=auto_commit,
                commit_timeout=commit_timeout)
            request.setResponseCode(202)
            request.setHeader(b"location",
                              b"/api/v2/devices/%s/ota" % device_id.encode("ascii"))
            return self.json(request, status)
        if upload is None:
            raise Invalid("the firmware upload was not received")  # pragma: no cover
        if upload.error is not None:
            raise Invalid(upload.error)
        filename = upload.filename if upload.multipart else _arg(request, "filename")
        # The use case owns the file from here (the request may end while it
        # is checked): the update takes it over, or it goes.
        status = await self.firmware.start(
            device, upload.claim(), upload.size, filename, upload.content_type,
            pull=mode == "pull", auto_commit=auto_commit, commit_timeout=commit_timeout,
        )
        request.setResponseCode(202)
        request.setHeader(b"location", b"/api/v2/devices/%s/ota" % device_id.encode("ascii"))
        return self.json(request, status)

    @app.route("/api/v2/devices/<device_id>/ota", methods=["GET"])
    async def firmware_status(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, await self.firmware.status(key, device_id))

    @app.route("/api/v2/devices/<device_id>/ota/commit", methods=["POST"])
    async def commit_firmware(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, await self.firmware.commit(key, device_id))

    @app.route("/api/v2/firmware/<secret>", methods=["GET"])
    def download_firmware(self, request: Any, secret: str) -> Any:
        head = request.method == b"HEAD"
        found = self.firmware.take_download(secret, use=not head)
        if found is None:
            raise NotFound("no such firmware download (a link works once, while its update runs)")
        update, path, size = found
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % size)
        if head:
            return b""
        f = open(path, "rb")
        consumer = _CountingConsumer(request, lambda sent: self.firmware.served(update, sent))
        d: Deferred[Any] = FileSender().beginFileTransfer(f, consumer)

        def done(result: Any) -> bytes:
            f.close()
            return b""

        return d.addBoth(done)
