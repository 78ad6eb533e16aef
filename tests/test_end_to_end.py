"""
The whole path, on real sockets: register a device, connect a simulated
Mongoose OS device, call its RPC methods through REST, drive its shadow,
and watch it all on the notification stream.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import pytest_twisted

from support import Client, connect_device, device_online, eventually, subscribe, within


@pytest_twisted.ensureDeferred
async def test_register_connect_and_call(server, admin: Client):
    device_id, token = await admin.register("kitchen")
    assert token.startswith(device_id + "-")
    view = await admin.device(device_id)
    assert view["name"] == "kitchen" and view["online"] is False
    assert "token" not in view

    sim = await connect_device(server, token)
    try:
        view = await device_online(admin, device_id)
        # The heartbeat the device sent on connect is its info...
        await eventually(lambda: _has_info(admin, device_id))
        view = await admin.device(device_id)
        assert view["info"]["fw_version"] == "1.0.0"
        assert view["info"]["arch"] == "esp32"
        # ...and its firmware identity is in the shadow's reported.ota.
        assert view["shadow"]["state"]["reported"]["ota"]["fw_id"] == sim.info["fw_id"]

        info = await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
        assert info.status == 200
        assert info.body["mac"] == sim.mac

        toggled = await admin.post("/api/v2/devices/%s/rpc/GPIO.Toggle" % device_id, {"pin": 2})
        assert (toggled.status, toggled.body) == (200, {"value": 1})
        toggled = await admin.post("/api/v2/devices/%s/rpc/GPIO.Toggle" % device_id, {"pin": 2})
        assert toggled.body == {"value": 0}
        assert sim.pins[2] == 0

        echo = await admin.post(
            "/api/v2/devices/%s/rpc/Sim.Echo" % device_id, {"a": [1, "two", None]}
        )
        assert echo.body == {"a": [1, "two", None]}

        # The request dashd sent carried the device's own src as dst.
        request = [f for f in sim.frames if f.get("method") == "GPIO.Toggle"][0]
        assert request["dst"] == sim.src
        assert request["params"] == {"pin": 2}
    finally:
        await sim.stop()


async def _has_info(admin: Client, device_id: str) -> bool:
    return bool((await admin.device(device_id))["info"])


@pytest_twisted.ensureDeferred
async def test_desired_reaches_device_which_reports_back(server, admin: Client):
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        delta_frame = sim.wait_frame(lambda f: f.get("method") == "Shadow.Delta")
        reply = await admin.post(
            "/api/v2/devices/" + device_id,
            {"shadow": {"state": {"desired": {"led": {"on": True, "level": 7}}}}},
        )
        assert reply.status == 200
        assert reply.body["shadow"]["state"]["delta"] == {"led": {"on": True, "level": 7}}
        frame = await within(delta_frame)
        assert frame["params"]["state"] == {"led": {"on": True, "level": 7}}
        assert frame["params"]["version"] == reply.body["shadow"]["version"]

        # The simulator applies the delta and reports; the delta empties.
        async def settled() -> bool:
            view = await admin.device(device_id)
            return view["shadow"]["state"]["delta"] == {}

        await eventually(settled)
        view = await admin.device(device_id)
        assert view["shadow"]["state"]["reported"]["led"] == {"on": True, "level": 7}
        assert sim.reported["led"] == {"on": True, "level": 7}
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_pending_delta_is_sent_when_the_device_connects(server, admin: Client):
    device_id, token = await admin.register()
    await admin.post(
        "/api/v2/devices/" + device_id, {"shadow": {"state": {"desired": {"mode": "eco"}}}}
    )
    sim = await connect_device(server, token)
    try:
        async def applied() -> bool:
            return sim.reported.get("mode") == "eco"

        await eventually(applied)
        deltas = [f for f in sim.frames if f.get("method") == "Shadow.Delta"]
        assert deltas[0]["params"]["state"] == {"mode": "eco"}
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_notifications(server, admin: Client):
    device_id, token = await admin.register()
    sub = await subscribe(server, admin.key)
    mine = lambda name: lambda e: e["id"] == device_id and e["name"] == name  # noqa: E731
    try:
        sim = await connect_device(server, token)
        online = await sub.next(mine("online"))
        assert online == {"name": "online", "id": device_id, "data": None}
        heartbeat = await sub.next(mine("rpc.out.Heartbeat"))
        assert heartbeat["data"]["fw_version"] == "1.0.0"

        await admin.post("/api/v2/devices/%s/rpc/GPIO.Toggle" % device_id, {"pin": 5})
        call = await sub.next(mine("rpc.in.GPIO.Toggle"))
        assert call["data"] == {"pin": 5}

        sim.notify("MyStat", {"temperature": 21.5})
        stat = await sub.next(mine("rpc.out.MyStat"))
        assert stat["data"] == {"temperature": 21.5}

        sim.notify("Dash.Log", {"fd": 1, "data": "hello\n", "t": 1.5, "seq": 0})
        line = await sub.next(mine("rpc.out.Log"))
        assert line["data"]["data"] == "hello\n"

        await admin.post("/api/v2/devices/" + device_id, {"shadow": {"tags": {"room": "lab"}}})
        change = await sub.next(mine("shadow.update"))
        assert change["data"]["tags"] == {"room": "lab"}

        await sim.stop()
        offline = await sub.next(mine("offline"))
        assert offline["data"]["reason"]
    finally:
        sub.close()


@pytest_twisted.ensureDeferred
async def test_notify_accepts_access_token_in_url(server, admin: Client):
    device_id, token = await admin.register()
    sub = await subscribe(server, admin.key, query=True)
    try:
        sim = await connect_device(server, token)
        event = await sub.next(lambda e: e["id"] == device_id)
        assert event["name"] == "online"
        await sim.stop()
    finally:
        sub.close()


@pytest_twisted.ensureDeferred
async def test_mdash_library_device(server, admin: Client):
    """The mDash library sends no heartbeat, has no Shadow.Delta and reports
    with State.Set."""
    device_id, token = await admin.register()
    await admin.post(
        "/api/v2/devices/" + device_id, {"shadow": {"state": {"desired": {"x": 1}}}}
    )
    sim = await connect_device(server, token, dialect="mdash")
    try:
        # dashd asks for the info the device never volunteers.
        await eventually(lambda: _has_info(admin, device_id))
        assert any(f.get("method") == "Sys.GetInfo" for f in sim.frames)
        view = await admin.device(device_id)
        assert view["info"]["arch"] == "posix"

        # Shadow.Delta is refused once (-32601) and not retried, not even
        # when desired changes again on this connection.
        for value in (2, 3, 4):
            await admin.post(
                "/api/v2/devices/" + device_id, {"shadow": {"state": {"desired": {"x": value}}}}
            )
        calls = await admin.get("/api/v2/devices/%s/rpc/Sim.Echo" % device_id)
        assert calls.status == 200
        deltas = [f for f in sim.frames if f.get("method") == "Shadow.Delta"]
        assert len(deltas) == 1

        await within(sim.report({"temp": 20}))
        view = await admin.device(device_id)
        assert view["shadow"]["state"]["reported"]["temp"] == 20

        # Frames to an mDash device carry no dst (it announced no src).
        assert all("dst" not in f for f in sim.frames)
    finally:
        await sim.stop()


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # the store is beside the point
@pytest_twisted.ensureDeferred
async def test_the_simulator_command_runs_a_fleet(server, admin: Client, tmp_path):
    """python -m dashd.simulator as the README has it: tokens from
    --tokens-file (one a line), connections from the --bind addresses in
    turn, and --dialect mdash (no heartbeat: dashd asks Sys.GetInfo, and
    the mDash simulator's arch is posix)."""
    registered = [await admin.register("cli-%d" % i) for i in range(4)]
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(token for _, token in registered) + "\n\n")
    sub = await subscribe(server, admin.key)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashd.simulator", "--url", server.device_url,
         "--tokens-file", str(tokens), "--bind", "127.0.0.2", "--bind", "127.0.0.3",
         "--dialect", "mdash", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for device_id, _ in registered:
            await device_online(admin, device_id)

        async def info_known() -> bool:
            for device_id, _ in registered:
                if "arch" not in (await admin.device(device_id))["info"]:
                    return False
            return True

        await eventually(info_known)
        for i, (device_id, _) in enumerate(registered):
            assert (await admin.device(device_id))["info"]["arch"] == "posix"
            peer = re.search(r"device %s online from (\S+)" % device_id, server.log())
            assert peer, "no online line for %s" % device_id
            assert peer.group(1).startswith("tcp4:127.0.0.%d:" % (2 + i % 2)), peer.group(1)
        ids = {device_id for device_id, _ in registered}
        sub.never(lambda e: e["id"] in ids and e["name"] == "rpc.out.Heartbeat",
                  "heartbeats from mdash devices")
    finally:
        sub.close()
        proc.terminate()
        proc.wait(10)
    for device_id, _ in registered:
        await device_online(admin, device_id, online=False)
