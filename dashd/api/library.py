"""
The firmware library (L{dashd.app.library}):

- ``POST /api/v2/firmware``: add an image, as a multipart file part or the
  raw body (named by ``?filename=`` or its Content-Type), spooled to a file
  as it arrives like a device's upload (L{upload_gate} decides from the
  headers); 201 with its record.
- ``GET /api/v2/firmware``: the account's images, newest first.
- ``GET`` and ``DELETE /api/v2/firmware/images/:id``: one image's record;
  deleting it (refused with 409 while a job that has not ended uses it).
- ``GET /api/v2/firmware/images/:id/file``: the image, streamed from the
  store a chunk at a time as the client reads.

(``GET /api/v2/firmware/SECRET`` is a pull update's one-time link,
L{dashd.api.ota}.) ``POST /devices/:id/ota?firmware=ID`` sends an image.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from zope.interface import implementer

from dashd.api import status
from dashd.api.base import ApiBase, app, text_arg
from dashd.api.site import Refusal
from dashd.domain.errors import DomainError, Invalid

log = Logger()

# The path of a library upload, as the site's SpoolRule sees it.
LIBRARY_UPLOAD_PATH = re.compile(rb"^/api/v2/firmware/?$")
_UPLOAD_ARGS = ("filename", "access_token")


def _check_args(request: Any) -> None:
    unknown = sorted(a.decode("latin-1") for a in request.args
                     if a.decode("latin-1") not in _UPLOAD_ARGS)
    if unknown:
        raise Invalid("unknown query argument(s): %s (allowed: filename)" % ", ".join(unknown))
    text_arg(request, "filename")


@implementer(IPullProducer)
class _ChunkProducer:
    """Writes an image to the request a chunk at a time, each read from the
    store when the request asks for more (one chunk in memory at most)."""

    def __init__(self, request: Any, library: Any, image: dict[str, Any]) -> None:
        self._request = request
        self._library = library
        self._image = image
        self._n = 0
        self._sent = 0
        self._reading = False
        self._stopped = False
        self.done: Deferred[None] = Deferred()

    def resumeProducing(self) -> None:
        if self._reading or self._stopped:
            return
        self._reading = True
        d = ensureDeferred(self._library.chunk(self._image, self._n))
        d.addCallbacks(self._got, self._failed)

    def _got(self, data: bytes | None) -> None:
        self._reading = False
        if self._stopped:
            return
        if data is None:
            self._finish()
            return
        self._n += 1
        self._sent += len(data)
        self._request.write(data)
        if self._sent >= self._image["size"]:
            self._finish()

    def _failed(self, failure: Any) -> None:
        self._reading = False
        if self._stopped:
            return
        log.info("firmware {id}: the download stopped: {error}", id=self._image["id"],
                 error=failure.getErrorMessage())
        self._stopped = True
        self._request.unregisterProducer()
        # The length was promised: cut the connection rather than end short.
        self._request.loseConnection()
        self.done.callback(None)

    def _finish(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._request.unregisterProducer()
        self.done.callback(None)

    def stopProducing(self) -> None:
        # The client went away.
        self._finish()


class LibraryRoutes(ApiBase):
    def library_gate(self, request: Any) -> Deferred[Refusal | None]:
        """The site's gate of a library upload: authenticate the key, check
        its query and its right to add images and take an upload slot, all
        before a byte of the body is read."""
        return ensureDeferred(self._library_gate(request))

    async def _library_gate(self, request: Any) -> Refusal | None:
        try:
            key = await self.authenticate(request)
            _check_args(request)
            release = self.application.library.prepare_upload(key)
        except DomainError as e:
            code, headers, _ = status.answer(e)
            request.dashd_error = e.message
            return Refusal(code, e.message, headers)
        request.notifyFinish().addBoth(lambda _: release())
        return None

    @app.route("/api/v2/firmware", methods=["POST"])
    async def add_firmware(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        _check_args(request)
        upload = getattr(request, "upload", None)
        if upload is None:
            raise Invalid("the firmware upload was not received")  # pragma: no cover
        if upload.error is not None:
            raise Invalid(upload.error)
        filename = upload.filename if upload.multipart else text_arg(request, "filename")
        image = await self.application.library.add(key, upload.claim(), upload.size, filename,
                                                   upload.content_type)
        request.setResponseCode(201)
        request.setHeader(b"location", b"/api/v2/firmware/images/%s" % image["id"].encode())
        return self.json(request, image)

    @app.route("/api/v2/firmware", methods=["GET"])
    async def list_firmware(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, await self.application.library.list(key))

    @app.route("/api/v2/firmware/images/<firmware_id>", methods=["GET"])
    async def get_firmware(self, request: Any, firmware_id: str) -> bytes:
        from dashd.app.library import view

        key = await self.authenticate(request)
        return self.json(request, view(await self.application.library.get(key, firmware_id)))

    @app.route("/api/v2/firmware/images/<firmware_id>", methods=["DELETE"])
    async def delete_firmware(self, request: Any, firmware_id: str) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, await self.application.library.delete(key, firmware_id))

    @app.route("/api/v2/firmware/images/<firmware_id>/file", methods=["GET"])
    async def firmware_file(self, request: Any, firmware_id: str) -> Any:
        key = await self.authenticate(request)
        image = await self.application.library.get(key, firmware_id)
        request.setHeader(b"content-type", b"application/zip" if image["kind"] == "zip"
                          else b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % image["size"])
        name = re.sub(r'[^A-Za-z0-9._-]', "_", image["name"])
        request.setHeader(b"content-disposition",
                          ('attachment; filename="%s"' % name).encode("ascii"))
        request.setHeader(b"x-content-sha256", image["sha256"].encode("ascii"))
        if request.method == b"HEAD":
            return b""
        producer = _ChunkProducer(request, self.application.library, image)
        request.registerProducer(producer, False)
        await producer.done
        return b""
