"""
Time-range queries of stored data over REST (GET .../data?from=&to=&bucket=),
end to end: devices report over real WebSockets, the data is read back as
raw points and in buckets, over several devices and keys, by each kind of
key (a restricted key reads what its scope lets it read), and bad queries
get a 400 that says what is wrong.
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import pytest_twisted

from support import SECRETS, Client, connect_device, device_online, within

from test_data import _save


async def _restricted(admin: Client, server, scope) -> Client:
    reply = await admin.post("/api/v2/keys", {"kind": "restricted", "scope": scope})
    assert reply.status == 200, reply
    SECRETS.add(reply.body["key"])
    return Client(server, reply.body["key"])


@pytest_twisted.ensureDeferred
async def test_ranges_raw_and_in_buckets_over_devices_and_keys(server, admin: Client):
    a_id, a_token = await admin.register("a")
    b_id, b_token = await admin.register("b")
    await _save(admin, a_id, ["temp", "env.hum", "mode"])
    await _save(admin, b_id, ["temp"])
    a = await connect_device(server, a_token)
    b = await connect_device(server, b_token)
    started = time.time()
    try:
        await device_online(admin, a_id)
        await device_online(admin, b_id)
        for i in range(6):
            await within(a.call("Dash.Shadow.Update", {"state": {"reported": {
                "temp": 20 + i, "env": {"hum": 50 - i}, "mode": "auto"}}}))
            await within(b.call("Dash.Shadow.Update", {"state": {"reported": {"temp": -i}}}))
        ended = time.time() + 1

        # Raw points of one device's key, in time order.
        reply = await admin.get("/api/v2/devices/%s/data?from=%f&to=%f&key=temp"
                                % (a_id, started - 1, ended))
        assert reply.status == 200, reply
        assert reply.body["bucket"] is None and reply.body["next"] is None
        [series] = reply.body["series"]
        assert (series["device_id"], series["key"]) == (a_id, "temp")
        assert series["value"] == [20 + i for i in range(6)]
        assert series["t"] == sorted(series["t"]) and started - 1 <= series["t"][0] < ended

        # Both devices, one key, in one bucket: count, min, max, avg.
        bucket = 3600 * 24 * 365 * 100  # one bucket holds it all
        for base in ("/api/v2/data", "/api/v2/devices/data"):
            reply = await admin.get("%s?from=%f&to=%f&bucket=%d&key=temp&device=%s,%s"
                                    % (base, started - 1, ended, bucket, a_id, b_id))
            assert reply.status == 200, reply
            got = {s["device_id"]: (s["count"], s["min"], s["max"], s["avg"])
                   for s in reply.body["series"]}
            assert got == {a_id: ([6], [20], [25], [22.5]), b_id: ([6], [-5], [0], [-2.5])}
        # A dotted path covers its sub-keys; a value that is not a number is counted only.
        reply = await admin.get("/api/v2/devices/%s/data?from=-3600&bucket=60&key=env&key=mode"
                                % a_id)
        assert reply.status == 200, reply
        by_key = {s["key"]: s for s in reply.body["series"]}
        assert set(by_key) == {"env.hum", "mode"}
        assert sum(by_key["mode"]["count"]) == 6 and set(by_key["mode"]["avg"]) == {None}
        assert min(by_key["env.hum"]["min"]) == 45 and max(by_key["env.hum"]["max"]) == 50
        assert all(t % 60 == 0 for t in by_key["env.hum"]["t"])
        # ISO 8601 times, and a limit: the first points, and where to go on.
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started - 1))
        reply = await admin.get("/api/v2/devices/%s/data?from=%s&limit=4" % (a_id, quote(iso)))
        assert reply.status == 200, reply
        assert sum(len(s["t"]) for s in reply.body["series"]) <= 4
        assert reply.body["next"] is not None
        # Without device=, every device the key sees (a fleet this size).
        reply = await admin.get("/api/v2/data?from=-3600&bucket=3600&key=temp")
        assert {a_id, b_id} <= {s["device_id"] for s in reply.body["series"]}
        # Counted in the metrics.
        metrics = (await admin.get("/metrics")).raw
        for kind in (b"buckets", b"raw"):
            m = re.search(rb'dashd_data_range_queries_total\{kind="%s"\} ([0-9.e+]+)' % kind,
                          metrics)
            assert m and float(m.group(1)) >= 2, metrics
        assert b"dashd_data_range_query_seconds_total" in metrics
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_restricted_key_charts_what_it_may_read(server, admin: Client):
    a_id, a_token = await admin.register("a")
    other_id, _ = await admin.register("other")
    await _save(admin, a_id, ["temp", "secret"])
    customer = await _restricted(admin, server, {"devices": {a_id: {"read": ["temp"]}}})
    a = await connect_device(server, a_token)
    try:
        await device_online(admin, a_id)
        for i in range(3):
            await within(a.call("Dash.Shadow.Update", {"state": {"reported": {
                "temp": i, "secret": 100 + i}}}))
        reply = await customer.get("/api/v2/devices/%s/data?from=-3600&bucket=60" % a_id)
        assert reply.status == 200, reply
        assert {s["key"] for s in reply.body["series"]} == {"temp"}
        reply = await customer.get("/api/v2/data?from=-3600")
        assert reply.status == 200, reply
        assert [(s["device_id"], s["key"], s["value"]) for s in reply.body["series"]] == [
            (a_id, "temp", [0, 1, 2])]
        reply = await customer.get("/api/v2/devices/%s/data?from=-3600&key=secret" % a_id)
        assert reply.status == 403
        assert reply.error["message"] == "this key may not read secret of device %s" % a_id
        reply = await customer.get("/api/v2/data?from=-3600&device=%s" % other_id)
        assert (reply.status, reply.error["message"]) == (404, "no such device: %s" % other_id)
        # Reading by position stays for the other kinds of key.
        reply = await customer.get("/api/v2/devices/%s/data" % a_id)
        assert reply.status == 403
    finally:
        await a.stop()


@pytest_twisted.ensureDeferred
async def test_bad_range_queries_get_400(server, admin: Client):
    device_id, _ = await admin.register()
    path = "/api/v2/devices/%s/data" % device_id
    cases = [
        ("?to=5", "from is required with to and bucket"),
        ("?from=yesterday", "from must be seconds since the epoch (negative: before now) or an"
                            " ISO 8601 time"),
        ("?from=100&to=50", "from must be before to (from 100, to 50)"),
        ("?from=-100&bucket=0", "bucket must be a whole number of seconds, at least 1"),
        ("?from=-100&bucket=2.5", "bucket must be an integer"),
        ("?from=-864000&bucket=60", "a range of 864000 s in buckets of 60 s makes more than"
                                    " 10000 buckets: choose wider buckets (at least 87 s)"),
        ("?from=-100&limit=0", "limit must be between 1 and 5000"),
        ("?from=-100&key=a..b", "key: 'a..b' is not a dotted path"),
        ("?from=-100&skip=5", "unknown query argument(s) with from: skip"),
        ("?from=-100&filter=x", "unknown query argument(s) with from: filter"),
        ("?from=1e300", "from must be seconds since the epoch"),
        ("?from=-100&device=" + device_id, "unknown query argument(s) with from: device"),
    ]
    for query, message in cases:
        reply = await admin.get(path + query)
        assert reply.status == 400, (query, reply)
        assert message in reply.error["message"], (query, reply.error)
    reply = await admin.get("/api/v2/data?from=-100&device=" + ",".join(["x"] * 51))
    assert reply.status == 400 and "device: name 1 to 50 devices" in reply.error["message"]
    reply = await admin.get("/api/v2/data?from=-100&device=dnosuch")
    assert (reply.status, reply.error["message"]) == (404, "no such device: dnosuch")
