"""
Alarms and webhooks end to end: a real dashd (on each store), devices over
real WebSockets, and a real HTTP receiver in the test process that checks
signatures, answers 500 and then 200, or hangs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web import resource, server as web_server

import backends
from support import Client, DashdProcess, connect_device, eventually, subscribe, within

CONFIG = {
    "webhooks": {"allow_http": True, "allowed_networks": ["127.0.0.0/8"], "timeout": 1.0,
                 "retry_delay": 0.2, "max_retry_delay": 1.0, "max_attempts": 4,
                 "backlog": 5},
}


class Receiver(resource.Resource):
    """Records every POST by path; answers each path's scripted codes in
    turn (then 200), or never answers paths in C{hang}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.script: dict[str, list[int]] = {}
        self.hang: set[str] = set()
        self.hanging: list[Any] = []
        # Paths answered 200 with a body that never ends; closed: those
        # whose connection the client dropped.
        self.drip: set[str] = set()
        self.dropped: list[str] = []

    def render_POST(self, request: Any) -> Any:
        path = request.path.decode()
        body = request.content.read()
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.received.setdefault(path, []).append(
            {"t": time.time(), "headers": headers, "body": body, "json": json.loads(body)})
        if path in self.hang:
            self.hanging.append(request)
            return web_server.NOT_DONE_YET
        if path in self.drip:
            def drip() -> None:
                if not request.finished and not request._disconnected:
                    request.write(b"x" * 1024)
                    reactor.callLater(0.05, drip)

            request.notifyFinish().addErrback(lambda _: self.dropped.append(path))
            drip()
            return web_server.NOT_DONE_YET
        codes = self.script.get(path, [])
        request.setResponseCode(codes.pop(0) if codes else 200)
        return b"ok"

    def got(self, path: str) -> list[dict[str, Any]]:
        return self.received.get(path, [])


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    r = Receiver()
    port = reactor.listenTCP(0, web_server.Site(r), interface="127.0.0.1")
    yield r, port.getHost().port
    for request in r.hanging:
        if not request.finished and not request._disconnected:
            request.finish()
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture(scope="module", params=backends.STORES)
def dashd(request, tmp_path_factory) -> Iterator[DashdProcess]:
    url = backends.create_database() if request.param == "postgresql" else None
    proc = DashdProcess(str(tmp_path_factory.mktemp("dashd")), CONFIG, store_url=url)
    proc.start()
    yield proc
    proc.stop()
    if url:
        backends.drop_database(url)
    problems = proc.problems()
    assert not problems, "%s\n--- dashd log ---\n%s" % (problems, proc.log()[-5000:])


def verify(secret: str, delivery: dict[str, Any]) -> None:
    """What a receiver does (README, "Webhooks")."""
    headers = delivery["headers"]
    timestamp = headers["x-dashd-timestamp"]
    expected = "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + delivery["body"],
                                hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-dashd-signature"], expected)
    assert abs(int(timestamp) - time.time()) < 30


async def _hook(admin: Client, port: int, path: str, **fields: Any) -> dict[str, Any]:
    body = {"url": "http://127.0.0.1:%d%s" % (port, path), "name": path}
    body.update(fields)
    reply = await admin.post("/api/v2/webhooks", body)
    assert reply.status == 201, reply
    return reply.body


