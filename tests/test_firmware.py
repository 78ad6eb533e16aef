"""
Firmware updates (L{dashd.app.firmware}) on a Clock: the push sequence and
its window, each timer (a step, the reboot), what the device says when it
is back (new firmware, the old one, a revert), committing, and what a
restart leaves; with the default timings (300 s to come back costs nothing
here). The HTTP side (uploads, zips, the pull link's downloads) and a real
device library are tested end to end in test_ota.py.
"""

from __future__ import annotations

import base64
import os

import pytest
from twisted.internet.defer import ensureDeferred

from clocked import World, done, failure_of
from dashd.app.firmware import OtaManager
from dashd.domain.errors import Conflict, Offline

SIZE = 10_000


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


def firmware(world, size=SIZE, name="fw.bin"):
    """A firmware file in the upload directory (where the API puts it)."""
    os.makedirs(world.ota.directory, exist_ok=True)
    path = os.path.join(world.ota.directory, name)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return path


def start(world, fake, path, auto_commit=False, pull_base_url=None):
    """C{pull_base_url}: pull mode, the device having reached dashd there."""
    with open(path, "rb") as f:
        content = f.read()
    if pull_base_url is not None:
        fake.session.base_url = pull_base_url
    device = done(world.app.firmware.prepare(world.admin, fake.device_id))
    status = done(world.app.firmware.start(
        device, path, len(content), os.path.basename(path), None, pull_base_url is not None,
        auto_commit, 600))
    return status, content


def stored(world, device_id):
    return done(world.store.get_ota_status(device_id))


def states(world, device_id):
    return [e.data["state"] for e in world.named("ota.status", device_id)]


def transfer(world, fake, path, **kwargs):
    """Start an update and answer every step: the device has rebooted."""
    status, content = start(world, fake, path, **kwargs)
    while fake.unanswered():
        for call in fake.unanswered():
            fake.answer(call)
    assert stored(world, fake.device_id)["state"] == "rebooting"
    fake.gone("rebooting")
    return status, content


