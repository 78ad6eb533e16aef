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

import os
import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.protocols.basic import FileSender

from dashd.domain import access
from dashd.api.base import ApiBase, app
from dashd.errors import BadRequest, Forbidden, NotFound, TooLarge
from dashd.app.firmware import OtaManager, firmware_kind

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
UPLOAD_ARGS = ("mode", "auto_commit", "commit_timeout", "filename", "access_token")


def _arg(request: Any, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("%s is not valid UTF-8" % name)


def request_base_url(request: Any) -> str:
    """The scheme and host the request was sent to: where the device finds
    dashd too, unless ota.public_url says otherwise."""
    scheme = "https" if request.isSecure() else "http"
    host = request.getHeader(b"host")
    if host:
        return "%s://%s" % (scheme, host.decode("latin-1"))
    address = request.getHost()
    return "%s://%s:%d" % (scheme, address.host, address.port)


def _delete(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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


class OtaRoutes(ApiBase):
    # Given by the service (dashd.assembly); see dashd.app.firmware.OtaManager.
    ota: OtaManager

    @app.route("/api/v2/devices/<device_id>/ota", methods=["POST"])
    async def upload_firmware(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        unknown = sorted(a.decode("latin-1") for a in request.args
                         if a.decode("latin-1") not in UPLOAD_ARGS)
        if unknown:
            raise BadRequest("unknown query argument(s): %s (allowed: mode, auto_commit, "
                             "commit_timeout, filename)" % ", ".join(unknown))
        mode = _arg(request, "mode") or "push"
        if mode not in ("push", "pull"):
            raise BadRequest("mode must be push or pull")
        auto = _arg(request, "auto_commit") or "false"
        if auto not in _TRUE + _FALSE:
            raise BadRequest("auto_commit must be true or false")
        commit_timeout = self.config["ota.commit_timeout"]
        given = _arg(request, "commit_timeout")
        if given is not None:
            if not re.fullmatch(r"[0-9]{1,8}", given) or int(given) > 86400 * 30:
                raise BadRequest("commit_timeout must be a whole number of seconds (at most 30 days)")
            commit_timeout = int(given)
        device = await self.visible_device(key, device_id)
        access.require_owner(key, device, "update a device's firmware")
        self.ota.check_not_running(device_id)

        upload = getattr(request, "upload", None)
        if upload is None:
            raise BadRequest("the firmware upload was not received")  # pragma: no cover
        if upload.error is not None:
            raise BadRequest(upload.error)
        limit = self.config["ota.max_bytes"]
        if upload.size > limit:
            raise TooLarge("the firmware file is %d bytes, more than the limit of %d"
                           % (upload.size, limit))
        if upload.size == 0:
            raise BadRequest("the firmware file is empty")
        filename = upload.filename if upload.multipart else _arg(request, "filename")
        # The route owns the file from here (the request may end while it is
        # checked): the update takes it over, or it goes.
        path = upload.claim()
        try:
            kind = firmware_kind(filename, upload.content_type)
            manifest = await self.ota.validate(path, kind)
            base = None
            if mode == "pull":
                base = self.config["ota.public_url"] or request_base_url(request)
            status = self.ota.start_update(
                device, path, upload.size, filename or ("firmware." + kind), kind, manifest,
                pull_base_url=base, auto_commit=auto in _TRUE, commit_timeout=commit_timeout,
            )
        except BaseException:
            _delete(path)
            raise
        request.setResponseCode(202)
        request.setHeader(b"location", b"/api/v2/devices/%s/ota" % device_id.encode("ascii"))
        return self.json(request, status)

    @app.route("/api/v2/devices/<device_id>/ota", methods=["GET"])
    async def firmware_status(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        await self.visible_device(key, device_id)
        if key.kind == access.RESTRICTED:
            raise Forbidden("restricted keys may not read a device's firmware update status")
        return self.json(request, await self.fleet.store.get_ota_status(device_id))

    @app.route("/api/v2/devices/<device_id>/ota/commit", methods=["POST"])
    async def commit_firmware(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        device = await self.visible_device(key, device_id)
        access.require_owner(key, device, "commit a device's firmware")
        return self.json(request, await self.ota.commit(device_id))

    @app.route("/api/v2/firmware/<secret>", methods=["GET"])
    def download_firmware(self, request: Any, secret: str) -> Any:
        head = request.method == b"HEAD"
        found = self.ota.take_download(secret, use=not head)
        if found is None:
            raise NotFound("no such firmware download (a link works once, while its update runs)")
        update, path, size = found
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % size)
        if head:
            return b""
        f = open(path, "rb")
        consumer = _CountingConsumer(request, lambda sent: self.ota.served(update, sent))
        d: Deferred[Any] = FileSender().beginFileTransfer(f, consumer)

        def done(result: Any) -> bytes:
            f.close()
            return b""

        return d.addBoth(done)
