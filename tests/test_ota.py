"""
Firmware updates, end to end: a real dashd, simulated devices that
implement the OTA methods (or fail at a given step), real files on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import zipfile

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from support import (
    SECRETS,
    Client,
    DashdProcess,
    connect_device,
    device_online,
    eventually,
    rss_bytes,
    sleep,
    subscribe,
    within,
)
from test_rest import raw_http
from zipbomb import bomb


def make_zip(path: str, build_id: str, size: int = 100_000, manifest: bool = True) -> str:
    """A Mongoose OS style firmware zip: manifest.json and an image."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        if manifest:
            z.writestr("fw-esp32/manifest.json", json.dumps({
                "name": "fw", "platform": "esp32", "version": "2.0.0", "build_id": build_id,
            }))
        z.writestr("fw-esp32/app.bin", b"\xe9" + os.urandom(size))
    return path


def make_bin(path: str, size: int) -> str:
    with open(path, "wb") as f:
        f.write(b"\xe9" + os.urandom(size - 1))
    return path


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ota_frames(sim) -> list[dict]:
    return [f for f in sim.frames if str(f.get("method", "")).startswith("OTA.")]


async def ota_state(admin: Client, device_id: str, state: str, seconds: float = 15) -> dict:
    async def check():
        view = await admin.device(device_id)
        ota = view["ota"]
        return ota if ota and ota["state"] == state else None

    return await eventually(check, seconds)


async def usable(admin: Client, device_id: str) -> None:
    """The device answers calls (after a reconnect, if it had to)."""
    async def check():
        reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, {"ok": 1})
        return reply.status == 200 and reply.body == {"ok": 1}

    await eventually(check, 10, 0.2)


def firmware_dir_is_empty(server) -> bool:
    path = os.path.join(server.data_dir, "firmware")
    return not os.path.isdir(path) or os.listdir(path) == []


# The full update, both ways