@pytest_twisted.ensureDeferred
async def test_an_alarm_from_report_to_webhook_and_back(dashd, receiver):
    recv, port = receiver
    admin = Client(dashd, dashd.admin_key)
    hook = await _hook(admin, port, "/%d/alarms" % dashd.port,
                       events=["alarm.raised", "alarm.cleared", "alarm.acknowledged"])
    device_id, token = await admin.register("freezer")
    reply = await admin.post("/api/v2/alarm-rules", {
        "name": "freezer warm", "where": 'id = "%s"' % device_id, "severity": "critical",
        "condition": {"kind": "threshold", "key": "temp", "above": -10, "clear": -15},
        "webhooks": [hook["id"]]})
    assert reply.status == 201, reply
    rule = reply.body
    sub = await subscribe(dashd, dashd.admin_key)
    device = await connect_device(dashd, token)
    try:
        await device.report({"temp": -18})
        await device.report({"temp": -5})
        raised = await sub.next(lambda e: e["name"] == "alarm.raised" and e["id"] == device_id)
        assert raised["data"]["severity"] == "critical" and raised["data"]["rule"] == \
            "freezer warm"
        await device.report({"temp": -3})
        await device.report({"temp": -12})  # between the thresholds
        await eventually(lambda: recv.got("/%d/alarms" % dashd.port))
        [delivery] = recv.got("/%d/alarms" % dashd.port)
        verify(hook["secret"], delivery)
        assert delivery["json"]["kind"] == "alarm.raised"
        assert delivery["json"]["data"]["device_id"] == device_id
        assert delivery["headers"]["x-dashd-event"] == "alarm.raised"
        # Listed, filtered.
        listed = await admin.get("/api/v2/alarms?state=active&device=%s" % device_id)
        [alarm] = listed.body
        assert alarm["id"] == raised["data"]["id"] and not alarm["acknowledged"]
        assert (await admin.get("/api/v2/alarms?state=active&severity=minor&device=%s"
                                % device_id)).body == []
        count = await admin.get("/api/v2/alarms/count")
        assert count.body["by_severity"]["critical"] >= 1
        # Acknowledged with a note.
        ack = await admin.post("/api/v2/alarms/%s/acknowledge" % alarm["id"],
                               {"note": "door was open"})
        assert ack.status == 200 and ack.body["note"] == "door was open", ack
        await sub.next(lambda e: e["name"] == "alarm.acknowledged" and e["id"] == device_id)
        await device.report({"temp": -16})
        cleared = await sub.next(lambda e: e["name"] == "alarm.cleared" and e["id"] == device_id)
        assert cleared["data"]["state"] == "cleared"
        await eventually(lambda: len(recv.got("/%d/alarms" % dashd.port)) == 3)
        kinds = [d["json"]["kind"] for d in recv.got("/%d/alarms" % dashd.port)]
        assert kinds == ["alarm.raised", "alarm.acknowledged", "alarm.cleared"]
        for d in recv.got("/%d/alarms" % dashd.port):
            verify(hook["secret"], d)

        # In the device's history too, in order, with the note.
        async def in_history() -> list[dict[str, Any]]:
            reply = await admin.post("/api/v2/logs", {"start": 0, "device_id": device_id,
                                                      "limit": 1000})
            assert reply.status == 200, reply
            found = [e for e in reply.body["events"] if e["name"].startswith("alarm.")]
            return found if len(found) == 3 else []

        stored = await eventually(in_history)
        assert [e["name"] for e in stored] == ["alarm.raised", "alarm.acknowledged",
                                               "alarm.cleared"]
        assert {e["data"]["id"] for e in stored} == {alarm["id"]}
        assert stored[1]["data"]["note"] == "door was open"
        # Raised once while it held.
        sub.never(lambda e: e["name"] == "alarm.raised" and e["id"] == device_id and
                  e["data"]["id"] != alarm["id"], "a second alarm")
        async def audited() -> bool:
            audit = await admin.get("/api/v2/audit?start=-200&limit=200")
            assert audit.status == 200, audit
            paths = [e["path"] for e in audit.body["entries"]]
            return "/api/v2/alarms/%s/acknowledge" % alarm["id"] in paths and any(
                p.startswith("alarm.raised %s" % alarm["id"]) for p in paths)

        await eventually(audited)
        metrics = await admin.get("/metrics", key=None)
        text = metrics.raw.decode()
        assert 'dashd_alarms_active{severity="critical"}' in text
    finally:
        sub.close()
        await device.stop()
        await admin.delete("/api/v2/alarm-rules/" + rule["id"])


