"""
The REST API: every error a client can get, with its status and message,
and the key and device endpoints.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from support import (
    SECRETS,
    Client,
    connect_device,
    device_online,
    eventually,
    sleep,
    subscribe,
    within,
)


# Who may call


@pytest_twisted.ensureDeferred
async def test_missing_wrong_and_malformed_keys(server, admin: Client):
    anonymous = Client(server, None)
    reply = await anonymous.get("/api/v2/devices")
    assert reply.status == 401
    assert "API key is required" in reply.error["message"]
    assert reply.error["code"] == 401
    assert reply.headers.getRawHeaders("www-authenticate") == ['Bearer realm="dashd"']

    forged = admin.key[:-3] + ("AAA" if not admin.key.endswith("AAA") else "BBB")
    for bad in ("nope", forged, admin.key + "x", admin.key.split(".")[0]):
        reply = await Client(server, bad).get("/api/v2/devices")
        assert (reply.status, reply.error["message"]) == (401, "unknown API key"), bad

    reply = await admin.get("/api/v2/devices", headers={"Authorization": "Token " + admin.key})
    assert reply.status == 401
    assert "Bearer" in reply.error["message"]

    # ?access_token= works, and the key never reaches the access log.
    reply = await anonymous.get("/api/v2/devices?access_token=" + admin.key)
    assert reply.status == 200
    assert "access_token=***" in server.log()
    # Spelt as twisted.web also reads it: masked too (the fixture fails the
    # test if the key is anywhere in the log).
    reply = await anonymous.get("/api/v2/devices?access%5Ftoken=" + admin.key)
    assert reply.status == 200
    await eventually(lambda: "access%5Ftoken=***" in server.log())


@pytest_twisted.ensureDeferred
async def test_device_token_does_not_open_the_api(server, admin: Client):
    device_id, token = await admin.register()
    reply = await Client(server, token).get("/api/v2/devices")
    assert reply.status == 401
    assert "this is a device token" in reply.error["message"]
    reply = await Client(server, token).get("/api/v2/devices/" + device_id)
    assert reply.status == 401
    # Nor the notification stream.
    try:
        await subscribe(server, token)
        raise AssertionError("a device token opened /notify")
    except ConnectionError:
        pass


# Devices


@pytest_twisted.ensureDeferred
async def test_device_crud(server, admin: Client):
    reply = await admin.post("/api/v2/devices", {"name": "  porch light "})
    assert reply.status == 200
    device = reply.body
    SECRETS.add(device["token"])
    assert device["name"] == "porch light"
    assert set(device) >= {"id", "name", "online", "last_seen", "info", "shadow", "shared_with",
                           "token", "created"}
    assert device["shadow"] == {
        "state": {"desired": {}, "reported": {}, "delta": {}},
        "tags": {}, "version": 0, "timestamp": None,
        "sections": {name: {"version": 0, "timestamp": None}
                     for name in ("desired", "reported", "tags")},
        "metadata": {"reported": {}},
    }

    listed = await admin.get("/api/v2/devices")
    assert listed.status == 200
    ours = [d for d in listed.body if d["id"] == device["id"]]
    assert len(ours) == 1 and "token" not in ours[0]

    a1, a2 = [(await admin.post("/api/v2/accounts", {"name": n})) for n in ("a1", "a2")]
    for created in (a1, a2):
        SECRETS.add(created.body["admin_key"]["key"])
    a1, a2 = a1.body["id"], a2.body["id"]
    reply = await admin.post("/api/v2/devices/" + device["id"],
                             {"name": "porch", "shared_with": "%s,%s, %s" % (a1, a2, a1)})
    assert reply.status == 200
    assert reply.body["name"] == "porch" and reply.body["shared_with"] == "%s,%s" % (a1, a2)

    # Registering without a name names the device after its ID.
    unnamed = await admin.post("/api/v2/devices")
    assert unnamed.status == 200 and unnamed.body["name"] == unnamed.body["id"]
    SECRETS.add(unnamed.body["token"])

    reply = await admin.delete("/api/v2/devices/" + device["id"])
    assert reply.status == 200
    reply = await admin.delete("/api/v2/devices/" + device["id"])
    assert reply.status == 404
    assert reply.error["message"] == "no such device: %s" % device["id"]


@pytest_twisted.ensureDeferred
async def test_bad_bodies(server, admin: Client):
    device_id, _ = await admin.register()
    cases = [
        ("/api/v2/devices", b"{not json", "not valid JSON"),
        ("/api/v2/devices", b"[1,2]", "must be a JSON object"),
        ("/api/v2/devices", b'{"name": 5}', "name must be a non-empty string"),
        ("/api/v2/devices", b'{"name": ""}', "name must be a non-empty string"),
        ("/api/v2/devices", b'{"colour": "red"}', "unknown field(s): colour"),
        ("/api/v2/devices", b'{"name": "' + b"x" * 200 + b'"}', "at most 128"),
        ("/api/v2/devices/" + device_id, b'{"shadow": {"state": {"desired": 5}}}',
         "state.desired must be an object"),
        ("/api/v2/devices/" + device_id, b'{"shadow": {"state": {"delta": {}}}}',
         "only desired and reported"),
        ("/api/v2/devices/" + device_id, b'{"shadow": {"version": "x"}}', "version must be"),
        ("/api/v2/devices/" + device_id, b'{"shared_with": 7}', "shared_with must be"),
        ("/api/v2/devices/" + device_id + "/rpc/Sim.Echo", b"{oops", "not valid JSON"),
        ("/api/v2/keys", b'{"kind": "god"}', "kind must be one of admin, read-only, restricted"),
        ("/api/v2/keys", b'{"expires": 1}', "expires must be a Unix time in the future"),
    ]
    for path, raw, message in cases:
        reply = await admin.request("POST", path, raw=raw,
                                    headers={"Content-Type": "application/json"})
        assert reply.status == 400, (path, raw, reply)
        assert message in reply.error["message"], (path, raw, reply.error)
        assert reply.error["code"] == 400
    # Nothing was changed by any of them.
    view = await admin.device(device_id)
    assert view["shadow"]["version"] == 0


@pytest_twisted.ensureDeferred
async def test_infinity_and_nan_are_refused(server, admin: Client):
    """JSON has no Infinity or NaN: Python's json module reads them (and
    -1e400 as -Infinity), and what dashd stored of them it served back as
    text that is not JSON, breaking every reader of the device list."""
    device_id, _ = await admin.register()
    restricted = await admin.post("/api/v2/keys", {"kind": "restricted", "scope": {
        "devices": {device_id: {"read": ["x"], "write": ["x"]}}}})
    SECRETS.add(restricted.body["key"])
    customer = Client(server, restricted.body["key"])
    out_of_range = "-1e400 is out of range: a JSON number must be finite"
    cases = [
        (admin, "/api/v2/devices/" + device_id,
         b'{"shadow": {"state": {"desired": {"x": -1e400}}}}', out_of_range),
        (admin, "/api/v2/devices/" + device_id,
         b'{"shadow": {"state": {"reported": {"x": 1e999}}}}',
         "1e999 is out of range: a JSON number must be finite"),
        (admin, "/api/v2/devices/" + device_id, b'{"shadow": {"tags": {"x": NaN}}}',
         "NaN is not a JSON number (JSON has no Infinity or NaN)"),
        (customer, "/api/v2/devices/" + device_id,
         b'{"shadow": {"state": {"desired": {"x": -1e400}}}}', out_of_range),
        (admin, "/api/v2/keys", b'{"expires": Infinity}', "Infinity is not a JSON number"),
        (admin, "/api/v2/keys", b'{"expires": NaN}', "NaN is not a JSON number"),
        (admin, "/api/v2/keys", b'{"expires": 1e400}', "1e400 is out of range"),
        (admin, "/api/v2/keys", b'{"expires": 1' + b"0" * 400 + b"}",
         "expires must be a Unix time in the future"),
        (admin, "/api/v2/devices/%s/rpc/Sim.Echo" % device_id, b"[-Infinity]",
         "-Infinity is not a JSON number"),
        (admin, "/api/v2/logs", b'{"start": -Infinity}', "-Infinity is not a JSON number"),
    ]
    for client, path, raw, message in cases:
        reply = await client.request("POST", path, raw=raw,
                                     headers={"Content-Type": "application/json"})
        assert reply.status == 400, (path, raw, reply)
        assert message in reply.error["message"], (path, raw, reply.error)
    # Nothing was stored: what dashd serves stays JSON for everyone.
    for path in ("/api/v2/devices", "/api/v2/keys", "/api/v2/devices/" + device_id):
        reply = await admin.get(path)
        assert reply.status == 200 and reply.body is not None, (path, reply.raw[:200])
        assert b"Infinity" not in reply.raw and b"NaN" not in reply.raw
    assert (await admin.device(device_id))["shadow"]["version"] == 0


@pytest_twisted.ensureDeferred
async def test_deep_nesting_is_refused(server, admin: Client):
    """JSON nested deeper than Python's recursion went up as a
    RecursionError: a 500 and a traceback. Anything nested more than 100
    deep is refused, before it is read."""
    device_id, _ = await admin.register()
    deep_array = b"[" * 20_000 + b"]" * 20_000
    deep_object = b'{"shadow": {"state": {"desired": ' + b'{"a": ' * 200 + b"1" \
        + b"}" * 200 + b"}}}"
    cases = [
        ("/api/v2/devices", deep_array),
        ("/api/v2/devices/" + device_id, deep_object),
        ("/api/v2/devices/%s/rpc/Sim.Echo" % device_id, deep_array),
        ("/api/v2/keys", b'{"scope": ' + b"[" * 101 + b"]" * 101 + b"}"),
        ("/api/v2/logs", b"[" * 5000),
    ]
    for path, raw in cases:
        reply = await admin.request("POST", path, raw=raw,
                                    headers={"Content-Type": "application/json"})
        assert reply.status == 400, (path, reply.raw[:200])
        assert "arrays and objects are nested more than 100 deep" in reply.error["message"]
    # 100 deep is JSON dashd reads (and then judges by its own rules).
    reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % device_id,
                             raw=b"[" * 99 + b"]" * 99)
    assert reply.status == 503 and "offline" in reply.error["message"]
    assert "Traceback" not in server.log()


@pytest_twisted.ensureDeferred
async def test_body_over_the_limit_gets_413(server, admin: Client):
    device_id, _ = await admin.register()
    big = b'{"name": "' + b"x" * 70000 + b'"}'  # the test server allows 64 KiB
    reply = await admin.request("POST", "/api/v2/devices/" + device_id, raw=big)
    assert reply.status == 413
    assert reply.error["message"] == "the request body is larger than 65536 bytes"
    view = await admin.device(device_id)
    assert view["name"] == device_id
    # Chunked (no Content-Length): refused as soon as the chunks pass the limit.
    response = raw_http(
        server,
        b"POST /api/v2/devices/%s HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer %s\r\nTransfer-Encoding: chunked\r\n\r\n"
        % (device_id.encode(), admin.key.encode()),
        [b"1000\r\n" + b"x" * 4096 + b"\r\n"] * 40,
    )
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert b"larger than 65536 bytes" in response
    assert (await admin.device(device_id))["name"] == device_id


def raw_http(server, head: bytes, chunks: list[bytes]) -> bytes:
    """Send a request by hand (dashd runs in another process, so blocking
    here is fine) and return all that comes back before the close."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head)
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except OSError:
            pass  # dashd closed the connection: what we want
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except OSError:
                break
            if not part:
                break
            data += part
        return data


