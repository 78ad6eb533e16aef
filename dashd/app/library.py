"""
The firmware library: an image (a Mongoose OS ``.zip`` or a ``.bin``)
uploaded once, checked as a per-device upload is (L{dashd.app.firmware}:
its kind, size and, for a zip, every entry and its ``manifest.json``),
stored with its SHA-256 and manifest, and then sent to any number of
devices (``POST /devices/:id/ota?firmware=ID``, and firmware jobs).

The image lives in the store, in chunks (L{dashd.store.firmware_sql}), so
that every node of a cluster can send it and a restart keeps it. Memory
stays bounded by a chunk: the upload is spooled to a file as it arrives
(L{dashd.api.site.SpoolRule}), checked and hashed off the reactor thread,
and copied into the store a chunk at a time; sending it to a device copies
it back to a file of the update a chunk at a time (its SHA-256 checked
again), which the L{OtaManager} sends as any upload.

Who: admin keys of an account add and delete its images; its admin and
read-only keys list and download them; restricted keys none. A device is
updated from an image of its owner's account only, by the owner's admin
keys (as any firmware update).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from dashd.app.firmware import Firmware, OtaManager, firmware_kind
from dashd.domain import access, tokens
from dashd.domain.errors import Forbidden, Invalid, NotFound, TooLarge
from dashd.domain.model import MAX_NAME_LENGTH, ApiKey
from dashd.store.firmware_sql import CHUNK_BYTES

log = Logger()

# Seconds after which an image whose upload never completed is deleted.
INCOMPLETE_AFTER = 3600.0
ID_PATTERN = r"f[a-z0-9]{12}"


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK_BYTES)
            if not block:
                return h.hexdigest()
            h.update(block)


def _read_at(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _append(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _delete(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class FirmwareLibrary:
    """The use cases of the library (see the module's doc)."""

    def __init__(self, ota: OtaManager, firmware: Firmware) -> None:
        self._ota = ota
        self._firmware = firmware
        self._fleet = ota.fleet
        self._store = ota.fleet.store
        self._config = ota.config
        self._reactor = ota.reactor

    def _thread(self, f: Any, *args: Any) -> Any:
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def prepare_upload(self, by: ApiKey) -> Any:
        """Check, from the headers alone, that C{by} may add an image and take
        one of the uploads it and dashd may receive at once; return what gives
        it back."""
        access.require_admin(by, "add firmware to the library")
        if access.is_console(by):
            raise Forbidden("the library's images belong to an account: upload with one of "
                            "its admin keys")
        return self._firmware.upload_slot(by)

    async def add(self, by: ApiKey, path: str, size: int, filename: str | None,
                  content_type: str | None) -> dict[str, Any]:
        """Check the file at C{path} (which this now owns and deletes) and
        store it as an image of C{by}'s account; fire with its record."""
        try:
            access.require_admin(by, "add firmware to the library")
            limit = self._config["ota.max_bytes"]
            if size > limit:
                raise TooLarge("the firmware file is %d bytes, more than the limit of %d"
                               % (size, limit))
            if size == 0:
                raise Invalid("the firmware file is empty")
            kind = firmware_kind(filename, content_type)
            name = filename or ("firmware." + kind)
            if len(name) > MAX_NAME_LENGTH:
                raise Invalid("the file name must be at most %d characters" % MAX_NAME_LENGTH,
                              "filename")
            manifest = await self._ota.validate(path, kind)
            digest = await self._thread(_digest, path)
            image = {"id": tokens.new_id("f"), "account_id": by.account_id, "key_id": by.id,
                     "name": name, "kind": kind, "size": size, "sha256": digest,
                     "manifest": manifest, "created": self._fleet.now()}
            await self._store.begin_firmware(image,
                                             self._config["firmware.max_images_per_account"])
            try:
                n = 0
                for offset in range(0, size, CHUNK_BYTES):
                    data = await self._thread(_read_at, path, offset, CHUNK_BYTES)
                    await self._store.put_firmware_chunk(image["id"], n, data)
                    n += 1
                stored = await self._store.complete_firmware(image["id"])
            except BaseException:
                # Never listed; deleted now, or by the next start.
                self._store.delete_firmware(image["id"]).addErrback(lambda _: None)
                raise
            log.info("firmware {id} ({name}, {size} bytes) added by {by}", id=image["id"],
                     name=name, size=size, by=by.id)
            return view(stored)
        finally:
            _delete(path)

    def _check_reader(self, by: ApiKey) -> None:
        if by.kind == access.RESTRICTED:
            raise Forbidden("restricted keys may not use the firmware library")

    async def get(self, by: ApiKey, firmware_id: str) -> dict[str, Any]:
        """The image's record, if C{by} may see it."""
        self._check_reader(by)
        image = await self._store.get_firmware(firmware_id)
        if image is None or (image["account_id"] != by.account_id
                             and not access.is_console(by)):
            raise NotFound("no such firmware: %s" % firmware_id)
        return image

    async def list(self, by: ApiKey) -> list[dict[str, Any]]:
        self._check_reader(by)
        account = None if access.is_console(by) else by.account_id
        return [view(i) for i in await self._store.list_firmware(account)]

    async def chunk(self, image: dict[str, Any], n: int) -> bytes | None:
        """Chunk C{n} of the image (None past its end)."""
        return await self._store.firmware_chunk(image["id"], n)

    async def delete(self, by: ApiKey, firmware_id: str) -> dict[str, Any]:
        """Delete the image, unless a job that has not ended uses it."""
        image = await self.get(by, firmware_id)
        access.require_admin(by, "delete firmware from the library")
        if not await self._store.delete_firmware(firmware_id):
            raise NotFound("no such firmware: %s" % firmware_id)
        log.info("firmware {id} deleted by {by}", id=firmware_id, by=by.id)
        return view(image)

    async def copy_out(self, image: dict[str, Any]) -> str:
        """A file of the image in the OTA directory, its SHA-256 checked (for
        an update, which owns and deletes it)."""
        os.makedirs(self._ota.directory, mode=0o700, exist_ok=True)
        path = os.path.join(self._ota.directory, "library-%s-%s.part"
                            % (image["id"], tokens.new_id("")))
        h = hashlib.sha256()
        try:
            n = 0
            while True:
                data = await self._store.firmware_chunk(image["id"], n)
                if data is None:
                    break
                h.update(data)
                await self._thread(_append, path, data)
                n += 1
            if h.hexdigest() != image["sha256"]:
                raise Invalid("firmware %s is damaged in the store: its SHA-256 no longer "
                              "matches" % image["id"])
        except BaseException:
            _delete(path)
            raise
        return path

    async def update_device(self, by: ApiKey, device_id: str, firmware_id: str, pull: bool,
                            auto_commit: bool, commit_timeout: int,
                            job_id: str | None = None, update_id: str | None = None,
                            fence: Callable[[], bool] | None = None
                            ) -> dict[str, Any] | None:
        """Send image C{firmware_id} to the device (as C{POST
        /devices/:id/ota} sends an upload); fire with the update's status.
        A fleet job gives its C{job_id}, the C{update_id} it recorded, and
        a C{fence}, asked last thing before the update starts: if it says
        False (the node lost the job's lease) nothing starts, and this
        fires with None."""
        device = await self._firmware.prepare(by, device_id)
        try:
            image = await self.get(by, firmware_id)
        except NotFound:
            raise Invalid("no such firmware: %s" % firmware_id, "firmware") from None
        if image["account_id"] != device.account_id:
            raise Invalid("firmware %s belongs to another account than device %s"
                          % (firmware_id, device_id), "firmware")
        pull_base_url = self._ota.pull_base_url(device.id) if pull else None
        path = await self.copy_out(image)
        if fence is not None and not fence():
            _delete(path)
            return None
        try:
            return self._ota.start_update(
                device, path, image["size"], image["name"], image["kind"], image["manifest"],
                pull_base_url=pull_base_url, auto_commit=auto_commit,
                commit_timeout=commit_timeout, job_id=job_id, update_id=update_id)
        except BaseException:
            _delete(path)
            raise

    def stop_job_updates(self, job_id: str, reason: str) -> int:
        """Stop the transfers of job C{job_id} under way here (see
        L{OtaManager.stop_job}); return how many."""
        return self._ota.stop_job(job_id, reason)

    def sweep(self) -> Any:
        """Delete what uploads cut off by a restart left in the store."""
        d = self._store.drop_incomplete_firmware(self._fleet.now() - INCOMPLETE_AFTER)
        d.addErrback(lambda f: log.info("dropping incomplete firmware: {error}",
                                        error=f.getErrorMessage()))
        return d


def view(image: dict[str, Any]) -> dict[str, Any]:
    """An image as the API shows it."""
    out = {k: image[k] for k in ("id", "name", "kind", "size", "sha256", "created",
                                 "account_id", "key_id")}
    if image.get("manifest") is not None:
        out["manifest"] = image["manifest"]
    return out