@pytest_twisted.ensureDeferred
async def test_retries_after_500_in_order(dashd, receiver):
    recv, port = receiver
    admin = Client(dashd, dashd.admin_key)
    recv.script["/%d/flaky" % dashd.port] = [500, 500]
    hook = await _hook(admin, port, "/%d/flaky" % dashd.port)
    ids = []
    for _ in range(3):
        reply = await admin.post("/api/v2/webhooks/%s/test" % hook["id"])
        assert reply.status == 202, reply
        ids.append(reply.body["delivery"])
    await eventually(lambda: len(recv.got("/%d/flaky" % dashd.port)) == 5, seconds=15)
    got = [d["headers"]["x-dashd-delivery"] for d in recv.got("/%d/flaky" % dashd.port)]
    # The first one three times (500, 500, 200), then the others in order.
    assert got == [ids[0], ids[0], ids[0], ids[1], ids[2]]
    times = [d["t"] for d in recv.got("/%d/flaky" % dashd.port)]
    assert times[2] - times[1] > (times[1] - times[0]) * 1.3  # backing off
    for d in recv.got("/%d/flaky" % dashd.port):
        verify(hook["secret"], d)
    view = (await admin.get("/api/v2/webhooks/" + hook["id"])).body
    assert "secret" not in view
    statuses = [d["status"] for d in reversed(view["deliveries"]["last"])]
    assert statuses == [500, 500, 200, 200, 200]
    assert view["deliveries"]["delivered"] == 3 and view["deliveries"]["failed"] == 0


@pytest_twisted.ensureDeferred
async def test_a_hanging_receiver_holds_up_nothing_else(dashd, receiver):
    recv, port = receiver
    admin = Client(dashd, dashd.admin_key)
    recv.hang.add("/%d/hang" % dashd.port)
    stuck = await _hook(admin, port, "/%d/hang" % dashd.port)
    fine = await _hook(admin, port, "/%d/fine" % dashd.port)
    for _ in range(8):
        assert (await admin.post("/api/v2/webhooks/%s/test" % stuck["id"])).status == 202
    started = time.time()
    assert (await admin.post("/api/v2/webhooks/%s/test" % fine["id"])).status == 202
    await eventually(lambda: recv.got("/%d/fine" % dashd.port))
    assert time.time() - started < 1.0
    # The stuck one: at most its backlog waits; the oldest were dropped.
    view = (await admin.get("/api/v2/webhooks/" + stuck["id"])).body
    assert view["deliveries"]["dropped"] >= 2
    assert view["deliveries"]["backlog"] <= 6
    # Its request is given up after webhooks.timeout and tried again.
    await eventually(lambda: len(recv.got("/%d/hang" % dashd.port)) >= 2, seconds=10)
    view = (await admin.get("/api/v2/webhooks/" + stuck["id"])).body
    assert any("no answer within 1 s" == (d["error"] or "") for d in view["deliveries"]["last"]), json.dumps(view["deliveries"])
    assert (await admin.get("/api/v2/webhooks/%s" % fine["id"])).body["deliveries"][
        "delivered"] == 1
    await admin.delete("/api/v2/webhooks/" + stuck["id"])


@pytest_twisted.ensureDeferred
async def test_device_events_and_offline_rule(dashd, receiver):
    recv, port = receiver
    admin = Client(dashd, dashd.admin_key)
    hook = await _hook(admin, port, "/%d/devices" % dashd.port,
                       events=["device.online", "device.offline", "alarm.raised"])
    device_id, token = await admin.register("gateway")
    reply = await admin.post("/api/v2/alarm-rules", {
        "name": "gone", "where": 'id = "%s"' % device_id, "severity": "major",
        "condition": {"kind": "offline", "seconds": 1}})
    assert reply.status == 201, reply
    device = await connect_device(dashd, token)
    await device.stop()

    def kinds() -> list[str]:
        return [d["json"]["kind"] for d in recv.got("/%d/devices" % dashd.port)
                if d["json"]["data"].get("device_id") == device_id]

    await eventually(lambda: kinds() == ["device.online", "device.offline", "alarm.raised"],
                     seconds=10)
    listed = (await admin.get("/api/v2/alarms?state=active&device=" + device_id)).body
    assert len(listed) == 1 and "offline" in listed[0]["message"]
    # Cleared by hand.
    cleared = await admin.post("/api/v2/alarms/%s/clear" % listed[0]["id"])
    assert cleared.status == 200 and cleared.body["state"] == "cleared", cleared
    again = await admin.post("/api/v2/alarms/%s/clear" % listed[0]["id"])
    assert again.status == 200 and again.body["cleared"] == cleared.body["cleared"]
    await admin.delete("/api/v2/webhooks/" + hook["id"])