@pytest_twisted.ensureDeferred
async def test_unknown_routes_and_methods(server, admin: Client):
    reply = await admin.get("/api/v2/nothing/here")
    assert (reply.status, reply.error["message"]) == (404, "no such route: /api/v2/nothing/here")
    reply = await admin.request("PUT", "/api/v2/devices")
    assert reply.status == 405
    assert "PUT is not allowed" in reply.error["message"]
    assert "GET" in reply.headers.getRawHeaders("allow")[0]
    reply = await admin.get("/api/v2/devices/d000000000000")
    assert (reply.status, reply.error["message"]) == (404, "no such device: d000000000000")


# RPC


@pytest_twisted.ensureDeferred
async def test_rpc_errors(server, admin: Client):
    device_id, token = await admin.register()
    path = "/api/v2/devices/%s/rpc/" % device_id

    # Offline: 503 at once.
    started = time.monotonic()
    reply = await admin.get(path + "Sys.GetInfo")
    assert reply.status == 503
    assert reply.error["message"] == "device %s is offline" % device_id
    assert time.monotonic() - started < 2

    reply = await admin.get("/api/v2/devices/dnosuchdevice0/rpc/Sys.GetInfo")
    assert reply.status == 404

    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        # The device's own error is passed on with its code, as 502.
        reply = await admin.post(path + "Sim.Fail", {"code": 42, "message": "flux capacitor"})
        assert reply.status == 502
        assert reply.body == {"error": {"code": 42, "message": "flux capacitor"}}
        reply = await admin.get(path + "No.Such")
        assert (reply.status, reply.error["code"]) == (502, 404)

        # Timeout: 504 after ?timeout=.
        started = time.monotonic()
        reply = await admin.post(path + "Sim.Sleep?timeout=0.5", {"seconds": 1.2})
        assert reply.status == 504
        assert reply.error["message"] == (
            "device %s did not answer Sim.Sleep within 0.5 s" % device_id
        )
        assert 0.4 < time.monotonic() - started < 3
        # The late answer, when it comes, is dropped; the device works on
        # (the session's side of it on a Clock: test_session.py).
        await sleep(1)
        reply = await admin.post(path + "Sim.Echo", [1, 2])
        assert (reply.status, reply.body) == (200, [1, 2])

        # Params that fit the body limit (64 KiB here) but not, once framed,
        # the device channel's message limit (also 64 KiB): 413, not sent.
        frames_before = len(sim.frames)
        big = '"' + "y" * 65500 + '"'
        reply = await admin.request("POST", path + "Sim.Echo", raw=big.encode())
        assert reply.status == 413
        assert "more than the device channel's limit of 65536 bytes" in reply.error["message"]
        await admin.post(path + "Sim.Echo", "after")
        assert [f for f in sim.frames[frames_before:] if f.get("method") == "Sim.Echo"][0][
            "params"] == "after"

        for bad in ("0", "-1", "abc", "31", "nan", "inf"):
            reply = await admin.get(path + "Sim.Echo?timeout=" + bad)
            assert reply.status == 400, bad
            assert "timeout must be a number of seconds" in reply.error["message"]
        reply = await admin.get(path + "x" * 200)
        assert reply.status == 400

        # GET sends no params, POST with an empty body neither.
        reply = await admin.get(path + "Sim.Echo")
        assert (reply.status, reply.body) == (200, None)
        reply = await admin.post(path + "Sim.Echo")
        assert (reply.status, reply.body) == (200, None)
        sent = [f for f in sim.frames if f.get("method") == "Sim.Echo"][-1]
        assert "params" not in sent
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_head_on_rpc_calls_nothing(server, admin: Client):
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        reply = await admin.request("HEAD", "/api/v2/devices/%s/rpc/Sim.Echo" % device_id)
        assert reply.status == 405
        assert reply.headers.getRawHeaders("allow") == ["GET, POST"]
        reply = await admin.request("HEAD", "/api/v2/devices/%s/rpc/Sys.Reboot" % device_id)
        assert reply.status == 405
        await sleep(0.2)
        assert not [f for f in sim.frames if f.get("method") in ("Sim.Echo", "Sys.Reboot")]
        reply = await admin.get("/api/v2/devices/%s/rpc/Sim.Echo" % device_id)
        assert reply.status == 200
    finally:
        await sim.stop()


