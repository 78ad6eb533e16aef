"""
The data real firmware sends: mDashStore lines pulled off mDash-library
devices (exactly once, whatever stops half-way), Dash.Data, Shadow.Report,
object answers to Shadow.Delta, Dash.Log's own time and sequence, and
Mongoose OS's word on its own firmware update.
"""

from __future__ import annotations

import collections
import json

import pytest_twisted

from support import (
    Client,
    DashdProcess,
    connect_device,
    device_online,
    eventually,
    subscribe,
    within,
)
from test_ota import make_bin, make_zip, ota_state, sha256


async def points(client: Client, device_id: str, limit: int = 5000) -> list[dict]:
    reply = await client.get("/api/v2/devices/%s/data?limit=%d&skip=0" % (device_id, limit))
    assert reply.status == 200, reply
    return reply.body


def values(found: list[dict], key: str = "temperature") -> list:
    return [p["value"]["n"] for p in found if p["key"] == key]


def store_lines(sim, first: int, count: int) -> None:
    for n in range(first, first + count):
        sim.store("temperature", {"n": n, "pad": "x" * 20})


async def all_stored(client: Client, device_id: str, expected: list[int]) -> list[dict]:
    """Wait until the device's points hold every expected value; then they
    must hold each exactly once."""
    async def complete() -> bool:
        return sorted(set(values(await points(client, device_id)))) == sorted(expected)

    await eventually(complete, 30)
    found = await points(client, device_id)
    counts = collections.Counter(values(found))
    assert [n for n, c in counts.items() if c > 1] == [], "stored twice"
    return found


@pytest_twisted.ensureDeferred
async def test_mdash_store_lines_become_points_and_leave_the_device(server: DashdProcess,
                                                                    admin: Client):
    device_id, token = await admin.register("stores")
    subscriber = await subscribe(server, server.admin_key)
    sim = await connect_device(server, token, dialect="mdash")
    await device_online(admin, device_id)
    sim.store("temperature", {"n": 1, "unit": "C"})
    sim.store("humidity", 40)
    found = await all_stored(admin, device_id, [1])
    assert [(p["key"], p["value"]) for p in found] == [
        ("temperature", {"n": 1, "unit": "C"}), ("humidity", 40)]
    # Nothing left on the device: the file was set aside, read and removed.
    await eventually(lambda: sim.files == {}, 10)
    event = await subscriber.next(lambda e: e["name"] == "data.stored" and e["id"] == device_id)
    assert event["data"]["source"] == "mdash"
    assert {"key": "temperature", "value": {"n": 1, "unit": "C"}} in event["data"]["points"]
    # The stored data's filter finds a topic.
    reply = await admin.get("/api/v2/data?filter=humidity")
    assert [p["value"] for p in reply.body if p["device_id"] == device_id] == [40]
    subscriber.close()
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_lines_stored_during_a_pull_are_pulled_too(server: DashdProcess, admin: Client):
    device_id, token = await admin.register()
    sim = await connect_device(server, token, dialect="mdash", fs_get_delay=0.05)
    await device_online(admin, device_id)
    store_lines(sim, 0, 300)
    await within(sim.wait_frame(lambda f: f.get("method") == "FS.Get"), 10)
    store_lines(sim, 300, 200)  # while dashd reads the file set aside
    await all_stored(admin, device_id, list(range(500)))
    await eventually(lambda: sim.files == {}, 10)
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_pull_cut_short_by_the_device_resumes_when_it_is_back(server: DashdProcess,
                                                                      admin: Client):
    device_id, token = await admin.register()
    sim = await connect_device(server, token, dialect="mdash", fs_get_delay=0.05,
                               reconnect_delay=(0.2, 0.5))
    await device_online(admin, device_id)
    store_lines(sim, 0, 400)
    for _ in range(3):
        await within(sim.wait_frame(lambda f: f.get("method") == "FS.Get"), 10)
    sim.drop()
    store_lines(sim, 400, 50)  # while offline: no DB.NewData reaches dashd
    await all_stored(admin, device_id, list(range(450)))
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_pull_cut_short_by_kill_9_loses_and_repeats_nothing(own_server: DashdProcess):
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    device_id, token = await admin.register()
    sim = await connect_device(own_server, token, dialect="mdash", fs_get_delay=0.05,
                               reconnect_delay=(0.2, 0.5))
    await device_online(admin, device_id)
    store_lines(sim, 0, 600)
    for _ in range(4):
        await within(sim.wait_frame(lambda f: f.get("method") == "FS.Get"), 10)
    own_server.kill9()
    assert 0 < len(values(await points_after_restart(own_server, admin, device_id))) < 600
    await all_stored(admin, device_id, list(range(600)))
    await eventually(lambda: sim.files == {}, 10)
    await sim.stop()