@pytest_twisted.ensureDeferred
async def test_bad_requests(dashd):
    admin = Client(dashd, dashd.admin_key)
    reply = await admin.post("/api/v2/alarm-rules", {"name": "x", "severity": "major",
                                                     "condition": {"kind": "threshold"}})
    assert reply.status == 400 and "key" in reply.body["error"]["message"], reply
    reply = await admin.post("/api/v2/alarm-rules", {"name": "x", "severity": "major",
                                                     "where": "name ==",
                                                     "condition": {"kind": "ota_failed"}})
    assert reply.status == 400, reply
    reply = await admin.post("/api/v2/alarm-rules", {"nme": "x"})
    assert reply.status == 400, reply
    assert (await admin.get("/api/v2/alarms?state=open")).status == 400
    assert (await admin.get("/api/v2/alarms?limit=0")).status == 400
    assert (await admin.get("/api/v2/alarms?acknowledged=maybe")).status == 400
    assert (await admin.get("/api/v2/alarms/al-missing")).status == 404
    assert (await admin.post("/api/v2/alarms/al-missing/acknowledge", {})).status == 404
    assert (await admin.get("/api/v2/alarm-rules/ar-missing")).status == 404
    reply = await admin.post("/api/v2/webhooks", {"url": "http://10.1.2.3/hook"})
    assert reply.status == 400 and "private" in reply.body["error"]["message"], reply
    reply = await admin.post("/api/v2/webhooks", {"url": "ftp://example.com/"})
    assert reply.status == 400, reply
    reply = await admin.post("/api/v2/webhooks", {"url": "https://example.com/",
                                                  "events": ["everything"]})
    assert reply.status == 400, reply
    key = await admin.post("/api/v2/keys", {"name": "ro", "kind": "read-only"})
    assert key.status == 200, key
    ro = Client(dashd, key.body["key"])
    reply = await ro.post("/api/v2/alarm-rules", {"name": "x", "severity": "major",
                                                  "condition": {"kind": "ota_failed"}})
    assert reply.status == 403, reply
    assert (await ro.get("/api/v2/alarms")).status == 200


@pytest_twisted.ensureDeferred
async def test_dashctl_lists_acknowledges_and_clears(dashd):
    from test_ctl import dashctl, ok

    admin = Client(dashd, dashd.admin_key)
    device_id, token = await admin.register("ctl")
    rule = (await admin.post("/api/v2/alarm-rules", {
        "name": "ctl hot", "where": 'id = "%s"' % device_id, "severity": "warning",
        "condition": {"kind": "threshold", "key": "t", "above": 1}})).body
    device = await connect_device(dashd, token)
    try:
        await device.report({"t": 5})

        async def raised() -> Any:
            found = (await admin.get("/api/v2/alarms?state=active&device=" + device_id)).body
            return found[0] if found else None

        alarm = await eventually(raised)
        listed = json.loads(ok(dashctl(dashd, "--json", "alarms", "list", "--state", "active",
                                       "--device", device_id)))
        assert [a["id"] for a in listed] == [alarm["id"]]
        text = ok(dashctl(dashd, "alarms", "list", "--device", device_id))
        assert alarm["id"] in text and "warning" in text
        out = ok(dashctl(dashd, "alarms", "acknowledge", alarm["id"], "--note", "seen"))
        assert "acknowledged alarm %s" % alarm["id"] in out
        ok(dashctl(dashd, "alarms", "clear", alarm["id"]))
        got = (await admin.get("/api/v2/alarms/" + alarm["id"])).body
        assert got["state"] == "cleared" and got["note"] == "seen"
        assert got["cleared_by"] == "console"
        bad = dashctl(dashd, "alarms", "list", "--severity", "loud")
        assert bad.returncode == 1 and "--severity must be one of" in bad.stderr
    finally:
        await device.stop()
        await admin.delete("/api/v2/alarm-rules/" + rule["id"])