def test_huge_headers_and_urls_get_431_and_414(server):
    """A 64 KiB header or a 100,000-character URL dropped the connection
    without a status."""
    cases = [
        (b"GET /api/v2/devices HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (b"a" * 65536),
         431, b"the request's headers are larger than 16384 bytes"),
        (b"GET /api/v2/devices HTTP/1.1\r\nHost: x\r\n%s\r\n"
         % b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(20)),
         431, b"the request's headers are larger than 16384 bytes"),
        (b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % (b"a" * 100_000),
         414, b"the request line is longer than 16384 bytes"),
        (b"GET /api/v2/devices?q=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (b"a" * 17_000),
         414, b"the request line is longer than 16384 bytes"),
    ]
    for request, status, message in cases:
        response = raw_http(server, request, [])
        assert response.startswith(b"HTTP/1.1 %d " % status), response[:200]
        assert message in response, response[:300]


@pytest_twisted.ensureDeferred
async def test_calls_in_flight_are_bounded(tmp_path):
    """More calls than device.max_calls_in_flight get 429 with Retry-After."""
    from support import DashdProcess

    server = DashdProcess(str(tmp_path), {"device": {"max_calls_in_flight": 3}})
    await server.start_async()
    try:
        admin = Client(server, server.admin_key)
        device_id, token = await admin.register()
        sim = await connect_device(server, token)
        await device_online(admin, device_id)
        path = "/api/v2/devices/%s/rpc/Sim.Sleep" % device_id
        from twisted.internet.defer import Deferred, gatherResults

        slow = [Deferred.fromCoroutine(admin.post(path, {"seconds": 1.5})) for _ in range(3)]
        await sleep(0.5)
        reply = await admin.post(path, {"seconds": 0})
        assert reply.status == 429
        assert reply.headers.getRawHeaders("retry-after") == ["1"]
        assert "3 calls in flight" in reply.error["message"]
        replies = await within(gatherResults(slow), 10)
        assert [r.status for r in replies] == [200, 200, 200]
        reply = await admin.post(path, {"seconds": 0})
        assert reply.status == 200
        await sim.stop()
    finally:
        server.stop()
    assert not server.problems()


