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


async def some_in(admin: Client, job_id: str, state: str, seconds: float = 10) -> dict[str, dict]:
    """Once some of the job's executions are in C{state}: those."""
    async def found():
        return await executions(admin, job_id, state) or None

    return await eventually(found, seconds)


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
        sub.cursor = 0
        await sub.next(lambda e: mine("job.progress")(e)
                       and e["data"]["progress"]["succeeded"] == 3)
        progress = sub.matching(mine("job.progress"))
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
     "action.type must be one of rpc, shadow, firmware"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "firmware"}},
     "action.firmware must be the ID of an image of the library (POST /firmware)"),
    ({"name": "x", "target": {"devices": ["d1"]},
      "action": {"type": "firmware", "firmware": "f1", "mode": "sideways"}},
     "action.mode must be push or pull"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "phases": []}, "phases must be a list of 1 to 10 phases"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "phases": [{"percent": 10, "count": 5}]},
     "phases[0] must have either percent or count (of all the devices, counted from the "
     "first phase)"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "phases": [{"percent": 50}, {"percent": 10}]},
     "phases[1].percent must be more than the phase before's"),
    ({"name": "x", "target": {"devices": ["d1"]}, "action": {"type": "rpc", "method": "M"},
      "phases": [{"percent": 50, "error_threshold": 120}]},
     "phases[0].error_threshold must be from 0 to 100"),
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
                        "concurrency, end_at, name, phases, rate, retries, start_at, target, "
                        "timeouts)"),
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


async def online_fleet(server: DashdProcess, admin: Client, run: str, n: int,
                       **options: Any) -> tuple[list[str], list[Any]]:
    fleet = await tagged(admin, run, n)
    sims = []
    for device_id, token in fleet:
        sims.append(await connect_device(server, token, **options))
        await device_online(admin, device_id)
    return [d for d, _ in fleet], sims


@pytest_twisted.ensureDeferred
async def test_cancel_stops_what_was_not_sent_and_records_what_was(server: DashdProcess,
                                                                   admin: Client):
    ids, sims = await online_fleet(server, admin, "cancel1", 3)
    try:
        job = await create(admin, {
            "name": "slow", "target": {"devices": ids}, "concurrency": 1,
            "action": {"type": "rpc", "method": "Sim.Sleep", "params": {"seconds": 1.5}}})

        running = await some_in(admin, job["id"], "in_progress")
        assert list(running) == [ids[0]]
        reply = await admin.post("/api/v2/jobs/%s/cancel" % job["id"])
        assert reply.status == 200, reply
        assert reply.body["state"] == "cancelled"
        assert reply.body["reason"]["message"].startswith("cancelled by key ")
        progress = reply.body["progress"]
        assert (progress["cancelled"], progress["in_progress"]) == (2, 1)
        # The one sent goes on, and its end is recorded.
        async def recorded():
            found = await executions(admin, job["id"])
            return found if found[ids[0]]["state"] == "succeeded" else None

        found = await eventually(recorded, 10)
        assert found[ids[0]]["result"] == {"slept": 1.5}
        assert [found[d]["state"] for d in ids[1:]] == ["cancelled", "cancelled"]
        assert (await admin.get("/api/v2/jobs/" + job["id"])).body["state"] == "cancelled"
        assert [s.methods.count("Sim.Sleep") for s in sims] == [1, 0, 0]
        again = await admin.post("/api/v2/jobs/%s/cancel" % job["id"])
        assert (again.status, again.body["error"]["message"]) == (
            409, "job %s has ended (cancelled): there is nothing to cancel" % job["id"])
        retry = await admin.post("/api/v2/jobs/%s/retry" % job["id"])
        assert (retry.status, retry.body["error"]["message"]) == (
            409, "job %s was cancelled: create a new job to try again" % job["id"])
    finally:
        for sim in sims:
            await sim.stop()