def test_push_sends_the_file_in_chunks_within_the_window(world):
    chunk = world.config["ota.chunk_bytes"]
    window = world.config["ota.writes_in_flight"]
    fake = world.connect()
    path = firmware(world)
    status, content = start(world, fake, path)
    assert status["state"] == "uploading" and status["fw_id_before"] == "fw-1"
    (begin,) = fake.unanswered()
    assert (begin["method"], begin["params"]) == ("OTA.Begin", {"size": SIZE})
    fake.answer(begin)
    received = b""
    most = 0
    while True:
        writes = fake.unanswered()
        if writes[0]["method"] != "OTA.Write":
            break
        most = max(most, len(writes))
        assert len(writes) <= window
        # In order, the oldest answered first.
        received += base64.b64decode(writes[0]["params"]["data"])
        fake.answer(writes[0])
    assert most == window
    assert received == content
    assert len(fake.calls("OTA.Write")) == -(-SIZE // chunk)
    (end,) = fake.unanswered()
    assert end["method"] == "OTA.End"
    percents = [e.data["percent"] for e in world.named("ota.progress", fake.device_id)]
    assert percents == sorted(percents) and percents[-1] == 100
    fake.answer(end)
    assert stored(world, fake.device_id)["state"] == "rebooting"
    assert states(world, fake.device_id) == ["uploading", "rebooting"]
    # The file is gone once the device has it.
    assert not os.path.exists(path)
    # None of it went to subscribers as calls.
    assert not [e for e in world.events if e.name.startswith("rpc.in.OTA")]


def test_the_window_leaves_room_for_other_calls(tmp_path):
    w = World(tmp_path, {"device.max_calls_in_flight": 3, "ota.writes_in_flight": 8})
    try:
        fake = w.connect()
        start(w, fake, firmware(w))
        fake.answer(fake.unanswered()[0])
        assert [c["method"] for c in fake.unanswered()] == ["OTA.Write"] * 2
        d = ensureDeferred(w.app.devices.call(w.admin, fake.device_id, "Sim.Echo", 1, 5.0))
        fake.answer(fake.calls("Sim.Echo")[0], 1)
        assert done(d) == 1
    finally:
        w.close()


def test_a_step_not_answered_within_step_timeout_fails_the_update(world):
    timeout = world.config["ota.step_timeout"]
    fake = world.connect()
    path = firmware(world)
    start(world, fake, path)
    fake.answer(fake.unanswered()[0])
    world.clock.advance(timeout - 0.01)
    assert stored(world, fake.device_id)["state"] == "uploading"
    world.clock.advance(0.01)
    status = stored(world, fake.device_id)
    assert status["state"] == "failed"
    assert status["reason"] == "the device did not answer OTA.Write within %g s" % timeout
    assert not os.path.exists(path)
    # Nothing more is sent, and the device is as usable as before.
    writes = len(fake.calls("OTA.Write"))
    world.clock.advance(timeout)
    assert len(fake.calls("OTA.Write")) == writes
    assert fake.closed_with is None and world.router.is_online(fake.device_id)
    # A new update may start at once.
    assert start(world, fake, firmware(world))[0]["state"] == "uploading"


def test_a_device_refusing_or_going_offline_fails_the_update_at_once(world):
    fake = world.connect()
    start(world, fake, firmware(world))
    fake.refuse(fake.unanswered()[0], 500, "no room")
    assert stored(world, fake.device_id)["reason"] == \
        "the device refused OTA.Begin: no room (code 500)"
    start(world, fake, firmware(world))
    fake.answer(fake.unanswered()[0])
    fake.gone()
    assert stored(world, fake.device_id)["reason"] == "the device went offline during OTA.Write"
    assert world.clock.getDelayedCalls() == []


def test_a_device_that_does_not_come_back_within_reboot_timeout(world):
    timeout = world.config["ota.reboot_timeout"]
    fake = world.connect()
    transfer(world, fake, firmware(world))
    world.clock.advance(timeout - 0.01)
    assert stored(world, fake.device_id)["state"] == "rebooting"
    world.clock.advance(0.01)
    status = stored(world, fake.device_id)
    assert status["state"] == "failed"
    assert status["reason"] == (
        "the device did not come back with new firmware within %g s" % timeout)


def test_back_with_new_firmware_is_uncommitted_until_committed(world):
    device, _ = world.register()
    fake = world.connect(device)
    transfer(world, fake, firmware(world))
    back = world.connect(device, fw_id="fw-2")
    status = stored(world, device.id)
    assert (status["state"], status["fw_id"], status["fw_id_before"]) == \
        ("uncommitted", "fw-2", "fw-1")
    # The reboot timer is off.
    world.clock.advance(world.config["ota.reboot_timeout"] * 2)
    assert stored(world, device.id)["state"] == "uncommitted"
    assert back.calls("OTA.Commit") == []
    d = ensureDeferred(world.app.firmware.commit(world.admin, device.id))
    back.answer(back.calls("OTA.Commit")[0])
    assert done(d)["state"] == "committed"
    assert states(world, device.id) == ["uploading", "rebooting", "uncommitted", "committed"]
    failure_of(world.app.firmware.commit(world.admin, device.id), Conflict)


def test_a_heartbeat_before_the_reboot_does_not_count(world):
    """Only a new connection's info says which firmware the device runs."""
    fake = world.connect()
    start(world, fake, firmware(world))
    while fake.unanswered():
        fake.answer(fake.unanswered()[0])
    fake.request("Dash.Heartbeat", {"fw_id": "fw-2"})
    assert stored(world, fake.device_id)["state"] == "rebooting"


def test_auto_commit(world):
    device, _ = world.register()
    fake = world.connect(device)
    transfer(world, fake, firmware(world), auto_commit=True)
    back = world.connect(device, fw_id="fw-2")
    (commit,) = back.calls("OTA.Commit")
    assert stored(world, device.id)["state"] == "uncommitted"
    back.answer(commit)
    assert stored(world, device.id)["state"] == "committed"


def test_a_failed_commit_says_why_and_may_be_tried_again(world):
    device, _ = world.register()
    fake = world.connect(device)
    transfer(world, fake, firmware(world), auto_commit=True)
    back = world.connect(device, fw_id="fw-2")
    world.clock.advance(world.config["ota.step_timeout"])
    status = stored(world, device.id)
    assert status["state"] == "uncommitted"
    assert status["reason"] == ("OTA.Commit failed: device %s did not answer OTA.Commit "
                                "within %g s" % (device.id, world.config["ota.step_timeout"]))
    d = ensureDeferred(world.app.firmware.commit(world.admin, device.id))
    back.answer(back.calls("OTA.Commit")[-1])
    status = done(d)
    assert status["state"] == "committed" and "reason" not in status


def test_back_with_the_old_firmware_fails_the_update(world):
    device, _ = world.register()
    transfer(world, world.connect(device), firmware(world))
    world.connect(device, fw_id="fw-1")
    status = stored(world, device.id)
    assert status["state"] == "failed"
    assert status["reason"] == ("the device came back with the firmware it had (fw_id fw-1): "
                                "the update did not take")


def test_a_revert_before_the_commit_is_detected(world):
    device, _ = world.register()
    transfer(world, world.connect(device), firmware(world))
    world.connect(device, fw_id="fw-2").gone("rebooting")
    # Mongoose OS went back to the old firmware: no OTA.Commit came in time.
    world.connect(device, fw_id="fw-1")
    status = stored(world, device.id)
    assert status["state"] == "failed"
    assert status["reason"] == ("the device reverted to its previous firmware (fw_id fw-1) "
                                "before the update was committed")


def test_pull_calls_ota_update_with_a_one_time_link_and_the_pull_timeout(world):
    fake = world.connect()
    path = firmware(world)
    start(world, fake, path, pull_base_url="https://dashd.example/")
    (update,) = fake.unanswered()
    assert update["method"] == "OTA.Update" and update["params"]["commit_timeout"] == 600
    secret = update["params"]["url"].rsplit("/", 1)[1]
    assert update["params"]["url"] == "https://dashd.example/api/v2/firmware/" + secret
    assert world.app.firmware.take_download(secret, use=False)[1] == path
    assert world.app.firmware.take_download(secret)[1:] == (path, SIZE)
    assert world.app.firmware.take_download(secret) is None
    world.clock.advance(world.config["ota.pull_timeout"])
    status = stored(world, fake.device_id)
    assert status["reason"] == "the device did not answer OTA.Update within %g s" % (
        world.config["ota.pull_timeout"])


def restart(world):
    """The OtaManager dies with its timers (and the sessions' timers);
    a new one starts on the same store and directory."""
    for call in list(world.clock.getDelayedCalls()):
        call.cancel()
    world.fleet.event_observers.remove(world.ota.device_event)
    world.fleet.info_observers.remove(world.ota.device_info)
    world.ota = OtaManager(world.fleet, world.config, world.ota.directory, world.clock)
    world.fleet.event_observers.append(world.ota.device_event)
    world.fleet.info_observers.append(world.ota.device_info)
    done(world.ota.start())


def test_a_restart_resumes_waiting_updates_and_fails_cut_transfers(world, tmp_path):
    waiting, _ = world.register("waiting")
    transfer(world, world.connect(waiting), firmware(world, name="w.bin"))
    cut = world.connect()
    start(world, cut, firmware(world, name="c.bin"))
    world.clock.advance(10)
    # The old dashd dies without a word; a new one starts on the same store.
    restart(world)
    assert os.listdir(world.ota.directory) == []
    status = stored(world, cut.device_id)
    assert (status["state"], status["reason"]) == ("failed", "dashd restarted during the transfer")
    # The waiting one's reboot timer runs again, from the restart...
    world.clock.advance(world.config["ota.reboot_timeout"] - 1)
    assert stored(world, waiting.id)["state"] == "rebooting"
    world.clock.advance(1)
    assert stored(world, waiting.id)["state"] == "failed"


def test_a_device_back_after_a_restart_completes_its_update(world):
    waiting, _ = world.register("waiting")
    transfer(world, world.connect(waiting), firmware(world))
    restart(world)
    world.connect(waiting, fw_id="fw-2")
    status = stored(world, waiting.id)
    assert (status["state"], status["fw_id"]) == ("uncommitted", "fw-2")


def test_an_offline_device_gets_no_update(world):
    device, _ = world.register()
    path = firmware(world)
    failure_of(world.app.firmware.start(device, path, SIZE, "fw.bin", None, None, False, 600),
               Offline)
    assert not os.path.exists(path)