# Shadow


@pytest_twisted.ensureDeferred
async def test_shadow_over_rest(server, admin: Client):
    device_id, _ = await admin.register()
    url = "/api/v2/devices/" + device_id
    reply = await admin.post(url, {"shadow": {"state": {"desired": {"a": 1, "b": {"c": 2, "d": 3}}},
                                              "tags": {"site": "north"}}})
    assert reply.status == 200
    doc = reply.body["shadow"]
    assert doc["version"] == 1
    assert doc["state"]["delta"] == {"a": 1, "b": {"c": 2, "d": 3}}
    assert doc["tags"] == {"site": "north"}

    reply = await admin.post(url, {"shadow": {"state": {"reported": {"a": 1, "b": {"c": 2}}}}})
    assert reply.body["shadow"]["state"]["delta"] == {"b": {"d": 3}}
    assert reply.body["shadow"]["version"] == 2

    # null deletes a key; a stale version is refused with 409 and changes nothing.
    reply = await admin.post(url, {"shadow": {"state": {"desired": {"b": {"d": None}}},
                                              "version": 2}})
    assert reply.status == 200
    assert reply.body["shadow"]["state"]["desired"] == {"a": 1, "b": {"c": 2}}
    assert reply.body["shadow"]["state"]["delta"] == {}
    reply = await admin.post(url, {"name": "renamed",
                                   "shadow": {"state": {"desired": {"a": 9}}, "version": 2}})
    assert reply.status == 409
    assert reply.error["message"] == "shadow version 2 is stale: the current version is 3"
    view = await admin.device(device_id)
    assert view["shadow"]["state"]["desired"]["a"] == 1
    assert view["name"] != "renamed"  # the whole change was refused

    # An update that changes nothing does not bump the version.
    reply = await admin.post(url, {"shadow": {"state": {"desired": {"a": 1}}}})
    assert reply.body["shadow"]["version"] == 3
    # A section set to null is emptied.
    reply = await admin.post(url, {"shadow": {"tags": None}})
    assert reply.body["shadow"]["tags"] == {} and reply.body["shadow"]["version"] == 4

    # Too large or too deep: 413, nothing stored.
    reply = await admin.post(url, {"shadow": {"state": {"desired": {"big": "x" * 20000}}}})
    assert reply.status == 413
    assert "more than the limit of 16384" in reply.error["message"]
    deep: dict = {}
    node = deep
    for _ in range(12):
        node["n"] = {}
        node = node["n"]
    reply = await admin.post(url, {"shadow": {"state": {"desired": deep}}})
    assert reply.status == 413
    assert "nested deeper than 8 levels" in reply.error["message"]
    assert (await admin.device(device_id))["shadow"]["version"] == 4

    # Conditioned on a section: desired is at version 2 (its two changes
    # above), whatever the reports did.
    doc = (await admin.device(device_id))["shadow"]
    assert doc["sections"]["desired"]["version"] == 2
    assert doc["sections"]["reported"]["version"] == 1 and doc["sections"]["tags"]["version"] == 2
    assert doc["metadata"]["reported"] == {"a": doc["sections"]["reported"]["timestamp"],
                                           "b": {"c": doc["sections"]["reported"]["timestamp"]}}
    await admin.post(url, {"shadow": {"state": {"reported": {"a": 2}}}})
    reply = await admin.post(url, {"shadow": {"state": {"desired": {"e": 5}},
                                              "versions": {"desired": 2}}})
    assert reply.status == 200, reply
    assert reply.body["shadow"]["sections"]["desired"]["version"] == 3
    reply = await admin.post(url, {"shadow": {"state": {"desired": {"e": 6}},
                                              "versions": {"desired": 2}}})
    assert reply.status == 409
    assert reply.error["message"] == ("the shadow's desired is at version 3, not 2: it was "
                                      "changed meanwhile")
    reply = await admin.post(url, {"shadow": {"state": {"desired": {"e": 6}},
                                              "versions": {"desired": "3"}}})
    assert (reply.status, reply.error["message"]) == (
        400, "versions.desired must be a non-negative integer")