@pytest_twisted.ensureDeferred
async def test_an_abort_rule_halts_the_job_and_retry_reruns_the_failed(
        server: DashdProcess, admin: Client):
    ids, sims = await online_fleet(server, admin, "abort1", 4)
    sub = await subscribe(server, admin.key)
    try:
        job = await create(admin, {
            "name": "failing", "target": {"devices": ids}, "concurrency": 1,
            "action": {"type": "rpc", "method": "Sim.Fail", "params": {"code": 7}},
            "abort": [{"on": "failed", "percent": 50, "min_finished": 2}]})
        aborted = await job_state(admin, job["id"], "aborted")
        assert aborted["reason"]["message"] == (
            "2 of 2 finished executions failed (100.0%, the rule's threshold is 50% once 2 "
            "have finished)")
        assert aborted["reason"]["rule"] == {"on": "failed", "percent": 50, "min_finished": 2}
        assert (aborted["progress"]["failed"], aborted["progress"]["cancelled"]) == (2, 2)
        found = await executions(admin, job["id"], "failed")
        assert found[ids[0]]["error"] == {"code": 7, "message": "simulated failure"}
        assert [s.methods.count("Sim.Fail") for s in sims] == [1, 1, 0, 0]
        event = await sub.next(lambda e: e["name"] == "job.state" and e["id"] == job["id"]
                               and e["data"]["state"] == "aborted")
        assert event["data"]["reason"]["matching"] == 2

        retried = await admin.post("/api/v2/jobs/%s/retry" % job["id"])
        assert retried.status == 200, retried
        assert retried.body["retried"] == 2 and retried.body["state"] == "running"
        again = await job_state(admin, job["id"], "aborted")
        assert again["progress"]["failed"] == 2
        found = await executions(admin, job["id"], "failed")
        assert found[ids[0]]["attempts"] == 2
        assert [s.methods.count("Sim.Fail") for s in sims] == [2, 2, 0, 0]
    finally:
        sub.close()
        for sim in sims:
            await sim.stop()


@pytest_twisted.ensureDeferred
async def test_devices_offline_at_the_start_before_and_after_the_queued_timeout(
        server: DashdProcess, admin: Client):
    fleet = await tagged(admin, "offline1", 2)
    ids = [d for d, _ in fleet]
    sims = []
    try:
        job = await create(admin, {
            "name": "late ones", "target": {"devices": ids},
            "action": {"type": "rpc", "method": "Sim.Echo", "params": [1]},
            "timeouts": {"queued": 3}})
        # The first comes back in time.
        sims.append(await connect_device(server, fleet[0][1]))

        async def first_done():
            found = await executions(admin, job["id"])
            return found if found[ids[0]]["state"] == "succeeded" else None

        await eventually(first_done, 10)
        # The second only after its queued timeout: it never gets the call.
        done = await job_state(admin, job["id"], "completed", 15)
        assert (done["progress"]["succeeded"], done["progress"]["timed_out"]) == (1, 1)
        found = await executions(admin, job["id"])
        assert found[ids[1]]["error"] == {
            "code": 504,
            "message": "the device was not online to take it within the queued timeout"}
        assert "in_progress" not in found[ids[1]]["times"]
        sims.append(await connect_device(server, fleet[1][1]))
        await device_online(admin, ids[1])
        reply = await admin.post("/api/v2/devices/%s/rpc/Sim.Echo" % ids[1], {"after": 1})
        assert reply.status == 200
        assert sims[1].methods.count("Sim.Echo") == 1  # the check call only
    finally:
        for sim in sims:
            await sim.stop()


