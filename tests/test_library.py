"""
The firmware library, end to end: an image uploaded once (checked as a
device's upload is), listed, downloaded, sent to devices with
``POST /devices/:id/ota?firmware=ID``, deleted; and what is refused.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest_twisted

from support import SECRETS, Client, connect_device, device_online
from test_ota import make_bin, make_zip, ota_state, sha256


async def _key(admin: Client, **body: Any) -> Client:
    reply = await admin.post("/api/v2/keys", body)
    assert reply.status == 200, reply
    SECRETS.add(reply.body["key"])
    return Client(admin.server, reply.body["key"])


async def add_image(admin: Client, path: str, content_type: str = "application/zip") -> dict:
    reply = await admin.upload("/api/v2/firmware", path, content_type)
    assert reply.status == 201, reply
    return reply.body


@pytest_twisted.ensureDeferred
async def test_an_image_uploaded_once_goes_to_devices(server, admin: Client, tmp_path):
    # Larger than a chunk of the store (64 KiB): several chunks.
    fw = make_zip(str(tmp_path / "fw.zip"), build_id="20261201-lib", size=200_000)
    image = await add_image(admin, fw)
    assert image["kind"] == "zip" and image["name"] == "fw.zip"
    assert image["size"] == os.path.getsize(fw) and image["sha256"] == sha256(fw)
    assert image["manifest"]["build_id"] == "20261201-lib"
    here = "/api/v2/firmware/images/" + image["id"]
    listed = (await admin.get("/api/v2/firmware")).body
    assert image["id"] in [i["id"] for i in listed]
    assert (await admin.get(here)).body == image

    download = await admin.get(here + "/file")
    assert download.status == 200
    assert hashlib.sha256(download.raw).hexdigest() == image["sha256"]
    assert download.headers.getRawHeaders("content-type") == ["application/zip"]

    # Two devices get it from the library, no upload each.
    sims = []
    try:
        ids = []
        for _ in range(2):
            device_id, token = await admin.register()
            sims.append(await connect_device(server, token))
            await device_online(admin, device_id)
            ids.append(device_id)
        for device_id in ids:
            reply = await admin.post("/api/v2/devices/%s/ota?firmware=%s&auto_commit=true"
                                     % (device_id, image["id"]))
            assert reply.status == 202, reply
            assert reply.body["file"] == "fw.zip" and reply.body["size"] == image["size"]
        for device_id, sim in zip(ids, sims):
            status = await ota_state(admin, device_id, "committed", 30)
            assert status["manifest"]["build_id"] == "20261201-lib"
            assert sim.ota_image_sha256 == image["sha256"]
    finally:
        for sim in sims:
            await sim.stop()

    deleted = await admin.delete(here)
    assert deleted.status == 200 and deleted.body["id"] == image["id"]
    assert (await admin.get(here)).status == 404
    assert (await admin.get(here + "/file")).status == 404
    assert image["id"] not in [i["id"] for i in (await admin.get("/api/v2/firmware")).body]
    assert (await admin.delete(here)).status == 404


@pytest_twisted.ensureDeferred
async def test_a_bin_as_the_raw_body(server, admin: Client, tmp_path):
    fw = make_bin(str(tmp_path / "app.bin"), 70_000)
    with open(fw, "rb") as f:
        raw = f.read()
    reply = await admin.request("POST", "/api/v2/firmware?filename=app.bin", raw=raw,
                                headers={"Content-Type": "application/octet-stream"})
    assert reply.status == 201, reply
    assert reply.body["kind"] == "bin" and reply.body["sha256"] == sha256(fw)
    assert "manifest" not in reply.body
    assert reply.headers.getRawHeaders("location") == [
        "/api/v2/firmware/images/" + reply.body["id"]]
    download = await admin.get("/api/v2/firmware/images/%s/file" % reply.body["id"])
    assert download.raw == raw


@pytest_twisted.ensureDeferred
async def test_bad_images_and_bad_requests_are_refused(server, admin: Client, tmp_path):
    before = [i["id"] for i in (await admin.get("/api/v2/firmware")).body]
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    reply = await admin.upload("/api/v2/firmware", str(empty))
    assert (reply.status, reply.body["error"]["message"]) == (400, "the firmware file is empty")
    no_manifest = make_zip(str(tmp_path / "nm.zip"), build_id="x", manifest=False)
    reply = await admin.upload("/api/v2/firmware", no_manifest, "application/zip")
    assert reply.status == 400 and "manifest.json" in reply.body["error"]["message"]
    text = tmp_path / "notes.txt"
    text.write_bytes(b"hello")
    reply = await admin.upload("/api/v2/firmware", str(text), "text/plain")
    assert reply.status == 415 and "unknown kind of firmware file" in \
        reply.body["error"]["message"]
    reply = await admin.request("POST", "/api/v2/firmware?colour=red", raw=b"x",
                                headers={"Content-Type": "application/octet-stream"})
    assert reply.status == 400
    assert reply.body["error"]["message"] == \
        "unknown query argument(s): colour (allowed: filename)"

    reader = await _key(admin, kind="read-only", name="library reader")
    reply = await reader.upload("/api/v2/firmware", make_bin(str(tmp_path / "a.bin"), 100))
    assert reply.status == 403
    assert reply.body["error"]["message"] == \
        "only admin keys may add firmware to the library; this key is read-only"
    # Nothing was stored.
    assert [i["id"] for i in (await admin.get("/api/v2/firmware")).body] == before

    image = await add_image(admin, make_bin(str(tmp_path / "b.bin"), 1000),
                            "application/octet-stream")
    # Read-only keys read the library, and may not delete from it.
    assert image["id"] in [i["id"] for i in (await reader.get("/api/v2/firmware")).body]
    reply = await reader.delete("/api/v2/firmware/images/" + image["id"])
    assert reply.status == 403
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        reply = await admin.post("/api/v2/devices/%s/ota?firmware=fnosuchimage0" % device_id)
        assert (reply.status, reply.body["error"]["message"]) == (
            400, "no such firmware: fnosuchimage0")
        reply = await admin.request(
            "POST", "/api/v2/devices/%s/ota?firmware=%s&filename=x.bin" % (device_id,
                                                                           image["id"]),
            raw=b"\xe9" * 100, headers={"Content-Type": "application/octet-stream"})
        assert (reply.status, reply.body["error"]["message"]) == (
            400, "send either a file or ?firmware=ID (an image of the library), not both")
        assert not [m for m in sim.methods if m.startswith("OTA.")]
    finally:
        await sim.stop()
    # A restricted key has no part in the library.
    restricted = await _key(admin, kind="restricted", name="library customer",
                            scope={"devices": {device_id: {"read": ["*"]}}})
    reply = await restricted.get("/api/v2/firmware")
    assert (reply.status, reply.body["error"]["message"]) == (
        403, "restricted keys may not use the firmware library")


@pytest_twisted.ensureDeferred
async def test_another_account_s_images_are_not_seen(server, admin: Client, tmp_path):
    image = await add_image(admin, make_bin(str(tmp_path / "c.bin"), 500),
                            "application/octet-stream")
    created = await admin.post("/api/v2/accounts", {"name": "library other"})
    assert created.status == 200, created
    SECRETS.add(created.body["admin_key"]["key"])
    other = Client(admin.server, created.body["admin_key"]["key"])
    assert image["id"] not in [i["id"] for i in (await other.get("/api/v2/firmware")).body]
    here = "/api/v2/firmware/images/" + image["id"]
    for reply in (await other.get(here), await other.get(here + "/file"),
                  await other.delete(here)):
        assert (reply.status, reply.body["error"]["message"]) == (
            404, "no such firmware: " + image["id"])
    # Its own device may not be sent another account's image.
    device_id, token = await other.register()
    sim = await connect_device(server, token)
    try:
        await device_online(other, device_id)
        reply = await other.post("/api/v2/devices/%s/ota?firmware=%s" % (device_id, image["id"]))
        assert (reply.status, reply.body["error"]["message"]) == (
            400, "no such firmware: " + image["id"])
    finally:
        await sim.stop()
    assert (await admin.get(here)).status == 200