@pytest_twisted.ensureDeferred
async def test_shadow_from_the_device(server, admin: Client):
    device_id, token = await admin.register()
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        await admin.post("/api/v2/devices/" + device_id,
                         {"shadow": {"tags": {"secret": "for users"}}})
        doc = await within(sim.call("Dash.Shadow.Get"))
        assert "tags" not in doc
        version = doc["version"]
        # A device update with the current version is accepted...
        result = await within(sim.call("Dash.Shadow.Update",
                                       {"state": {"reported": {"t": 1}}, "version": version}))
        assert result == {"version": version + 1}
        # ...with a stale one it gets error 409.
        try:
            await within(sim.call("Dash.Shadow.Update",
                                  {"state": {"reported": {"t": 2}}, "version": version}))
            raise AssertionError("stale version accepted")
        except Exception as e:
            assert getattr(e, "code", None) == 409
            assert "stale" in e.message
        # The device may also change desired, and delete with null.
        await within(sim.call("Dash.Shadow.Update",
                              {"state": {"desired": {"want": 1}, "reported": {"t": None}}}))
        view = await admin.device(device_id)
        assert view["shadow"]["state"]["desired"] == {"want": 1}
        assert "t" not in view["shadow"]["state"]["reported"]
        # Bad params get -32602 and change nothing.
        for params in ({"state": 5}, [], {"state": {"desired": 3}}):
            try:
                await within(sim.call("Dash.Shadow.Update", params))
                raise AssertionError("accepted %r" % (params,))
            except Exception as e:
                assert getattr(e, "code", None) == -32602, params
    finally:
        await sim.stop()