@pytest_twisted.ensureDeferred
async def test_pause_and_resume_and_a_rate_limit(server: DashdProcess, admin: Client):
    ids, sims = await online_fleet(server, admin, "rate1", 4)
    try:
        job = await create(admin, {
            "name": "slowly", "target": {"devices": ids}, "rate": {"per_minute": 60},
            "action": {"type": "rpc", "method": "Sim.Echo"}})

        await some_in(admin, job["id"], "succeeded")
        paused = await admin.post("/api/v2/jobs/%s/pause" % job["id"])
        assert paused.status == 200 and paused.body["state"] == "paused"
        sent = sum(s.methods.count("Sim.Echo") for s in sims)
        # One a second: never all four at once.
        assert 1 <= sent <= 3
        again = await admin.post("/api/v2/jobs/%s/pause" % job["id"])
        assert (again.status, again.body["error"]["message"]) == (
            409, "job %s is paused: only a running or scheduled job may be paused" % job["id"])
        resumed = await admin.post("/api/v2/jobs/%s/resume" % job["id"])
        assert resumed.status == 200 and resumed.body["state"] == "running"
        done = await job_state(admin, job["id"], "completed", 20)
        assert done["progress"]["succeeded"] == 4
        assert [s.methods.count("Sim.Echo") for s in sims] == [1, 1, 1, 1]
        times = sorted(e["times"]["dispatched"]
                       for e in (await executions(admin, job["id"])).values())
        assert times[-1] - times[0] >= 2.0
    finally:
        for sim in sims:
            await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_continuous_job_takes_devices_that_match_later(server: DashdProcess,
                                                               admin: Client):
    ids, sims = await online_fleet(server, admin, "cont1", 1)
    try:
        job = await create(admin, {
            "name": "joiners", "target": {"where": 'shadow.tags.run = "cont1"',
                                          "continuous": True},
            "action": {"type": "shadow", "tags": {"seen": True}}})
        assert job["target"]["continuous"] is True
        # Joins as its change is heard of: not at a poll of the whole query
        # (which came every 10 s).
        late = await tagged(admin, "cont1", 1)
        other = await tagged(admin, "cont1-not", 1)

        async def both():
            found = await executions(admin, job["id"], "succeeded")
            return found if len(found) == 2 else None

        found = await eventually(both, 6)
        assert other[0][0] not in await executions(admin, job["id"])
        assert set(found) == {ids[0], late[0][0]}
        assert (await admin.device(late[0][0]))["shadow"]["tags"]["seen"] is True
        # It runs until cancelled.
        assert (await admin.get("/api/v2/jobs/" + job["id"])).body["state"] == "running"
        assert (await admin.post("/api/v2/jobs/%s/cancel" % job["id"])).status == 200
    finally:
        for sim in sims:
            await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_restart_mid_job_sends_nothing_twice(own_server: DashdProcess):
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    ids, sims = await online_fleet(own_server, admin, "restart1", 5)
    try:
        job = await create(admin, {
            "name": "across restarts", "target": {"devices": ids},
            "rate": {"per_minute": 60}, "concurrency": 2,
            "action": {"type": "rpc", "method": "Sim.Sleep", "params": {"seconds": 0.5}}})

        await some_in(admin, job["id"], "succeeded")
        own_server.kill9()
        await own_server.start_async()
        done = await job_state(admin, job["id"], "completed", 40)
        assert done["progress"]["succeeded"] + done["progress"]["failed"] == 5
        # Nothing sent twice: each device got the call once (one cut off by
        # the kill is lost, and recorded failed, not sent again).
        assert [s.methods.count("Sim.Sleep") for s in sims] == [1] * 5
        for e in (await executions(admin, job["id"], "failed")).values():
            assert e["error"]["message"].startswith("lost: ")
    finally:
        for sim in sims:
            await sim.stop()


@pytest_twisted.ensureDeferred
async def test_dashctl_jobs(server: DashdProcess, admin: Client):
    import json

    from test_ctl import dashctl, error, ok

    fleet = await tagged(admin, "ctl1", 2)
    ids = [d for d, _ in fleet]
    job = await create(admin, {"name": "from scripts", "target": {"devices": ids},
                               "action": {"type": "rpc", "method": "Sim.Echo"}})
    listed = ok(dashctl(server, "jobs", "list"))
    assert job["id"] in listed and "from scripts" in listed
    paused = json.loads(ok(dashctl(server, "--json", "jobs", "pause", job["id"])))
    assert paused["state"] == "paused"
    assert ok(dashctl(server, "jobs", "show", job["id"])) == \
        "job %s (from scripts): paused, 2 devices: queued 2\n" % job["id"]
    waiting = json.loads(ok(dashctl(server, "--json", "jobs", "executions", job["id"],
                                    "--state", "queued")))
    assert [e["device_id"] for e in waiting] == ids
    assert "is paused: only a running or scheduled job may be paused" in error(
        dashctl(server, "jobs", "pause", job["id"]))
    assert "cancelled" in ok(dashctl(server, "jobs", "cancel", job["id"]))
    assert ok(dashctl(server, "jobs", "delete", job["id"])) == "deleted job %s\n" % job["id"]
    assert "no such job: jnope" in error(dashctl(server, "jobs", "show", "jnope"))
    assert (await admin.get("/api/v2/jobs/" + job["id"])).status == 404