@pytest_twisted.ensureDeferred
async def test_tls_is_verified(dashd, receiver, tmp_path):
    """An https receiver whose certificate no trusted authority signed gets
    nothing: the delivery fails (and is retried), it is not sent anyway."""
    from twisted.internet import ssl

    from certs import make_server_cert

    recv, _ = receiver
    cert = make_server_cert(str(tmp_path), ["127.0.0.1"])
    with open(cert.cert, "rb") as f:
        chain = f.read()
    with open(cert.key, "rb") as f:
        key = f.read()
    options = ssl.PrivateCertificate.loadPEM(chain + b"\n" + key).options()
    tls_port = reactor.listenSSL(0, web_server.Site(recv), options, interface="127.0.0.1")
    try:
        admin = Client(dashd, dashd.admin_key)
        path = "/%d/tls" % dashd.port
        hook = (await admin.post("/api/v2/webhooks", {
            "url": "https://127.0.0.1:%d%s" % (tls_port.getHost().port, path)})).body
        assert (await admin.post("/api/v2/webhooks/%s/test" % hook["id"])).status == 202

        async def failed() -> Any:
            view = (await admin.get("/api/v2/webhooks/" + hook["id"])).body
            return view["deliveries"]["last"]

        last = await eventually(failed)
        assert last[0]["status"] is None and "certificate" in last[0]["error"].lower(), last
        assert recv.got(path) == []
        await admin.delete("/api/v2/webhooks/" + hook["id"])
    finally:
        await tls_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_name_that_resolves_to_a_private_address_is_refused():
    """Checked where dashd connects (a name may resolve to anything)."""
    from twisted.web.client import URI

    from dashd.app.webhooks import GuardedEndpoints, Refused

    endpoints = GuardedEndpoints(reactor, [], 1.0)
    endpoint = endpoints.endpointForURI(URI.fromBytes(b"http://localhost:9/"))
    try:
        await endpoint.connect(None)
    except Refused as e:
        assert "localhost resolves to" in str(e) and "127.0.0.1" in str(e)
    else:
        raise AssertionError("connected to localhost")
    allowed = GuardedEndpoints(reactor, ["127.0.0.0/8", "::1/128"], 1.0)
    from twisted.internet.error import ConnectionRefusedError
    from twisted.internet.protocol import Factory, Protocol

    try:
        await allowed.endpointForURI(URI.fromBytes(b"http://localhost:9/")).connect(
            Factory.forProtocol(Protocol))
    except ConnectionRefusedError:
        pass  # allowed: it went as far as connecting (nothing listens on port 9)