# Keys


@pytest_twisted.ensureDeferred
async def test_keys(server, admin: Client):
    reply = await admin.post("/api/v2/keys", {"name": "ci"})
    assert reply.status == 200
    new = reply.body
    SECRETS.add(new["key"])
    assert new["key"].startswith(new["id"] + ".")
    assert new["kind"] == "admin" and new["name"] == "ci"

    listed = await admin.get("/api/v2/keys")
    assert listed.status == 200
    assert new["id"] in [k["id"] for k in listed.body]
    assert all("key" not in k and "secret_hash" not in k for k in listed.body)
    assert new["key"] not in listed.raw.decode()

    other = Client(server, new["key"])
    assert (await other.get("/api/v2/devices")).status == 200
    sub = await subscribe(server, new["key"])

    reply = await admin.delete("/api/v2/keys/" + new["id"])
    assert reply.status == 200
    # Revocation takes effect at once.
    reply = await other.get("/api/v2/devices")
    assert (reply.status, reply.error["message"]) == (401, "unknown API key")
    reply = await admin.delete("/api/v2/keys/" + new["id"])
    assert reply.status == 404
    sub.close()

    # An account's last admin key cannot be deleted. A new account of its
    # own, whose only admin key is the one it came with, however many keys
    # the other tests of this module leave in the first account.
    created = await admin.post("/api/v2/accounts", {"name": "one admin"})
    assert created.status == 200, created
    SECRETS.add(created.body["admin_key"]["key"])
    owner = Client(server, created.body["admin_key"]["key"])
    reader = await owner.post("/api/v2/keys", {"kind": "read-only"})
    assert reader.status == 200, reader
    SECRETS.add(reader.body["key"])
    keys = (await owner.get("/api/v2/keys")).body
    assert sorted(k["kind"] for k in keys) == ["admin", "read-only"], keys
    only = created.body["admin_key"]["id"]
    reply = await owner.delete("/api/v2/keys/" + only)
    assert reply.status == 409, reply
    assert "last admin key" in reply.error["message"]
    assert (await owner.get("/api/v2/keys")).status == 200