@pytest_twisted.ensureDeferred
async def test_a_staged_rollout_waits_for_approval_and_pauses_on_its_error_threshold(
        server: DashdProcess, admin: Client):
    ids, sims = await online_fleet(server, admin, "stage1", 8)
    # Devices 3 and 4 (the second phase's first two) fail the step.
    for i, sim in enumerate(sims):
        sim.handlers["Job.Step"] = sim.handlers["Sim.Fail"] if i in (2, 3) else \
            sim.handlers["Sim.Echo"]
    sub = await subscribe(server, admin.key)
    try:
        job = await create(admin, {
            "name": "staged", "target": {"devices": ids},
            "action": {"type": "rpc", "method": "Job.Step", "params": {"go": 1}},
            "phases": [{"count": 2, "approval": True},
                       {"count": 4, "error_threshold": 50, "success_threshold": 100},
                       {"percent": 100}]})
        assert job["stage"] == {"phase": 0, "since": job["created"]}

        async def awaiting():
            body = (await admin.get("/api/v2/jobs/" + job["id"])).body
            return body if body.get("stage", {}).get("awaiting_approval") else None

        waiting = await eventually(awaiting, 15)
        assert waiting["state"] == "running" and waiting["progress"]["succeeded"] == 2
        assert [s.methods.count("Job.Step") for s in sims] == [1, 1] + [0] * 6
        approved = await admin.post("/api/v2/jobs/%s/approve" % job["id"])
        assert approved.status == 200, approved
        again = await admin.post("/api/v2/jobs/%s/approve" % job["id"])
        assert (again.status, again.body["error"]["message"]) == (
            409, "job %s is not waiting for an approval" % job["id"])

        paused = await job_state(admin, job["id"], "paused", 15)
        # The job pauses as soon as the phase's failures reach its threshold:
        # after the first of its two failures, or after both if their ends
        # are seen in the same step.
        assert paused["reason"] in [{
            "message": "phase 2: %d of its 2 devices failed or timed out (%s%%; its error "
                       "threshold is 50%%)" % (failed, share), "phase": 2}
            for failed, share in ((1, "50.0"), (2, "100.0"))], paused["reason"]
        # The third phase sent nothing.
        assert [s.methods.count("Job.Step") for s in sims] == [1, 1, 1, 1] + [0] * 4
        await sub.next(lambda e: e["name"] == "job.state" and e["id"] == job["id"]
                       and e["data"]["state"] == "paused")
        # A person looks, and goes on: the paused phase is accepted.
        resumed = await admin.post("/api/v2/jobs/%s/resume" % job["id"])
        assert resumed.status == 200, resumed
        done = await job_state(admin, job["id"], "completed", 20)
        assert (done["progress"]["succeeded"], done["progress"]["failed"]) == (6, 2)
        assert [s.methods.count("Job.Step") for s in sims] == [1] * 8
    finally:
        sub.close()
        for sim in sims:
            await sim.stop()


@pytest_twisted.ensureDeferred
async def test_a_firmware_job_updates_devices_from_the_library(server: DashdProcess,
                                                               admin: Client, tmp_path):
    from test_library import add_image
    from test_ota import make_bin

    image = await add_image(admin, make_bin(str(tmp_path / "job.bin"), 30_000),
                            "application/octet-stream")
    ids, sims = await online_fleet(server, admin, "fw1", 3)
    try:
        reply = await admin.post("/api/v2/jobs", {
            "name": "bad image", "target": {"devices": ids},
            "action": {"type": "firmware", "firmware": "fnosuchimage0"}})
        assert (reply.status, reply.body["error"]["message"]) == (
            400, "no such firmware: fnosuchimage0")
        job = await create(admin, {
            "name": "to 2.0", "target": {"devices": ids}, "concurrency": 2,
            "action": {"type": "firmware", "firmware": image["id"]}})
        assert job["action"]["sha256"] == image["sha256"]
        done = await job_state(admin, job["id"], "completed", 60)
        assert done["progress"]["succeeded"] == 3, done
        for e in (await executions(admin, job["id"])).values():
            assert e["result"]["state"] == "committed"
        for device_id, sim in zip(ids, sims):
            assert sim.ota_image_sha256 == image["sha256"]
            assert (await admin.device(device_id))["ota"]["state"] == "committed"

        # While a job that has not ended uses the image, it stays.
        later = await create(admin, {
            "name": "later", "target": {"devices": ids}, "start_at": 4102444800,
            "action": {"type": "firmware", "firmware": image["id"]}})
        assert later["state"] == "scheduled"
        here = "/api/v2/firmware/images/" + image["id"]
        refused = await admin.delete(here)
        assert (refused.status, refused.body["error"]["message"]) == (
            409, "firmware %s is used by job %s (scheduled): cancel the job, or wait until it "
                 "has ended, before deleting it" % (image["id"], later["id"]))
        assert (await admin.post("/api/v2/jobs/%s/cancel" % later["id"])).status == 200
        assert (await admin.delete(here)).status == 200
    finally:
        for sim in sims:
            await sim.stop()


