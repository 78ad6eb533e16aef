"""
Fleet jobs, end to end: a real dashd (SQLite and PostgreSQL), simulated
devices over real WebSockets: RPC and shadow jobs on queries and ID lists,
devices offline when the job starts, the queued timeout, cancel and pause,
abort rules, retries of the failed, permissions, restarts.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from support import (
    SECRETS,
    Client,
    DashdProcess,
    connect_device,
    device_online,
    eventually,
    subscribe,
)


async def _key(admin: Client, **body: Any) -> Client:
    reply = await admin.post("/api/v2/keys", body)
    assert reply.status == 200, reply
    SECRETS.add(reply.body["key"])
    return Client(admin.server, reply.body["key"])


async def tagged(admin: Client, run: str, n: int, site: str = "berlin") -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        device_id, token = await admin.register("job-%s-%d" % (run, i))
        reply = await admin.post("/api/v2/devices/" + device_id,
                                 {"shadow": {"tags": {"run": run, "site": site}}})
        assert reply.status == 200, reply
        out.append((device_id, token))
    return out


async def job_state(admin: Client, job_id: str, state: str, seconds: float = 20) -> dict:
    async def check():
        reply = await admin.get("/api/v2/jobs/" + job_id)
        assert reply.status == 200, reply
        return reply.body if reply.body["state"] == state else None

    return await eventually(check, seconds)


async def executions(admin: Client, job_id: str, state: str | None = None) -> dict[str, dict]:
    path = "/api/v2/jobs/%s/executions" % job_id + ("?state=" + state if state else "")
    reply = await admin.get(path)
    assert reply.status == 200, reply
    return {e["device_id"]: e for e in reply.body}


async def create(admin: Client, body: dict) -> dict:
    reply = await admin.post("/api/v2/jobs", body)
    assert reply.status == 201, reply
    assert reply.headers.getRawHeaders("location") == ["/api/v2/jobs/" + reply.body["id"]]
    return reply.body


@pytest_twisted.ensureDeferred
async def test_an_rpc_job_on_a_query_reaches_online_and_returning_devices(
        server: DashdProcess, admin: Client):
    fleet = await tagged(admin, "rpc1", 3)
    other = await tagged(admin, "rpc1", 1, site="paris")
    sims = []
    sub = await subscribe(server, admin.key)
    try:
        for device_id, token in fleet[:2] + other:
            sims.append(await connect_device(server, token))
            await device_online(admin, device_id)
        job = await create(admin, {
            "name": "echo berlin",
            "target": {"where": 'shadow.tags.run = "rpc1" and shadow.tags.site = "berlin"'},
            "action": {"type": "rpc", "method": "Sim.Echo", "params": {"hello": 1}},
            "timeouts": {"queued": 60, "running": 5}})
        assert job["state"] == "running" and job["progress"]["total"] == 3
        assert job["progress"]["queued"] == 3
        assert job["action"] == {"type": "rpc", "method": "Sim.Echo", "params": {"hello": 1}}
        mine = lambda name: lambda e: e["name"] == name and e["id"] == job["id"]  # noqa: E731

        async def two_done():
            found = await executions(admin, job["id"], "succeeded")
            return found if len(found) == 2 else None

        done = await eventually(two_done, 15)
        assert set(done) == {fleet[0][0], fleet[1][0]}
        for e in done.values():
            assert e["result"] == {"hello": 1} and e["attempts"] == 1
            assert {"queued", "dispatched", "in_progress", "succeeded"} <= set(e["times"])
        # The third is offline: its call waits for it.
        waiting = await executions(admin, job["id"], "queued")
        assert list(waiting) == [fleet[2][0]]
        assert (await admin.get("/api/v2/jobs/" + job["id"])).body["state"] == "running"
        sims.append(await connect_device(server, fleet[2][1]))
        finished = await job_state(admin, job["id"], "completed")
        assert finished["progress"] == dict(
            total=3, succeeded=3, queued=0, in_progress=0, failed=0, timed_out=0,
            cancelled=0, skipped=0)
        assert finished["finished"] is not None
        # Each berlin device got the call once; paris none.
        for sim in sims[:2] + sims[3:]:
            assert sim.methods.count("Sim.Echo") == 1
        assert "Sim.Echo" not in sims[2].methods
        state = await sub.next(lambda e: mine("job.state")(e)
                               and e["data"]["state"] == "completed")
        assert state["data"]["progress"]["succeeded"] == 3
        progress = sub.matching(mine("job.progress"))
        assert progress and progress[-1]["data"]["progress"]["succeeded"] == 3
        succeeded = [p["data"]["progress"]["succeeded"] for p in progress]
        assert succeeded == sorted(succeeded)
        listed = (await admin.get("/api/v2/jobs")).body
        assert job["id"] in [j["id"] for j in listed]
        # The audit log has the creation and the end.
        async def audited():
            entries = (await admin.get("/api/v2/audit?limit=200")).body["entries"]
            paths = [a["path"] for a in entries]
            return "/api/v2/jobs" in paths and \
                "/api/v2/jobs/%s (completed)" % job["id"] in paths

        await eventually(audited, 10)
        metrics = (await admin.get("/metrics")).raw.decode()
        assert 'dashd_job_executions_ended_total{state="succeeded"}' in metrics
        # A finished job may be deleted.
        deleted = await admin.delete("/api/v2/jobs/" + job["id"])
        assert deleted.status == 200
        assert (await admin.get("/api/v2/jobs/" + job["id"])).status == 404
    finally:
        sub.close()
        for sim in sims:
            await sim.stop()


BAD_JOBS = [
    ({}, "name is required"),
    ({"name": "x"}, 'target is required: {"where": QUERY} or {"devices": [ID, ...]}'),
    ({"name": "x", "target": {"where": "shadow.tags.a = 1", "devices": ["d1"]},
      "action": {"type": "rpc", "method": "M"}},
     "target must have either where (a device query) or devices (a list of device IDs)"),
    ({"name": "x", "target": {"devices": []}, "action": {"type": "rpc", "method": "M"}},
     "target.devices must be a non-empty list of device IDs"),
    ({"name": "x", "target": {"devices": ["d1"], "continuous": True},
      "action": {"type": "rpc", "method": "M"}},
     "target.continuous needs a query (where): a list of IDs never grows"),
    ({"name": "x", "target": {"where": "shadow.tags.a ="}, "action": {"type": "rpc",
                                                                      "method": "M"}},
     None),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "reboot"}},
     "action.type must be one of rpc, shadow"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc"}},
     "action.method must be a method name of 1 to 256 characters"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "shadow"}},
     "a shadow action changes desired, tags or both"),
    ({"name": "x", "target": {"devices": ["d1"]},
      "action": {"type": "shadow", "desired": "sixty"}}, None),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "concurrency": 0}, "concurrency must be from 1 to 10000"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "rate": {"per_minute": 10, "max_per_minute": 20}},
     "rate is either {per_minute} or exponential {base_per_minute, increment_factor, "
     "after_succeeded, max_per_minute}"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "rate": {"base_per_minute": 10}},
     "an exponential rate needs increment_factor, after_succeeded, max_per_minute"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "timeouts": {"running": 1000}}, "timeouts.running must be from 0.1 to 30"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "retries": 1.5}, "retries must be a whole number"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "abort": [{"on": "lost", "percent": 10}]},
     "abort[0].on must be one of failed, timed_out, any"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "abort": [{"percent": 150}]}, "abort[0].percent must be from 0 to 100"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "end_at": 1000}, "end_at must be after now and after start_at"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "colour": "red"}, "unknown field(s) in the job: colour (allowed: abort, action, "
                        "concurrency, end_at, name, rate, retries, start_at, target, timeouts)"),
]


@pytest_twisted.ensureDeferred
async def test_a_bad_job_is_refused_before_anything_is_stored_or_sent(
        server: DashdProcess, admin: Client):
    device_id, token = await admin.register("job-bad")
    sim = await connect_device(server, token)
    try:
        await device_online(admin, device_id)
        before = [j["id"] for j in (await admin.get("/api/v2/jobs?limit=500")).body]
        for body, message in BAD_JOBS:
            reply = await admin.post("/api/v2/jobs", body)
            assert reply.status == 400, (body, reply)
            if message is not None:
                assert reply.body["error"]["message"] == message, body
        reply = await admin.post("/api/v2/jobs", {
            "name": "x", "target": {"where": "shadow.tags.a ="},
            "action": {"type": "rpc", "method": "M"}})
        assert "target" in reply.body["error"]["message"] or "position" in \
            reply.body["error"]["message"] or "column" in reply.body["error"]["message"], reply
        reply = await admin.request("POST", "/api/v2/jobs", raw=b"[1]",
                                    headers={"Content-Type": "application/json"})
        assert (reply.status, reply.body["error"]["message"]) == (
            400, "the job must be an object")
        reader = await _key(admin, kind="read-only", name="job reader")
        reply = await reader.post("/api/v2/jobs", {
            "name": "x", "target": {"devices": [device_id]},
            "action": {"type": "rpc", "method": "Sim.Echo"}})
        assert (reply.status, reply.body["error"]["message"]) == (
            403, "this key is read-only: it may not create jobs")
        assert [j["id"] for j in (await admin.get("/api/v2/jobs?limit=500")).body] == before
        assert "Sim.Echo" not in sim.methods and "M" not in sim.methods
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_shadow_job_skips_what_the_key_may_not_touch(server: DashdProcess,
                                                             admin: Client):
    fleet = await tagged(admin, "shadow1", 3)
    ids = [d for d, _ in fleet]
    # A restricted key that may write desired.interval of the first two only.
    scope = {"devices": {ids[0]: {"read": ["*"], "write": ["interval"]},
                         ids[1]: {"read": ["*"], "write": ["interval"]},
                         ids[2]: {"read": ["*"], "write": ["led"]}}}
    customer = await _key(admin, kind="restricted", name="job customer", scope=scope)
    job = await create(customer, {
        "name": "interval 60", "target": {"devices": ids + ["dnosuchdevice"]},
        "action": {"type": "shadow", "desired": {"interval": 60}}})
    assert job["progress"]["skipped"] == 2 and job["progress"]["queued"] == 2
    done = await job_state(customer, job["id"], "completed")
    assert done["progress"]["succeeded"] == 2
    found = await executions(customer, job["id"])
    assert found[ids[2]]["state"] == "skipped"
    assert found[ids[2]]["reason"] == \
        "forbidden: this key may not change desired.interval of device %s" % ids[2]
    assert found["dnosuchdevice"]["reason"] == \
        "not found: no such device, or one this key may not see"
    for device_id in ids[:2]:
        shadow = (await admin.device(device_id))["shadow"]
        assert shadow["state"]["desired"]["interval"] == 60
        assert found[device_id]["result"]["shadow_version"] >= 2
    assert "interval" not in (await admin.device(ids[2]))["shadow"]["state"]["desired"]
    # Another key of the account sees the job; another account does not.
    created = await admin.post("/api/v2/accounts", {"name": "jobs other"})
    SECRETS.add(created.body["admin_key"]["key"])
    other = Client(server, created.body["admin_key"]["key"])
    reply = await other.get("/api/v2/jobs/" + job["id"])
    assert (reply.status, reply.body["error"]["message"]) == (404, "no such job: " + job["id"])
    assert (await admin.get("/api/v2/jobs/" + job["id"])).status == 200