# On SQLite only: expiry on a Clock (even from the authenticator's cache) is
# in test_keys.py, and expired keys end to end on every backend in
# test_access.py.
@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_expired_key(server, admin: Client):
    reply = await admin.post("/api/v2/keys", {"name": "short", "expires": time.time() + 1.5})
    assert reply.status == 200
    SECRETS.add(reply.body["key"])
    key_id = reply.body["id"]
    short = Client(server, reply.body["key"])
    assert (await short.get("/api/v2/devices")).status == 200
    await sleep(2)
    reply = await short.get("/api/v2/devices")
    assert reply.status == 401
    assert reply.error["message"] == "API key %s has expired" % key_id


@pytest_twisted.ensureDeferred
async def test_notify_door_needs_an_api_key(server, admin: Client):
    from support import raw_handshake

    reply = await raw_handshake(server, "/api/v2/notify")
    assert reply.status == 401
    assert "API key is required" in reply.error["message"]
    reply = await raw_handshake(server, "/api/v2/notify?access_token=wrong")
    assert (reply.status, reply.error["message"]) == (401, "unknown API key")


@pytest_twisted.ensureDeferred
async def test_the_notification_stream_opens_with_a_single_use_ticket(server, admin: Client):
    """The key need not be in the stream's URL: POST /notify/ticket (key in
    the header) gives a ticket that opens the stream as that key, once."""
    from support import raw_handshake

    device_id, _ = await admin.register("ticketed")
    reply = await admin.post("/api/v2/notify/ticket")
    assert reply.status == 200, reply
    ticket = reply.body["ticket"]
    SECRETS.add(ticket)
    assert ticket.startswith("nt_") and admin.key not in str(reply.body)
    assert time.time() < reply.body["expires"] <= time.time() + 31
    assert reply.body["url"] == "/api/v2/notify?ticket=" + ticket
    sub = await subscribe(server, admin.key, ticket=ticket)
    try:
        await admin.post("/api/v2/devices/" + device_id, {"shadow": {"tags": {"t": 1}}})
        event = await sub.next(lambda e: e["id"] == device_id and e["name"] == "shadow.update")
        assert event["data"]["tags"] == {"t": 1}
    finally:
        sub.close()
    # Once only; nor a made-up one, nor without its prefix.
    for wrong in (ticket, "nt_" + "A" * 43, ticket[3:]):
        reply = await raw_handshake(server, "/api/v2/notify?ticket=" + wrong)
        assert reply.status == 401, wrong
        assert "unknown, used or expired ticket" in reply.error["message"]
    # A key revoked after its ticket was made opens nothing with it.
    made = await admin.post("/api/v2/keys", {"name": "soon revoked"})
    SECRETS.add(made.body["key"])
    other = Client(server, made.body["key"])
    reply = await other.post("/api/v2/notify/ticket")
    SECRETS.add(reply.body["ticket"])
    assert (await admin.delete("/api/v2/keys/" + made.body["id"])).status == 200
    reply = await raw_handshake(server, "/api/v2/notify?ticket=" + reply.body["ticket"])
    assert (reply.status, reply.error["message"]) == (401, "the ticket's API key no longer works")
    # A ticket needs a key; a restricted key's ticket sees what the key sees.
    reply = await Client(server, None).post("/api/v2/notify/ticket", key=None)
    assert reply.status == 401
    restricted = await admin.post("/api/v2/keys", {"kind": "restricted", "scope": {
        "devices": {device_id: {"read": ["x"]}}}})
    SECRETS.add(restricted.body["key"])
    reply = await Client(server, restricted.body["key"]).post("/api/v2/notify/ticket")
    SECRETS.add(reply.body["ticket"])
    sub = await subscribe(server, "", ticket=reply.body["ticket"])
    try:
        await admin.post("/api/v2/devices/" + device_id, {"shadow": {"tags": {"t": 2}}})
        event = await sub.next(lambda e: e["id"] == device_id)
        assert event["name"] == "shadow.update" and "tags" not in event["data"]
    finally:
        sub.close()
    await eventually(lambda: "ticket=***" in server.log())