@pytest_twisted.ensureDeferred
async def test_the_queued_calls_limits_hold_for_jobs(own_server: DashdProcess):
    own_server.configure({"calls": {"max_queued_per_device": 1, "max_queued_per_account": 3}})
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    ids = [(await admin.register("limit-%d" % i))[0] for i in range(5)]
    # The first device (offline) has a call queued already: its limit.
    reply = await admin.post("/api/v2/devices/%s/calls" % ids[0], {"method": "Sim.Echo"})
    assert reply.status == 202, reply
    job = await create(admin, {"name": "limits", "target": {"devices": ids},
                               "action": {"type": "rpc", "method": "Sim.Echo"}})

    async def settled():
        found = await executions(admin, job["id"])
        return found if sum(e["state"] == "failed" for e in found.values()) == 3 else None

    found = await eventually(settled, 10)
    assert found[ids[0]]["error"] == {"code": 429, "message": (
        "device %s has 1 calls queued or under way, the most it may have "
        "(calls.max_queued_per_device)" % ids[0])}
    # The account may have 3: one queued by hand, two by the job.
    assert [found[d]["state"] for d in ids[1:]] == ["queued", "queued", "failed", "failed"]
    assert found[ids[3]]["error"]["message"] == (
        "this account has 3 calls queued or under way, the most it may have "
        "(calls.max_queued_per_account)")


@pytest_twisted.ensureDeferred
async def test_a_restricted_key_hears_of_the_jobs_it_created_only(server: DashdProcess,
                                                                  admin: Client):
    fleet = await tagged(admin, "notify1", 2)
    ids = [d for d, _ in fleet]
    scope = {"devices": {d: {"read": ["*"], "write": ["interval"]} for d in ids}}
    creator = await _key(admin, kind="restricted", name="job creator", scope=scope)
    neighbour = await _key(admin, kind="restricted", name="same devices", scope=scope)
    created = await admin.post("/api/v2/accounts", {"name": "notify other"})
    SECRETS.add(created.body["admin_key"]["key"])
    stranger = created.body["admin_key"]["key"]
    subs = [await subscribe(server, k) for k in (creator.key, neighbour.key, stranger,
                                                 admin.key)]
    try:
        job = await create(creator, {
            "name": "interval 30", "target": {"devices": ids},
            "action": {"type": "shadow", "desired": {"interval": 30}}})
        mine = lambda name: lambda e: e["name"] == name and e["id"] == job["id"]  # noqa: E731
        for sub in (subs[0], subs[3]):
            await sub.next(lambda e: mine("job.state")(e) and e["data"]["state"] == "completed")
            sub.cursor = 0
            progress = await sub.next(lambda e: mine("job.progress")(e)
                                      and e["data"]["progress"]["succeeded"] == 2)
            assert progress["data"]["key_id"] == job["key_id"]
        # A change published after the job's events reaches the others: the
        # job's had reached them before, had they been sent.
        reply = await admin.post("/api/v2/devices/" + ids[0],
                                 {"shadow": {"state": {"desired": {"marker": 1}}}})
        assert reply.status == 200
        await subs[1].next(lambda e: e["name"] == "shadow.update" and e["id"] == ids[0])
        assert not [e for e in subs[1].received if e["name"].startswith("job.")]
        # The other account sees neither the job nor the device.
        await subs[3].next(lambda e: e["name"] == "shadow.update" and e["id"] == ids[0])
        assert not [e for e in subs[2].received if e["name"].startswith("job.")]
    finally:
        for sub in subs:
            sub.close()