@pytest_twisted.ensureDeferred
async def test_push_zip_with_progress_then_commit(server, admin: Client, tmp_path):
    device_id, token = await admin.register()
    # Slow flash writes, so that unanswered writes pile up to the window.
    sim = await connect_device(server, token, ota_write_delay=0.02)
    sub = await subscribe(server, admin.key)
    mine = lambda name: lambda e: e["id"] == device_id and e["name"] == name  # noqa: E731
    try:
        await device_online(admin, device_id)
        fw = make_zip(str(tmp_path / "fw.zip"), build_id="20261201-push")
        size = os.path.getsize(fw)
        reply = await admin.upload("/api/v2/devices/%s/ota" % device_id, fw, "application/zip")
        assert reply.status == 202, reply
        status = reply.body
        assert status["state"] == "uploading" and status["mode"] == "push"
        assert status["kind"] == "zip" and status["size"] == size and status["file"] == "fw.zip"
        assert status["manifest"]["build_id"] == "20261201-push"
        assert status["fw_id_before"] == "20261125-000000"
        assert reply.headers.getRawHeaders("location") == ["/api/v2/devices/%s/ota" % device_id]

        started = await sub.next(mine("ota.status"))
        assert started["data"]["state"] == "uploading"
        # Progress as it goes: percentages that only grow, up to 100.
        percents = []
        while not percents or percents[-1] < 100:
            event = await sub.next(mine("ota.progress"), seconds=30)
            percents.append(event["data"]["percent"])
        assert percents == sorted(percents) and len(percents) >= 20
        assert event["data"]["sent"] == size
        rebooting = await sub.next(mine("ota.status"))
        assert rebooting["data"]["state"] == "rebooting"

        # The device got exactly the file, a chunk at a time, never more than
        # ota.writes_in_flight (4 in the test server) unanswered.
        assert sim.ota_image_sha256 == sha256(fw)
        frames = ota_frames(sim)
        assert frames[0]["method"] == "OTA.Begin" and frames[0]["params"] == {"size": size}
        writes = [f for f in frames if f["method"] == "OTA.Write"]
        assert len(writes) == -(-size // 1024)
        assert all(len(f["params"]["data"]) <= 1368 for f in writes)  # 1024 bytes, base64
        assert sim.ota_max_pending_writes == 4
        assert frames[len(writes) + 1]["method"] == "OTA.End"
        assert all(f["dst"] == sim.src for f in frames)
        # None of the firmware went to the subscribers: among everything
        # received up to "rebooting" (published after OTA.End was
        # answered), no rpc.in.OTA.* event, and no event holding a chunk.
        sub.never(lambda e: e["name"].startswith("rpc.in.OTA."), "OTA calls announced")
        chunk = writes[len(writes) // 2]["params"]["data"]
        assert not [e for e in sub.received if chunk in json.dumps(e)]

        # It reboots into the new firmware: done, but not committed.
        back = await sub.next(mine("ota.status"), seconds=15)
        assert back["data"]["state"] == "uncommitted"
        assert back["data"]["fw_id"] == "20261201-push"
        view = await admin.device(device_id)
        assert view["ota"]["state"] == "uncommitted" and view["ota"]["percent"] == 100
        assert view["info"]["fw_id"] == "20261201-push"
        assert sim.ota_committed is False

        reply = await admin.post("/api/v2/devices/%s/ota/commit" % device_id)
        assert reply.status == 200, reply
        assert reply.body["state"] == "committed"
        assert sim.ota_committed is True
        committed = await sub.next(mine("ota.status"))
        assert committed["data"]["state"] == "committed"
        sub.never(lambda e: e["name"].startswith("rpc.in.OTA."), "OTA.Commit announced")
        # Nothing more to commit.
        reply = await admin.post("/api/v2/devices/%s/ota/commit" % device_id)
        assert reply.status == 409
        assert "no firmware update waiting to be committed" in reply.error["message"]
        assert firmware_dir_is_empty(server)
        # The outcome is in the device's history.
        reply = await admin.post("/api/v2/logs", {"start": 0, "device_id": device_id,
                                                  "limit": 1000})
        names = [e["name"] for e in reply.body["events"]]
        assert [e["data"]["state"] for e in reply.body["events"] if e["name"] == "ota.status"] \
            == ["uploading", "rebooting", "uncommitted", "committed"]
        assert "ota.progress" not in names
    finally:
        sub.close()
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_push_bin_as_raw_body_to_an_mdash_device_with_auto_commit(
    server, admin: Client, tmp_path
):
    device_id, token = await admin.register()
    sim = await connect_device(server, token, dialect="mdash")
    sub = await subscribe(server, admin.key)
    try:
        await device_online(admin, device_id)
        await eventually(lambda: _has_fw(admin, device_id))
        fw = make_bin(str(tmp_path / "app.bin"), 20_000 + 17)
        with open(fw, "rb") as f:
            raw = f.read()
        reply = await admin.request(
            "POST", "/api/v2/devices/%s/ota?filename=app.bin&auto_commit=true" % device_id,
            raw=raw, headers={"Content-Type": "application/octet-stream"},
        )
        assert reply.status == 202, reply
        assert reply.body["kind"] == "bin" and reply.body["auto_commit"] is True
        status = await ota_state(admin, device_id, "committed")
        assert status["fw_id"] == "bin-" + sha256(fw)[:12]
        assert sim.ota_image_sha256 == sha256(fw)
        assert sim.ota_committed is True and "OTA.Commit" in sim.methods
        # The mDash library reported its own progress with State.Set
        # notifications, which went to the shadow's reported.ota.percent:
        # growing to 100 as it wrote, then removed (null) at OTA.End.
        await sub.next(lambda e: e["id"] == device_id and e["name"] == "ota.status"
                       and e["data"]["state"] == "committed")
        percents = [e["data"]["state"]["reported"].get("ota", {}).get("percent")
                    for e in sub.matching(lambda e: e["id"] == device_id
                                          and e["name"] == "shadow.update")]
        progress = [p for p in percents if p is not None]
        assert len(progress) >= 10 and progress == sorted(progress) and progress[-1] == 100
        view = await admin.device(device_id)
        assert "percent" not in view["shadow"]["state"]["reported"].get("ota", {})
        await usable(admin, device_id)
    finally:
        sub.close()
        await sim.stop()


async def _has_fw(admin: Client, device_id: str) -> bool:
    return "fw_id" in (await admin.device(device_id))["info"]


@pytest_twisted.ensureDeferred
async def test_pull_mode_serves_a_one_time_link(server, admin: Client, tmp_path):
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    sub = await subscribe(server, admin.key)
    mine = lambda name: lambda e: e["id"] == device_id and e["name"] == name  # noqa: E731
    try:
        await device_online(admin, device_id)
        fw = make_zip(str(tmp_path / "fw.zip"), build_id="20261202-pull", size=200_000)
        reply = await admin.upload(
            "/api/v2/devices/%s/ota?mode=pull&commit_timeout=77" % device_id, fw,
            "application/zip",
        )
        assert reply.status == 202, reply
        assert reply.body["mode"] == "pull" and reply.body["state"] == "downloading"
        assert reply.body["commit_timeout"] == 77
        # Progress of the download, as dashd serves it.
        event = await sub.next(lambda e: mine("ota.progress")(e) and e["data"]["percent"] == 100,
                               seconds=20)
        assert event["data"]["sent"] == os.path.getsize(fw)
        status = await ota_state(admin, device_id, "uncommitted")
        assert status["fw_id"] == "20261202-pull"
        assert sim.ota_image_sha256 == sha256(fw)

        params = sim.ota_update_params
        assert params["commit_timeout"] == 77
        url = params["url"]
        secret = url.rsplit("/", 1)[1]
        SECRETS.add(secret)  # the fixture fails the test if dashd logs it
        assert url.startswith(server.url + "/api/v2/firmware/") and len(secret) >= 40
        assert not any(f.get("method", "").startswith("OTA.Write") for f in sim.frames)
        # The link worked once.
        reply = await Client(server, None).get(url[len(server.url):], key=None)
        assert reply.status == 404
        assert "a link works once" in reply.error["message"]
        assert "/api/v2/firmware/***" in server.log()
        reply = await admin.post("/api/v2/devices/%s/ota/commit" % device_id)
        assert (reply.status, reply.body["state"]) == (200, "committed")
        assert sim.ota_committed is True
        await sub.next(lambda e: mine("ota.status")(e) and e["data"]["state"] == "committed")
        # The link went to the device only: nothing any subscriber received
        # up to the end of the update holds it, nor announces an OTA call.
        assert not [e for e in sub.received if secret in json.dumps(e)]
        sub.never(lambda e: e["name"].startswith("rpc.in.OTA."), "OTA calls announced")
        await usable(admin, device_id)
    finally:
        sub.close()
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_the_pull_link_is_not_built_from_the_uploader_s_host(server, admin: Client,
                                                                   tmp_path):
    """The device was told to download from whatever Host the uploader
    sent (http://evil.example:666/...): the link is on the address the
    device itself connected to."""
    device_id, token = await admin.register()
    sim = await connect_device(server, token, ota_silent="OTA.Update")
    try:
        await device_online(admin, device_id)
        fw = make_bin(str(tmp_path / "fw.bin"), 5000)
        with open(fw, "rb") as f:
            reply = await admin.request(
                "POST", "/api/v2/devices/%s/ota?mode=pull&filename=fw.bin" % device_id,
                raw=f.read(), headers={"Host": "evil.example:666",
                                       "Content-Type": "application/octet-stream"})
        assert reply.status == 202, reply
        frames = await eventually(
            lambda: [f for f in sim.frames if f.get("method") == "OTA.Update"])
        url = (frames[0].get("params") or frames[0].get("args"))["url"]
        SECRETS.add(url.rsplit("/", 1)[1])
        assert url.startswith(server.url + "/api/v2/firmware/"), url
        assert "evil" not in url
    finally:
        await sim.stop()


def test_the_device_s_own_address():
    """From the device's handshake: its scheme and Host, or dashd's end of
    its connection when the Host is not a host."""
    from twisted.internet.address import IPv4Address, IPv6Address
    from zope.interface import directlyProvides
    from twisted.internet.interfaces import ISSLTransport
    from dashd.channel.websocket import device_base_url

    class Transport:
        def __init__(self, address):
            self.address = address

        def getHost(self):
            return self.address

    plain = Transport(IPv4Address("TCP", "192.0.2.1", 8080))
    assert device_base_url(plain, "dash.example.com:8080") == "http://dash.example.com:8080"
    assert device_base_url(plain, "[2001:db8::1]:80") == "http://[2001:db8::1]:80"
    for bad in (None, "", "evil.example/x?", "a b", "x:99999999", "@evil"):
        assert device_base_url(plain, bad) == "http://192.0.2.1:8080", bad
    secure = Transport(IPv6Address("TCP", "2001:db8::2", 8443))
    directlyProvides(secure, ISSLTransport)
    assert device_base_url(secure, "dash.example.com") == "https://dash.example.com"
    assert device_base_url(secure, None) == "https://[2001:db8::2]:8443"


# One update at a time


@pytest_twisted.ensureDeferred
async def test_a_second_update_while_one_runs_gets_409(server, admin: Client, tmp_path):
    device_id, token = await admin.register()
    sim = await connect_device(server, token, ota_write_delay=0.05)
    try:
        await device_online(admin, device_id)
        fw = make_bin(str(tmp_path / "a.bin"), 60_000)
        reply = await admin.upload("/api/v2/devices/%s/ota" % device_id, fw)
        assert reply.status == 202
        await sleep(0.3)
        reply = await admin.upload("/api/v2/devices/%s/ota" % device_id, fw)
        assert reply.status == 409
        assert "already running (uploading" in reply.error["message"]
        view = await admin.device(device_id)
        assert view["ota"]["state"] == "uploading" and 0 < view["ota"]["percent"] < 100
        # The device answers other calls meanwhile.
        reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, [1])
        assert reply.status == 200
        await ota_state(admin, device_id, "uncommitted", seconds=30)
        # Once it is through, another one may start.
        reply = await admin.upload("/api/v2/devices/%s/ota?auto_commit=1" % device_id,
                                   make_bin(str(tmp_path / "b.bin"), 3000))
        assert reply.status == 202, reply
        await ota_state(admin, device_id, "committed")
    finally:
        await sim.stop()


# Failures: each ends the update with a reason; the device stays usable


FAILURES = [
    ({"ota_fail": "OTA.Begin"}, "push",
     "the device refused OTA.Begin: simulated failure of OTA.Begin (code 500)"),
    ({"ota_fail": "OTA.Write", "ota_fail_after": 3}, "push",
     "the device refused OTA.Write: simulated failure of OTA.Write (code 500)"),
    ({"ota_fail": "OTA.End"}, "push",
     "the device refused OTA.End: simulated failure of OTA.End (code 500)"),
    ({"ota_drop": "OTA.Write", "ota_fail_after": 5}, "push",
     "the device went offline during OTA.Write"),
    ({"ota_silent": "OTA.Write"}, "push",
     "the device did not answer OTA.Write within 2 s"),
    ({"ota_keep_fw": True}, "push",
     "the device came back with the firmware it had (fw_id 20261125-000000): "
     "the update did not take"),
    ({"ota_fail": "OTA.Update"}, "pull",
     "the device refused OTA.Update: simulated failure of OTA.Update (code 500)"),
    # Awaited as a reboot (older Mongoose OS reboots without answering), it
    # comes back with the firmware it had.
    ({"ota_drop": "OTA.Update"}, "pull", "the device came back with the firmware it had "
     "(fw_id 20261125-000000): the update did not take"),
]


# On SQLite only, as the reboot timeout below: how each failure ends an
# update is the OtaManager's (test_firmware.py, on a Clock), and the stored
# status is tested on every backend in test_series.py.
@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
@pytest.mark.parametrize("options, mode, reason", FAILURES,
                         ids=[json.dumps(f[0]) + f[1] for f in FAILURES])
@pytest_twisted.ensureDeferred
async def test_each_failure_ends_the_update_with_its_reason(
    server, admin: Client, tmp_path, options, mode, reason
):
    bystander_id, bystander_token = await admin.register("bystander")
    bystander = await connect_device(server, bystander_token)
    device_id, token = await admin.register()
    sim = await connect_device(server, token, **options)
    try:
        await device_online(admin, device_id)
        fw = make_zip(str(tmp_path / "fw.zip"), build_id="never", size=20_000)
        reply = await admin.upload("/api/v2/devices/%s/ota?mode=%s" % (device_id, mode), fw,
                                   "application/zip")
        assert reply.status == 202, reply
        status = await ota_state(admin, device_id, "failed")
        assert status["reason"] == reason
        assert firmware_dir_is_empty(server)
        # The device is still usable (once back, if it dropped)...
        await usable(admin, device_id)
        # ...and so is every other device.
        await usable(admin, bystander_id)
        # Nothing was sent after the failure (no OTA.End to abort): the
        # device answered a call since, so it has whatever came before.
        _nothing_sent_after_the_failure(sim.methods, options)
        # A new update may start at once (and fails the same way, or runs).
        reply = await admin.upload("/api/v2/devices/%s/ota?mode=%s" % (device_id, mode), fw,
                                   "application/zip")
        assert reply.status == 202, reply
    finally:
        await sim.stop()
        await bystander.stop()


def _nothing_sent_after_the_failure(methods: list[str], options: dict) -> None:
    """C{methods}: every method the device received. After the OTA call it
    failed (or, for a device that came back with its old firmware, after
    the last step, OTA.End), the only OTA calls it may have got are
    OTA.Write calls already in flight then (fewer than
    ota.writes_in_flight, 4): no OTA.End, no OTA.Commit, nothing else."""
    ota = [m for m in methods if m.startswith("OTA.")]
    failed_at = options.get("ota_fail") or options.get("ota_drop") or options.get("ota_silent")
    if options.get("ota_keep_fw"):
        failed_at = "OTA.End"
    if failed_at == "OTA.Write":
        # The write that failed: the first one after ota_fail_after good ones.
        index = [i for i, m in enumerate(ota) if m == "OTA.Write"][options.get("ota_fail_after", 0)]
    else:
        index = ota.index(failed_at)
    after = ota[index + 1:]
    assert all(m == "OTA.Write" for m in after) and len(after) < 4, (failed_at, ota)
    assert ota.count("OTA.End") <= 1 and "OTA.Commit" not in ota, ota


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_device_that_does_not_come_back_fails_the_update(server, admin: Client, tmp_path):
    device_id, token = await admin.register()
    sim = await connect_device(server, token, reconnect=False)
    try:
        await device_online(admin, device_id)
        reply = await admin.upload("/api/v2/devices/%s/ota" % device_id,
                                   make_bin(str(tmp_path / "x.bin"), 5000))
        assert reply.status == 202
        await ota_state(admin, device_id, "rebooting")
        status = await ota_state(admin, device_id, "failed", seconds=10)
        assert status["reason"] == (
            "the device did not come back with new firmware within 4 s"
        )
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_firmware_that_reverts_before_its_commit_fails_the_update(
    server, admin: Client, tmp_path
):
    """Mongoose OS reverts uncommitted firmware at its commit_timeout: the
    device comes back with the firmware it had. The update then ends failed,
    there is nothing left to commit, and nothing more is sent."""
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        fw = make_zip(str(tmp_path / "fw.zip"), build_id="20261203-reverts", size=5000)
        reply = await admin.upload("/api/v2/devices/%s/ota" % device_id, fw, "application/zip")
        assert reply.status == 202, reply
        status = await ota_state(admin, device_id, "uncommitted")
        before = status["fw_id_before"]
        assert status["fw_id"] == "20261203-reverts" != before
        # The revert: a reboot into the previous firmware.
        sim.info.update(fw_id=before, fw_version="1.0.0")
        sim.drop()
        status = await ota_state(admin, device_id, "failed")
        assert status["reason"] == ("the device reverted to its previous firmware (fw_id %s) "
                                    "before the update was committed" % before)
        reply = await admin.post("/api/v2/devices/%s/ota/commit" % device_id)
        assert reply.status == 409
        assert "no firmware update waiting to be committed" in reply.error["message"]
        await usable(admin, device_id)
        assert "OTA.Commit" not in sim.methods
        assert (await admin.device(device_id))["info"]["fw_id"] == before
    finally:
        await sim.stop()


# Refused uploads: a clear 4xx, and nothing reaches the device


@pytest_twisted.ensureDeferred
async def test_bad_uploads_are_refused_and_nothing_is_sent(server, admin: Client, tmp_path):
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    path = "/api/v2/devices/%s/ota" % device_id
    try:
        await device_online(admin, device_id)
        not_zip = tmp_path / "fw.zip"
        not_zip.write_bytes(b"this is no zip" * 100)
        no_manifest = make_zip(str(tmp_path / "nomanifest.zip"), "x", 1000, manifest=False)
        bad_manifest = str(tmp_path / "badmanifest.zip")
        with zipfile.ZipFile(bad_manifest, "w") as z:
            z.writestr("manifest.json", "{not json")
        damaged = make_zip(str(tmp_path / "damaged.zip"), "x", 5000)
        data = bytearray(open(damaged, "rb").read())
        data[200] ^= 0xFF  # inside the stored image: its CRC no longer matches
        open(damaged, "wb").write(bytes(data))
        text = tmp_path / "notes.txt"
        text.write_text("hello")
        big = make_bin(str(tmp_path / "big.bin"), 262144 + 1)
        empty = tmp_path / "empty.bin"
        empty.write_bytes(b"")

        cases = [
            (str(not_zip), "application/zip", 400, "the file is not a valid .zip"),
            (no_manifest, "application/zip", 400, "the .zip holds no manifest.json"),
            (bad_manifest, "application/zip", 400, "manifest.json is not valid JSON"),
            (damaged, "application/zip", 400, "fails its CRC check"),
            (str(text), "text/plain", 415, "unknown kind of firmware file 'notes.txt'"),
            (big, "application/octet-stream", 413,
             "the firmware file is 262145 bytes, more than the limit of 262144"),
            (str(empty), "application/octet-stream", 400, "the firmware file is empty"),
        ]
        for filename, ctype, status, message in cases:
            reply = await admin.upload(path, filename, ctype)
            assert reply.status == status, (filename, reply)
            assert message in reply.error["message"], (filename, reply.error)

        # A multipart body without a file part, and a malformed one.
        reply = await admin.request(
            "POST", path, raw=b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert reply.status == 400
        assert "no file part (send it as -F file=@FILE)" in reply.error["message"]
        reply = await admin.request(
            "POST", path, raw=b"--b\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert reply.status == 400
        assert "the multipart body is malformed" in reply.error["message"]
        # A raw body of unknown kind.
        reply = await admin.request("POST", path, raw=b"\xe9abc",
                                    headers={"Content-Type": "text/plain"})
        assert reply.status == 415
        # Bad query arguments.
        for query, message in [
            ("?mode=sideways", "mode must be push or pull"),
            ("?auto_commit=maybe", "auto_commit must be true or false"),
            ("?commit_timeout=-5", "commit_timeout must be a whole number"),
            ("?colour=red", "unknown query argument(s): colour"),
        ]:
            reply = await admin.request("POST", path + query, raw=b"\xe9abc",
                                        headers={"Content-Type": "application/octet-stream"})
            assert reply.status == 400, query
            assert message in reply.error["message"], query
        # Too large by Content-Length: refused before it is read.
        reply = await admin.request("POST", path + "?filename=x.bin", raw=b"\0" * 400_000)
        assert reply.status == 413
        assert "larger than %d bytes" % (262144 + 65536) in reply.error["message"]
        # No key, another's device, an unknown device.
        reply = await Client(server, None).request("POST", path, raw=b"\xe9", key=None)
        assert reply.status == 401
        assert "an API key is required" in reply.error["message"]
        assert reply.headers.getRawHeaders("www-authenticate") == ['Bearer realm="dashd"']
        reply = await Client(server, "k000000000000.nope").request("POST", path, raw=b"\xe9")
        assert (reply.status, reply.error["message"]) == (401, "unknown API key")
        reply = await admin.upload("/api/v2/devices/dnosuchdevice0/ota", str(text))
        assert reply.status == 404

        # Chunked, without a length: refused once past the limit, unread.
        head = (b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" % (path.encode(), admin.key.encode()))
        response = await deferToThread(
            raw_http, server, head, [b"10000\r\n" + b"x" * 65536 + b"\r\n"] * 8)
        assert response.startswith(b"HTTP/1.1 413 "), response[:200]
        # A client that goes away mid-upload leaves no file behind.
        head = (b"POST %s?filename=a.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                b"Content-Length: 200000\r\n\r\n" % (path.encode(), admin.key.encode()))
        await deferToThread(raw_http_abandoned, server, head + b"\xe9" * 50000)

        assert ota_frames(sim) == []
        assert (await admin.device(device_id))["ota"] is None
        await eventually(lambda: firmware_dir_is_empty(server))
    finally:
        await sim.stop()


def raw_http_abandoned(server, data: bytes) -> None:
    import socket
    import time

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(data)
        time.sleep(0.3)  # (a thread of its own: the reactor runs on)


@pytest_twisted.ensureDeferred
async def test_zip_bombs_are_refused_in_bounded_memory(server, admin: Client, tmp_path):
    """A 4 KB zip holding 4 GiB of bzip2 (declaring its size, or lying
    about it), a zip unpacking to more than ota.max_unpacked_bytes and one
    in a compression method dashd does not read are refused with 400, while
    dashd's memory grows by less than 50 MB, and nothing is sent."""
    # Made before the device connects: making them holds this process (and
    # the simulated device's pongs) up for a second.
    honest = tmp_path / "honest.zip"
    honest.write_bytes(bomb(4 << 30))
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bomb(4 << 30, declared=60 << 20))
    lzma = str(tmp_path / "lzma.zip")
    with zipfile.ZipFile(lzma, "w", zipfile.ZIP_LZMA) as z:
        z.writestr("manifest.json", json.dumps({"name": "fw"}))
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    path = "/api/v2/devices/%s/ota" % device_id
    try:
        await device_online(admin, device_id)
        cases = [
            (str(honest), "the .zip would unpack to 4294967330 bytes, more than the limit "
                          "of 67108864"),
            (str(liar), "the .zip is damaged: fw.bin unpacks to more than the 62914560 bytes "
                        "it declares"),
            (lzma, "manifest.json in the .zip is compressed with method 14, which dashd does "
                   "not accept (only stored, deflate, bzip2)"),
        ]
        before = rss_bytes(server)
        peak = before
        for filename, message in cases:
            assert os.path.getsize(filename) < 8192
            started = time.monotonic()
            sending = Deferred.fromCoroutine(admin.upload(path, filename, "application/zip"))
            while not sending.called:
                peak = max(peak, rss_bytes(server))
                await sleep(0.01)
            reply = await sending
            peak = max(peak, rss_bytes(server))
            print("%s: %d in %.2f s" % (os.path.basename(filename), reply.status,
                                        time.monotonic() - started))
            assert reply.status == 400, (filename, reply)
            assert message in reply.error["message"], reply.error
        growth = peak - before
        print("dashd RSS before %.1f MiB, peak growth %.1f MiB while 4 GiB bombs were refused"
              % (before / 2**20, growth / 2**20))
        assert growth < 50 * 1024 * 1024
        # dashd is still answering, and the device was told nothing.
        assert (await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, [1])).body == [1]
        assert ota_frames(sim) == []
        await eventually(lambda: firmware_dir_is_empty(server))
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_offline_device_gets_503_and_nothing_is_kept(server, admin: Client, tmp_path):
    device_id, _ = await admin.register()
    reply = await admin.upload("/api/v2/devices/%s/ota" % device_id,
                               make_bin(str(tmp_path / "x.bin"), 1000))
    assert reply.status == 503
    assert reply.error["message"] == "device %s is offline" % device_id
    assert (await admin.device(device_id))["ota"] is None
    assert firmware_dir_is_empty(server)


@pytest_twisted.ensureDeferred
async def test_large_upload_is_streamed_to_disk(tmp_path):
    """A firmware of several megabytes (larger than http.max_body_bytes) goes
    through, and dashd's memory does not grow by its size."""
    own_server = DashdProcess(str(tmp_path), {"ota": {"max_bytes": 24 * 1024 * 1024,
                                                             "chunk_bytes": 16384,
                                                             "writes_in_flight": 8}})
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    device_id, token = await admin.register()
    sim = await connect_device(own_server, token)
    try:
        await device_online(admin, device_id)
        fw = make_bin(str(tmp_path / "big.bin"), 20 * 1024 * 1024)
        before = rss_bytes(own_server)
        peak = before
        started = time.monotonic()
        # Sample dashd's memory while the upload comes in and while the
        # firmware goes out to the device.
        sending = Deferred.fromCoroutine(
            admin.upload("/api/v2/devices/%s/ota" % device_id, fw))
        while not sending.called:
            peak = max(peak, rss_bytes(own_server))
            await sleep(0.02)
        reply = await sending
        assert reply.status == 202, reply

        async def done():
            nonlocal peak
            peak = max(peak, rss_bytes(own_server))
            view = await admin.device(device_id)
            return view["ota"]["state"] != "uploading"

        await eventually(done, 120, 0.1)
        status = (await admin.device(device_id))["ota"]
        assert status["state"] in ("rebooting", "uncommitted"), status.get("reason")
        assert sim.ota_image_sha256 == sha256(fw)
        growth = peak - before
        print("dashd RSS before %.1f MiB, peak growth %.1f MiB during a 20 MiB update"
              " (upload and push in %.1f s)"
              % (before / 2**20, growth / 2**20, time.monotonic() - started))
        # (With the body held in memory instead, the growth seen is over 10 MiB.)
        assert growth < 5 * 1024 * 1024
    finally:
        await sim.stop()
        own_server.stop()
    assert not own_server.problems()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest_twisted.ensureDeferred
async def test_the_readme_curl_commands(server, admin: Client, tmp_path):
    """curl -F file=@fw.zip (over 1 MB, so curl sends Expect: 100-continue)
    and curl --data-binary @firmware.bin, as the README shows them."""
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        url = server.url + "/api/v2/devices/%s/ota" % device_id
        auth = "Authorization: Bearer " + admin.key
        make_zip(str(tmp_path / "fw.zip"), build_id="20261203-curl", size=1_200_000)

        def curl(*args: str) -> dict:
            result = subprocess.run(["curl", "-s", "-H", auth, *args], capture_output=True,
                                    timeout=60, cwd=str(tmp_path))
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        # The test server allows 256 KiB: this one is refused, unread.
        reply = await deferToThread(curl, "-F", "file=@fw.zip", url)
        assert reply["error"]["code"] == 413
        small = make_zip(str(tmp_path / "small.zip"), build_id="20261203-curl", size=150_000)
        reply = await deferToThread(curl, "-F", "file=@" + os.path.basename(small), url)
        assert reply["state"] == "uploading" and reply["file"] == "small.zip", reply
        await ota_state(admin, device_id, "uncommitted")
        assert sim.ota_image_sha256 == sha256(small)

        image = make_bin(str(tmp_path / "firmware.bin"), 40_000)
        reply = await deferToThread(
            curl, "-H", "Content-Type: application/octet-stream", "--data-binary",
            "@firmware.bin", url + "?filename=firmware.bin&auto_commit=true")
        assert reply["kind"] == "bin" and reply["file"] == "firmware.bin", reply
        await ota_state(admin, device_id, "committed")
        assert sim.ota_image_sha256 == sha256(image)
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_the_pull_link_works_once(server, admin: Client, tmp_path):
    """HEAD does not use the link up; the first GET does; the link dies with
    its update."""
    import treq

    device_id, token = await admin.register()
    sim = await connect_device(server, token, ota_silent="OTA.Update")  # never downloads
    try:
        await device_online(admin, device_id)
        fw = make_zip(str(tmp_path / "fw.zip"), build_id="x", size=30_000)
        reply = await admin.upload("/api/v2/devices/%s/ota?mode=pull" % device_id, fw,
                                   "application/zip")
        assert reply.status == 202
        calls = await eventually(
            lambda: [f for f in sim.frames if f.get("method") == "OTA.Update"])
        url = calls[0]["params"]["url"]
        SECRETS.add(url.rsplit("/", 1)[1])
        head = await within(treq.head(url, persistent=False))
        assert head.code == 200
        assert head.headers.getRawHeaders("content-length") == [str(os.path.getsize(fw))]
        got = await within(treq.get(url, persistent=False))
        assert got.code == 200
        assert await within(got.content()) == open(fw, "rb").read()
        again = await within(treq.get(url, persistent=False))
        assert again.code == 404
        await within(again.content())
        view = await admin.device(device_id)
        assert view["ota"]["state"] == "downloading" and view["ota"]["percent"] == 100
        # The device goes away: it may be rebooting into the new firmware
        # (older Mongoose OS does so without answering); the link and the
        # file are gone.
        await sim.stop()
        status = await ota_state(admin, device_id, "rebooting")
        assert "went offline during OTA.Update without answering" in status["note"]
        assert firmware_dir_is_empty(server)
        again = await within(treq.get(url, persistent=False))
        assert again.code == 404
        await within(again.content())
    finally:
        await sim.stop()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_updates_across_restarts(tmp_path):
    """An update waiting for its device survives a restart of dashd; one
    cut off mid-transfer (SIGTERM) ends failed, and says why. (One cut off
    by a kill -9, with no stop to mark it, is failed by the next start:
    test_firmware.py, on a Clock.)"""
    server = DashdProcess(str(tmp_path))
    await server.start_async()
    admin = Client(server, server.admin_key)
    waiting_id, waiting_token = await admin.register()
    cut_id, cut_token = await admin.register()
    waiting = await connect_device(server, waiting_token, reconnect=False)
    cut = await connect_device(server, cut_token, ota_write_delay=0.05)
    try:
        await device_online(admin, waiting_id)
        await device_online(admin, cut_id)
        # This one reboots into its new firmware but does not come back yet.
        reply = await admin.upload("/api/v2/devices/%s/ota" % waiting_id,
                                   make_bin(str(tmp_path / "w.bin"), 4000))
        assert reply.status == 202
        await ota_state(admin, waiting_id, "rebooting")
        await eventually(lambda: not waiting.online)
        # This one is mid-transfer when dashd stops.
        reply = await admin.upload("/api/v2/devices/%s/ota" % cut_id,
                                   make_bin(str(tmp_path / "c.bin"), 200_000))
        assert reply.status == 202
        await eventually(lambda: _percent(admin, cut_id))
        server.stop()
        await server.start_async()
        status = await ota_state(admin, cut_id, "failed")
        assert status["reason"] == "dashd stopped during the transfer"
        assert (await admin.device(waiting_id))["ota"]["state"] == "rebooting"
        # The device comes back, to the restarted dashd, with new firmware.
        waiting.start()
        status = await ota_state(admin, waiting_id, "uncommitted")
        assert status["fw_id"] == waiting.info["fw_id"] != status["fw_id_before"]

        # The cut device still has its first transfer open (as the mDash
        # library would, until it reboots): a new one is refused at Begin.
        await device_online(admin, cut_id)
        reply = await admin.upload("/api/v2/devices/%s/ota" % cut_id,
                                   make_bin(str(tmp_path / "c.bin"), 2000))
        assert reply.status == 202
        status = await ota_state(admin, cut_id, "failed")
        assert status["reason"] == (
            "the device refused OTA.Begin: OTA already in progress (code 500)")
        assert firmware_dir_is_empty(server)
        await usable(admin, cut_id)
    finally:
        await waiting.stop()
        await cut.stop()
        if server.proc is not None:
            server.stop()
    assert not server.problems()


async def _percent(admin: Client, device_id: str) -> bool:
    """The device's transfer is under way: some of it is acknowledged."""
    return (await admin.device(device_id))["ota"]["percent"] > 0


@pytest_twisted.ensureDeferred
async def test_pull_links_use_ota_public_url(tmp_path):
    server = DashdProcess(str(tmp_path), {"ota": {"public_url": "https://dash.example.com/"}})
    await server.start_async()
    admin = Client(server, server.admin_key)
    device_id, token = await admin.register()
    sim = await connect_device(server, token, ota_silent="OTA.Update")
    try:
        await device_online(admin, device_id)
        reply = await admin.upload("/api/v2/devices/%s/ota?mode=pull" % device_id,
                                   make_zip(str(tmp_path / "fw.zip"), "x", 1000),
                                   "application/zip")
        assert reply.status == 202
        calls = await eventually(
            lambda: [f for f in sim.frames if f.get("method") == "OTA.Update"])
        url = calls[0]["params"]["url"]
        SECRETS.add(url.rsplit("/", 1)[1])
        assert url.startswith("https://dash.example.com/api/v2/firmware/")
        assert calls[0]["params"]["commit_timeout"] == 600  # ota.commit_timeout
    finally:
        await sim.stop()
        server.stop()
    assert not server.problems()


@pytest_twisted.ensureDeferred
async def test_uploads_have_their_own_time_limit(tmp_path):
    """http.request_timeout (1 s here) does not cut a firmware upload short;
    ota.upload_timeout (3 s here) does."""
    server = DashdProcess(str(tmp_path), {"http": {"request_timeout": 1.0},
                                          "ota": {"upload_timeout": 3.0}})
    await server.start_async()
    admin = Client(server, server.admin_key)
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    path = "/api/v2/devices/%s/ota?filename=slow.bin" % device_id

    def slow_upload(seconds: float) -> bytes:
        import socket
        import time as clock

        body = b"\xe9" * 20_000
        head = (b"POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                b"Content-Length: %d\r\n\r\n" % (path.encode(), admin.key.encode(), len(body)))
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(head)
            for i in range(10):
                try:
                    s.sendall(body[i * 2000:(i + 1) * 2000])
                except OSError:
                    break
                clock.sleep(seconds / 10)
            data = b""
            while True:
                try:
                    part = s.recv(65536)
                except OSError:
                    break
                if not part:
                    break
                data += part
                if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].endswith(b"\n"):
                    break
            return data

    try:
        await device_online(admin, device_id)
        response = await deferToThread(slow_upload, 2.0)
        assert response.startswith(b"HTTP/1.1 202 "), response[:300]
        await ota_state(admin, device_id, "uncommitted")
        response = await deferToThread(slow_upload, 5.0)
        assert response.startswith(b"HTTP/1.1 408 "), response[:300]
        assert b"the request was not complete within 3 s" in response
        await eventually(lambda: firmware_dir_is_empty(server))
    finally:
        await sim.stop()
        server.stop()
    assert not server.problems()


# Uploads are let in from their headers (issue 15, item 3)


class HeldUpload:
    """An upload sent by hand: its headers (and perhaps some of its body),
    then nothing, to see what dashd answers before it has the body."""

    def __init__(self, server, path: str, key: str | None, body: bytes = b"",
                 length: int = 200_000, expect_continue: bool = False) -> None:
        import socket

        auth = b"Authorization: Bearer %s\r\n" % key.encode() if key is not None else b""
        expect = b"Expect: 100-continue\r\n" if expect_continue else b""
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\n%s%sContent-Type: "
                          b"application/octet-stream\r\nContent-Length: %d\r\n\r\n%s"
                          % (path.encode(), auth, expect, length, body))

    def answer(self, seconds: float = 5.0) -> Deferred:
        """Fire with what dashd sent within C{seconds} (b"" if nothing)."""
        def read() -> bytes:
            import socket

            self.sock.settimeout(seconds)
            data = b""
            try:
                while not (b"\r\n\r\n" in data and data.endswith(b"\n")
                           and data.split(b"\r\n\r\n", 1)[1]):
                    part = self.sock.recv(65536)
                    if not part:
                        break
                    data += part
            except socket.timeout:
                pass
            return data

        return deferToThread(read)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def spooled_files(server) -> list[str]:
    path = os.path.join(server.data_dir, "firmware")
    return os.listdir(path) if os.path.isdir(path) else []


@pytest_twisted.ensureDeferred
async def test_uploads_are_refused_from_their_headers(server, admin: Client):
    """Without a key, with a wrong one (also from an address past its
    failure limit), without the right to update the device, for a device
    that is offline, unknown or not the key's: the answer comes before a
    byte of the body is read, and nothing is written to the data
    directory."""
    device_id, token = await admin.register()
    offline_id, _ = await admin.register()
    sim = await connect_device(server, token)
    created = await admin.post("/api/v2/accounts", {"name": "uploads B"})
    SECRETS.add(created.body["admin_key"]["key"])
    other = Client(server, created.body["admin_key"]["key"])
    await admin.post("/api/v2/devices/" + device_id, {"shared_with": created.body["id"]})
    read_only = await admin.post("/api/v2/keys", {"kind": "read-only"})
    SECRETS.add(read_only.body["key"])
    try:
        await device_online(admin, device_id)
        path = "/api/v2/devices/%s/ota?filename=x.bin" % device_id
        cases = [
            (path, None, 401, "an API key is required"),
            (path, "junk", 401, "unknown API key"),
            (path, "k000000000000.nope", 401, "unknown API key"),
            (path, other.key, 403, "only admin keys of the account that owns device %s may "
                                   "update a device's firmware" % device_id),
            (path, read_only.body["key"], 403, "only admin keys may update a device's firmware"),
            ("/api/v2/devices/%s/ota?filename=x.bin" % offline_id, admin.key, 503,
             "device %s is offline" % offline_id),
            ("/api/v2/devices/dnosuchdevice0/ota", admin.key, 404, "no such device"),
            (path + "&mode=sideways", admin.key, 400, "mode must be push or pull"),
        ]
        for target, key, status, message in cases:
            upload = HeldUpload(server, target, key, body=b"\xe9" * 1000, expect_continue=True)
            try:
                answer = await upload.answer()
                assert answer.startswith(b"HTTP/1.1 %d " % status), (target, key, answer[:300])
                assert b"100 Continue" not in answer
                assert message.encode() in answer, (message, answer)
                assert spooled_files(server) == []
            finally:
                upload.close()
        assert ota_frames(sim) == []
        # Answered like any request: in the access log and the audit log.
        await eventually(lambda: ('"POST %s HTTP/1.1" 403' % path) in server.log())
        async def audited() -> Any:
            entries = (await other.get("/api/v2/audit?start=-5")).body["entries"]
            return entries or None

        entries = await eventually(audited)
        assert [(e["method"], e["status"], e["device_id"]) for e in entries] == [
            ("POST", 403, device_id)]
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_uploads_in_flight_are_capped_per_key_and_in_all(tmp_path):
    server = DashdProcess(str(tmp_path), {"ota": {"max_uploads": 3, "max_uploads_per_key": 1}})
    await server.start_async()
    admin = Client(server, server.admin_key)
    keys = [admin.key]
    for _ in range(3):
        reply = await admin.post("/api/v2/keys", {"kind": "admin"})
        SECRETS.add(reply.body["key"])
        keys.append(reply.body["key"])
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    path = "/api/v2/devices/%s/ota?filename=x.bin" % device_id
    held: list[HeldUpload] = []
    try:
        await device_online(admin, device_id)
        for key in keys[:3]:
            held.append(HeldUpload(server, path, key, body=b"\xe9" * 100))
            await eventually(lambda: len(spooled_files(server)) == len(held))
        upload = HeldUpload(server, path, keys[0], body=b"\xe9" * 100)
        answer = await upload.answer()
        upload.close()
        assert answer.startswith(b"HTTP/1.1 429 "), answer[:300]
        assert b"is already sending 1 firmware upload(s), its limit" in answer
        assert b"Retry-After: 5" in answer
        upload = HeldUpload(server, path, keys[3], body=b"\xe9" * 100)
        answer = await upload.answer()
        upload.close()
        assert answer.startswith(b"HTTP/1.1 429 "), answer[:300]
        assert b"dashd is receiving 3 firmware uploads, its limit" in answer
        assert len(spooled_files(server)) == 3
        # One ends (the client goes away): its slot and its file are freed.
        held.pop(0).close()
        await eventually(lambda: len(spooled_files(server)) == 2)
        held.append(HeldUpload(server, path, keys[3], body=b"\xe9" * 100))
        await eventually(lambda: len(spooled_files(server)) == 3)
    finally:
        for upload in held:
            upload.close()
        await sim.stop()
        server.stop()
    assert not server.problems()


@pytest_twisted.ensureDeferred
async def test_the_upload_timeout_counts_from_the_first_line(tmp_path):
    """Headers sent slowly use up ota.upload_timeout too: they do not start
    a new one."""
    server = DashdProcess(str(tmp_path), {"http": {"request_timeout": 10.0},
                                          "ota": {"upload_timeout": 1.5}})
    await server.start_async()
    admin = Client(server, server.admin_key)
    device_id, token = await admin.register()
    sim = await connect_device(server, token)

    def slow_headers() -> bytes:
        import socket
        import time as clock

        body = b"\xe9" * 1000
        lines = [b"POST /api/v2/devices/%s/ota?filename=x.bin HTTP/1.1\r\n" % device_id.encode(),
                 b"Host: x\r\n", b"Authorization: Bearer %s\r\n" % admin.key.encode(),
                 b"Content-Length: %d\r\n" % len(body), b"\r\n" + body]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            for line in lines:
                s.sendall(line)
                clock.sleep(0.5)
            data = b""
            while part := s.recv(65536):
                data += part
            return data

    try:
        await device_online(admin, device_id)
        response = await deferToThread(slow_headers)
        assert response.startswith(b"HTTP/1.1 408 "), response[:300]
        assert b"the request was not complete within 1.5 s" in response
        assert ota_frames(sim) == []
    finally:
        await sim.stop()
        server.stop()
    assert not server.problems()