async def points_after_restart(server: DashdProcess, admin: Client, device_id: str) -> list:
    """What was stored before the kill, read before the device is back."""
    import sqlite3

    if server.store_url is None:
        conn = sqlite3.connect(server.data_dir + "/dashd.sqlite3")
        rows = conn.execute("SELECT value FROM data_points WHERE device_id = ?",
                            (device_id,)).fetchall()
        conn.close()
        found = [{"key": "temperature", "value": json.loads(r[0])} for r in rows]
    else:
        import psycopg

        with psycopg.connect(server.store_url) as conn:
            rows = conn.execute("SELECT value FROM data_points WHERE device_id = %s",
                                (device_id,)).fetchall()
        found = [{"key": "temperature", "value": r[0]} for r in rows]
    await server.start_async()
    return found


@pytest_twisted.ensureDeferred
async def test_both_files_are_pulled_oldest_first_and_bad_lines_kept(server: DashdProcess,
                                                                     admin: Client):
    device_id, token = await admin.register()
    first = await connect_device(server, token, dialect="mdash")
    await first.stop()
    # Stored while not connected (no DB.NewData reached dashd): past the
    # library's 32 KB the file moved to mdash.unsent.old.
    store_lines(first, 0, 1200)
    first.files["mdash.unsent"] += b"no json here\nbroken {\n"
    assert set(first.files) == {"mdash.unsent", "mdash.unsent.old"}
    sim = await connect_device(server, token, dialect="mdash")
    sim.files = first.files
    sim.store("temperature", {"n": 1200})  # DB.NewData: dashd learns it stores data
    found = await all_stored(admin, device_id, list(range(1201)))
    assert values(found) == list(range(1201))  # in the order they were stored
    bad = [p["value"] for p in found if p["key"] == "mdash.unreadable"]
    assert bad == ["no json here", "broken {"]
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_dash_data_and_shadow_report_and_delta_answers(server: DashdProcess,
                                                             admin: Client):
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    sim.handlers["Shadow.Delta"] = lambda params: True  # answers, changes nothing
    await device_online(admin, device_id)
    # Dash.Data: an object's keys are points; anything else is the point "data".
    sim.notify("Dash.Data", {"temp": 21.5, "hum": 40})
    sim.notify("Dash.Data", [1, 2, 3])

    async def data_points() -> list:
        return [(p["key"], p["value"]) for p in await points(admin, device_id)]

    await eventually(lambda: within_list(data_points, 3), 10)
    assert await data_points() == [("temp", 21.5), ("hum", 40), ("data", [1, 2, 3])]

    # Shadow.Report (Cesanta's mjson sketches): reported state.
    await admin.post("/api/v2/devices/" + device_id,
                     {"shadow": {"state": {"desired": {"on": True, "level": 3}}}})
    sim.notify("Shadow.Report", {"on": True})

    async def reported() -> dict:
        return (await admin.device(device_id))["shadow"]["state"]

    await eventually(lambda: check(reported, lambda s: s["reported"].get("on") is True), 10)
    assert (await reported())["delta"] == {"level": 3}

    # An object answer to Shadow.Delta: what the device applied.
    sim.handlers["Shadow.Delta"] = lambda params: params["state"]
    await admin.post("/api/v2/devices/" + device_id,
                     {"shadow": {"state": {"desired": {"level": 4}}}})
    await eventually(lambda: check(reported, lambda s: s["delta"] == {}), 10)
    assert (await reported())["reported"]["level"] == 4
    # true changes nothing.
    sim.handlers["Shadow.Delta"] = lambda params: True
    answered = sim.wait_frame(lambda f: f.get("method") == "Shadow.Delta")
    await admin.post("/api/v2/devices/" + device_id,
                     {"shadow": {"state": {"desired": {"level": 5}}}})
    await within(answered, 10)
    await sim.call("Dash.Shadow.Get")  # after the answer, on the same connection
    assert (await reported())["delta"] == {"level": 5}
    await sim.stop()


async def within_list(read, n: int) -> bool:
    return len(await read()) >= n