@pytest_twisted.ensureDeferred
async def test_cancel_with_force_cancels_what_is_in_progress_and_ignores_its_end(
        server: DashdProcess, admin: Client):
    ids, sims = await online_fleet(server, admin, "force1", 3)
    try:
        job = await create(admin, {
            "name": "slow", "target": {"devices": ids}, "concurrency": 1,
            "action": {"type": "rpc", "method": "Sim.Sleep", "params": {"seconds": 1.5}}})

        running = await some_in(admin, job["id"], "in_progress")
        assert list(running) == [ids[0]]
        call_id = running[ids[0]]["call_id"]
        reply = await admin.post("/api/v2/jobs/%s/cancel?force=maybe" % job["id"])
        assert (reply.status, reply.body["error"]["message"]) == (
            400, "force must be true or false")
        reply = await admin.post("/api/v2/jobs/%s/cancel?force=true" % job["id"])
        assert reply.status == 200, reply
        assert reply.body["state"] == "cancelled"
        assert reply.body["reason"]["force"] is True
        progress = reply.body["progress"]
        assert (progress["cancelled"], progress["in_progress"]) == (3, 0)
        found = await executions(admin, job["id"])
        assert found[ids[0]]["reason"] == ("cancelled in progress (force): what the device "
                                           "reports for it is not recorded")
        # The device answers later: its call records it, the job does not.
        await eventually(lambda: sims[0].methods.count("Sim.Sleep") == 1 or None, 5)
        async def call_ended():
            r = await admin.get("/api/v2/calls/" + call_id)
            return r.body if r.body["state"] == "succeeded" else None

        ended = await eventually(call_ended, 10)
        assert ended["result"] == {"slept": 1.5}
        # (a step of the job since: jobs.interval)
        from support import sleep
        await sleep(1.5)
        after = await executions(admin, job["id"])
        assert [after[d]["state"] for d in ids] == ["cancelled"] * 3
        assert "result" not in after[ids[0]]
        done = (await admin.get("/api/v2/jobs/" + job["id"])).body
        assert done["progress"]["succeeded"] == 0 and done["progress"]["cancelled"] == 3
        assert [s.methods.count("Sim.Sleep") for s in sims] == [1, 0, 0]
        again = await admin.post("/api/v2/jobs/%s/cancel?force=true" % job["id"])
        assert (again.status, again.body["error"]["message"]) == (
            409, "job %s has ended (cancelled) and has nothing in progress: there is nothing "
                 "to cancel" % job["id"])
    finally:
        for sim in sims:
            await sim.stop()


@pytest_twisted.ensureDeferred
async def test_dashctl_jobs_cancel_force_cancels_what_is_in_progress(
        server: DashdProcess, admin: Client):
    import json

    from test_ctl import dashctl, ok

    ids, sims = await online_fleet(server, admin, "force3", 2)
    try:
        job = await create(admin, {
            "name": "slow from scripts", "target": {"devices": ids}, "concurrency": 1,
            "action": {"type": "rpc", "method": "Sim.Sleep", "params": {"seconds": 30}}})

        await some_in(admin, job["id"], "in_progress")
        after = json.loads(ok(dashctl(server, "--json", "jobs", "cancel", "--force", job["id"])))
        assert after["state"] == "cancelled" and after["reason"]["force"] is True
        assert (after["progress"]["cancelled"], after["progress"]["in_progress"]) == (2, 0)
    finally:
        for sim in sims:
            await sim.stop()


@pytest_twisted.ensureDeferred
async def test_cancel_with_force_stops_a_firmware_transfer(server: DashdProcess,
                                                           admin: Client, tmp_path):
    from test_library import add_image
    from test_ota import make_bin

    image = await add_image(admin, make_bin(str(tmp_path / "force.bin"), 60_000),
                            "application/octet-stream")
    ids, sims = await online_fleet(server, admin, "force2", 1, ota_write_delay=0.3)
    try:
        job = await create(admin, {
            "name": "slow image", "target": {"devices": ids},
            "action": {"type": "firmware", "firmware": image["id"]}})

        async def writing():
            return True if sims[0].methods.count("OTA.Write") >= 1 else None

        await eventually(writing, 20)
        reply = await admin.post("/api/v2/jobs/%s/cancel?force=true" % job["id"])
        assert reply.status == 200, reply
        assert reply.body["progress"]["cancelled"] == 1

        async def stopped():
            ota = (await admin.device(ids[0]))["ota"]
            return ota if ota["state"] == "failed" else None

        ota = await eventually(stopped, 10)
        assert ota["reason"] == "the job was cancelled with force"
        assert ota["job"] == job["id"]
        writes = sims[0].methods.count("OTA.Write")
        from support import sleep
        await sleep(1.0)
        assert sims[0].methods.count("OTA.Write") <= writes + 1
        assert "OTA.End" not in sims[0].methods
        found = await executions(admin, job["id"])
        assert found[ids[0]]["state"] == "cancelled"
    finally:
        for sim in sims:
            await sim.stop()