@pytest_twisted.ensureDeferred
async def test_websocket_doors_answer_a_compression_offer(server, admin: Client):
    """Browsers offer permessage-deflate; dashd declines it and upgrades."""
    import socket

    device_id, token = await admin.register()
    for path, secret in (("/api/v2/notify", admin.key), ("/api/v2/rpc", token)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(
                b"GET %s?access_token=%s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Origin: http://elsewhere.example\r\n"
                b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
                % (path.encode(), secret.encode())
            )
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 101 "), (path, answer)
        assert b"permessage-deflate" not in answer


@pytest_twisted.ensureDeferred
async def test_device_changes_are_announced(server, admin: Client):
    """device.created, device.updated (name, sharing) and device.deleted:
    a list open elsewhere stays true. A restricted key hears of its own
    device's name and deletion, not whom it is shared with."""
    subscriber = await subscribe(server, server.admin_key)
    device_id, _ = await admin.register("first name")
    other_id, _ = await admin.register("not the customer's")
    key = await admin.post("/api/v2/keys", {"kind": "restricted", "scope": {
        "devices": {device_id: {"read": [], "write": [], "rpc": []}}}})
    SECRETS.add(key.body["key"])
    customer = await subscribe(server, key.body["key"])
    mine = lambda name: lambda e: e["name"] == name and e["id"] == device_id  # noqa: E731
    created = await subscriber.next(mine("device.created"))
    assert created["data"] == {"name": "first name"}
    partner = await admin.post("/api/v2/accounts", {"name": "partner"})
    SECRETS.add(partner.body["admin_key"]["key"])
    reply = await admin.post("/api/v2/devices/" + device_id, {
        "name": "second name", "shared_with": partner.body["id"]})
    assert reply.status == 200, reply
    updated = await subscriber.next(mine("device.updated"))
    assert updated["data"] == {"name": "second name", "shared_with": [partner.body["id"]]}
    assert (await customer.next(mine("device.updated")))["data"] == {"name": "second name"}
    await admin.delete("/api/v2/devices/" + other_id)
    await admin.delete("/api/v2/devices/" + device_id)
    assert (await subscriber.next(mine("device.deleted")))["data"] is None
    await customer.next(mine("device.deleted"))
    customer.never(lambda e: e["id"] == other_id, "events of a device out of its scope")
    customer.never(lambda e: e["name"] == "device.created", "device.created")
    subscriber.close()
    customer.close()