async def check(read, condition) -> bool:
    return condition(await read())


@pytest_twisted.ensureDeferred
async def test_dash_log_keeps_the_device_s_time_and_sequence(server: DashdProcess,
                                                             admin: Client):
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    for seq in range(3):
        sim.notify("Dash.Log", {"fd": 1, "data": "line %d\n" % seq, "t": 1000.5 + seq,
                                "seq": seq})

    async def logged() -> list:
        reply = await admin.post("/api/v2/logs", {"device_id": device_id, "start": 0})
        return [e for e in reply.body["events"] if e["name"] == "rpc.out.Log"]

    await eventually(lambda: within_list(logged, 3), 10)
    events = await logged()
    assert [(e["data"]["seq"], e["data"]["t"], e["data"]["data"]) for e in events] == [
        (0, 1000.5, "line 0\n"), (1, 1001.5, "line 1\n"), (2, 1002.5, "line 2\n")]
    assert all(e["timestamp"] > 1700000000 for e in events)  # dashd's own time beside
    await sim.stop()


# Firmware updates in the device's own words


@pytest_twisted.ensureDeferred
async def test_pull_to_a_device_that_cannot_pull_is_sent_by_push(server: DashdProcess,
                                                                 admin: Client, tmp_path):
    device_id, token = await admin.register()
    sim = await connect_device(server, token, dialect="mdash")
    await device_online(admin, device_id)
    assert "OTA.Update" not in await sim_rpc_list(admin, device_id)
    fw = make_bin(str(tmp_path / "fw.bin"), 20_000)
    reply = await admin.upload("/api/v2/devices/%s/ota?mode=pull" % device_id, fw,
                               "application/octet-stream")
    assert reply.status == 202, reply
    status = await ota_state(admin, device_id, "uncommitted")
    assert status["mode"] == "push"
    assert status["note"] == ("the device has no OTA.Update (it cannot download firmware "
                              "itself): sent by push instead")
    assert sim.ota_image_sha256 == sha256(fw)
    methods = [f["method"] for f in sim.frames if str(f.get("method", "")).startswith("OTA.")]
    assert methods[:2] == ["OTA.Update", "OTA.Begin"] and methods[-1] == "OTA.End"
    await sim.stop()


async def sim_rpc_list(admin: Client, device_id: str) -> list:
    reply = await admin.get("/api/v2/devices/%s/rpc/RPC.List" % device_id)
    assert reply.status == 200, reply
    return reply.body


@pytest_twisted.ensureDeferred
async def test_older_mongoose_os_reboots_without_answering_ota_update(server: DashdProcess,
                                                                      admin: Client,
                                                                      tmp_path):
    device_id, token = await admin.register()
    sim = await connect_device(server, token, ota_update_answers=False)
    await device_online(admin, device_id)
    fw = make_zip(str(tmp_path / "fw.zip"), build_id="20261129-silent", size=20_000)
    reply = await admin.upload("/api/v2/devices/%s/ota?mode=pull" % device_id, fw,
                               "application/zip")
    assert reply.status == 202, reply
    status = await ota_state(admin, device_id, "uncommitted")
    assert status["fw_id"] == "20261129-silent"
    assert "went offline during OTA.Update without answering" in status["note"]
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_dash_otastate_is_the_update_s_word_from_the_device(server: DashdProcess,
                                                                  admin: Client, tmp_path):
    device_id, token = await admin.register()
    sim = await connect_device(server, token, ota_write_delay=0.2)
    await device_online(admin, device_id)
    fw = make_bin(str(tmp_path / "fw.bin"), 20_000)
    reply = await admin.upload("/api/v2/devices/%s/ota?filename=fw.bin" % device_id, fw,
                               "application/octet-stream")
    assert reply.status == 202, reply
    sim.notify("Dash.OTAState", {"state": "progress", "msg": "writing flash"})

    async def said() -> dict | None:
        ota = (await admin.device(device_id))["ota"]
        return ota.get("device_state") if ota else None

    state = await eventually(said, 10)
    assert (state["state"], state["msg"]) == ("progress", "writing flash")
    reply = await admin.post("/api/v2/logs", {"device_id": device_id, "start": 0})
    assert {"name": "rpc.out.OTAState", "data": {"state": "progress", "msg": "writing flash"}} \
        in [{"name": e["name"], "data": e["data"]} for e in reply.body["events"]]
    await ota_state(admin, device_id, "uncommitted")
    await sim.stop()