@pytest_twisted.ensureDeferred
async def test_a_restart_neither_re_raises_nor_loses(own_server):
    own_server.start()
    admin = Client(own_server, own_server.admin_key)
    device_id, token = await admin.register("restart")
    assert (await admin.post("/api/v2/alarm-rules", {
        "name": "hot", "severity": "major",
        "condition": {"kind": "threshold", "key": "t", "above": 30, "clear": 25}})).status == 201
    device = await connect_device(own_server, token, reconnect_delay=(0.2, 0.5))
    await device.report({"t": 35})
    alarm = await eventually(lambda: _active(admin, device_id))
    own_server.stop()
    await within(device.wait_closed(), 10)
    own_server.start()
    await within(device.wait_open(), 15)
    sub = await subscribe(own_server, own_server.admin_key)
    try:
        await device.report({"t": 36})  # still high: the alarm it had stands
        await device.report({"t": 20})
        cleared = await sub.next(lambda e: e["name"] == "alarm.cleared")
        assert cleared["data"]["id"] == alarm["id"]
        sub.never(lambda e: e["name"] == "alarm.raised", "a raise after the restart")
        # Gone while dashd was down: found when it is back.
        assert (await admin.post("/api/v2/alarm-rules", {
            "name": "gone", "severity": "minor",
            "condition": {"kind": "offline", "seconds": 2}})).status == 201
        await device.stop()
        own_server.stop()
        own_server.start()
        sub.close()
        sub = await subscribe(own_server, own_server.admin_key)
        # (Raised at the start, maybe before the subscriber is there.)
        raised = await eventually(lambda: _active(admin, device_id), seconds=15)
        assert "offline" in raised["message"]
        every = (await admin.get("/api/v2/alarms?device=" + device_id)).body
        assert [(a["rule"], a["state"]) for a in every] == [("gone", "active"),
                                                              ("hot", "cleared")]
    finally:
        sub.close()
        await device.stop()


async def _active(admin: Client, device_id: str) -> Any:
    found = (await admin.get("/api/v2/alarms?state=active&device=" + device_id)).body
    return found[0] if found else None


@pytest_twisted.ensureDeferred
async def test_a_body_that_never_ends_is_cut_at_the_timeout(dashd, receiver):
    recv, port = receiver
    admin = Client(dashd, dashd.admin_key)
    path = "/%d/drip" % dashd.port
    recv.drip.add(path)
    hook = await _hook(admin, port, path)
    assert (await admin.post("/api/v2/webhooks/%s/test" % hook["id"])).status == 202
    await eventually(lambda: path in recv.dropped, seconds=10)

    async def timed_out() -> Any:
        view = (await admin.get("/api/v2/webhooks/" + hook["id"])).body
        return [d for d in view["deliveries"]["last"] if d["error"] == "no answer within 1 s"]

    await eventually(timed_out)
    await admin.delete("/api/v2/webhooks/" + hook["id"])


@pytest_twisted.ensureDeferred
async def test_job_state_and_progress_are_webhook_events(dashd, receiver):
    recv, port = receiver
    admin = Client(dashd, dashd.admin_key)
    path = "/%d/jobs" % dashd.port
    hook = await _hook(admin, port, path, events=["job.state", "job.progress"])
    # Another endpoint of the account that did not choose them hears nothing.
    other = await _hook(admin, port, path + "-not", events=["alarm.raised"])
    device_id, _ = await admin.register("job webhook")
    reply = await admin.post("/api/v2/jobs", {
        "name": "interval 30", "target": {"devices": [device_id]},
        "action": {"type": "shadow", "desired": {"interval": 30}}})
    assert reply.status == 201, reply
    job_id = reply.body["id"]

    def states() -> list[str]:
        return [d["json"]["data"]["data"]["state"] for d in recv.got(path)
                if d["json"]["kind"] == "job.state" and d["json"]["data"]["job_id"] == job_id]

    def progress() -> list[dict[str, Any]]:
        return [d["json"]["data"]["data"] for d in recv.got(path)
                if d["json"]["kind"] == "job.progress" and d["json"]["data"]["job_id"] == job_id]

    # (The last progress may come after the state it ends in.)
    await eventually(lambda: "completed" in states() and any(
        p["progress"]["succeeded"] == 1 for p in progress()), seconds=20)
    mine = [d for d in recv.got(path) if d["json"]["data"]["job_id"] == job_id]
    for d in mine:
        verify(hook["secret"], d)
        assert d["headers"]["x-dashd-event"] == d["json"]["kind"]
    assert all(p["id"] == job_id for p in progress())
    assert recv.got(path + "-not") == []
    # Only the kinds a webhook may choose.
    bad = await admin.post("/api/v2/webhooks/" + hook["id"], {"events": ["job.nothing"]})
    assert bad.status == 400, bad
    await admin.delete("/api/v2/webhooks/" + hook["id"])
    await admin.delete("/api/v2/webhooks/" + other["id"])
