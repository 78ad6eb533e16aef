"""
The store jobs of fleet jobs added to dashd.store.jobs_sql.JobStore, on
both stores: the retention of jobs that ended, in batches.
"""

from __future__ import annotations

import pytest_twisted

from dashd.app.retention import DataRetention
from dashd.domain import tokens
from dashd.domain.model import Device
from dashd.store.jobs_sql import JobStore

from test_calls_store import _call, _device, stores  # noqa: F401 (the fixture)


async def _job(store, device, n: int, state: str | None, finished: float = 0.0) -> str:
    job = {"id": tokens.new_id("j"), "account_id": device.account_id, "key_id": "k1",
           "name": "j", "kind": "shadow", "spec": {"action": {"type": "shadow"}},
           "state": "running", "created": 1.0, "started": 1.0, "firmware_id": None}
    await store.create_job(job, [("%s-%d" % (device.id, i), "queued", None)
                                 for i in range(n)])
    if state is not None:
        after = await store.set_job_state(job["id"], ("running",), state, finished)
        assert after["changed"]
    return job["id"]


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now


@pytest_twisted.ensureDeferred
async def test_jobs_ended_long_ago_are_deleted_in_batches(stores):  # noqa: F811
    store, _ = stores
    more = JobStore(store)
    device = await _device(store)
    old = await _job(store, device, 5, "completed", 50.0)
    aborted = await _job(store, device, 1, "aborted", 60.0)
    # Ended long ago, but a call of it is still out: kept until it ends.
    out = await _job(store, device, 2, "cancelled", 50.0)
    assert await store.take_job_executions(out, 1, 2.0) == ["%s-0" % device.id]
    await store.set_job_execution_ref(out, "%s-0" % device.id, "o1")
    running = await _job(store, device, 2, None)
    recent = await _job(store, device, 2, "completed", 500.0)
    assert await more.prune_jobs(100.0, 3) == 3
    assert len(await store.job_executions(old, None, 10, None)) == 2
    assert (await store.get_job(old))["state"] == "completed"
    assert await more.prune_jobs(100.0, 3) == 3  # the last 2 and the job
    assert await store.get_job(old) is None
    assert await more.prune_jobs(100.0, 3) == 2  # the aborted one and its execution
    assert await store.get_job(aborted) is None
    assert await more.prune_jobs(100.0, 3) == 0
    for kept in (out, running, recent):
        assert await store.get_job(kept) is not None
    assert len(await store.job_executions(out, None, 10, None)) == 2
    # As the retention runs it: every batch until one is short.
    await store.finish_job_ref(out, "%s-0" % device.id, "o1", "succeeded", 70.0)
    retention = DataRetention(store, _Clock(100.0 + 86400.0), 1.0, more.prune_jobs, "jobs")
    assert await retention.run() == 3
    assert await store.get_job(out) is None
    assert await store.get_job(recent) is not None


@pytest_twisted.ensureDeferred
async def test_a_firmware_execution_starts_only_under_the_lease_it_was_taken_with(
        stores):  # noqa: F811
    store, other = stores
    mine, theirs = JobStore(store), JobStore(other)
    device = await _device(store)
    job_id = await _job(store, device, 3, None)
    a, b, c = ("%s-%d" % (device.id, i) for i in range(3))
    token = await mine.lease_job(job_id, "n1", 10.0, 20.0)
    assert token is not None
    assert await mine.lease_job(job_id, "n1", 15.0, 25.0) == token  # renewed: same epoch
    assert await theirs.lease_job(job_id, "n2", 16.0, 26.0) is None  # held
    started = await mine.start_job_executions(job_id, "n1", token, 17.0, [a])
    assert [d for d, _ in started] == [a]
    ((_, ref),) = started
    (e,) = [x for x in await store.job_executions(job_id, None, 10, None) if x["device_id"] == a]
    assert (e["state"], e["call_id"], e["dispatched"], e["attempts"]) == (
        "in_progress", ref, True, 1)
    # n1 stalls; its lease lapses and n2 takes the job over: a new epoch.
    taken = await theirs.lease_job(job_id, "n2", 30.0, 40.0)
    assert taken is not None and taken != token
    # n1, back, can start nothing under its old token (nor a lapsed lease).
    assert await mine.start_job_executions(job_id, "n1", token, 31.0, [b]) == []
    assert await mine.start_job_executions(job_id, "n2", taken, 41.0, [b]) == []
    assert [d for d, _ in await theirs.start_job_executions(job_id, "n2", taken, 32.0,
                                                            [b, a])] == [b]
    # n1 taking the lease back after n2 is also a new epoch.
    again = await mine.lease_job(job_id, "n1", 50.0, 60.0)
    assert again not in (None, token, taken)
    # An update recorded but never started is put back once (its attempt undone).
    assert not await mine.requeue_unstarted(job_id, a, "o-other", 51.0)
    assert await mine.requeue_unstarted(job_id, a, ref, 51.0)
    assert not await mine.requeue_unstarted(job_id, a, ref, 52.0)
    (e,) = [x for x in await store.job_executions(job_id, None, 10, None) if x["device_id"] == a]
    assert (e["state"], e["dispatched"], e["attempts"]) == ("queued", False, 0)
    assert "dispatched" not in e["times"]
    assert c not in [d for d, _ in started]


@pytest_twisted.ensureDeferred
async def test_a_dispatch_batch_skips_deleted_devices_and_busy_ones(stores):  # noqa: F811
    """An RPC job's batch reads its devices together: one deleted since is
    skipped (and gets no call), one with as many calls queued as it may
    have fails with 429, the others each get their call."""
    store, _ = stores
    first = await _device(store)
    account = first.account_id
    others = [Device(tokens.new_id("d"), account, "dev%d" % i, 2.0) for i in range(3)]
    for device in others:
        await store.create_device(device, tokens.new_id("t"))
    gone, busy, fine = others
    job = {"id": tokens.new_id("j"), "account_id": account, "key_id": "k1", "name": "rpc",
           "kind": "rpc", "firmware_id": None, "state": "running", "created": 1.0,
           "started": 1.0, "spec": {"action": {"type": "rpc", "method": "Sim.Echo"},
                                    "timeouts": {"queued": 60.0, "running": 10.0}}}
    await store.create_job(job, [(d.id, "queued", None) for d in [first] + others])
    await store.create_call(_call(busy), 10, 100)
    assert await store.delete_device(gone.id)
    made = await store.dispatch_job(job, 10, 5.0, 1, 100)
    assert sorted(call.device_id for call in made) == sorted([first.id, fine.id])
    found = {e["device_id"]: e for e in await store.job_executions(job["id"], None, 10, None)}
    assert found[gone.id]["state"] == "skipped"
    assert found[gone.id]["reason"] == "not found: the device was deleted"
    assert found[busy.id]["state"] == "failed"
    assert found[busy.id]["error"]["code"] == 429
    assert "calls.max_queued_per_device" in found[busy.id]["error"]["message"]
    assert found[first.id]["call_id"] and found[fine.id]["call_id"]


async def _rpc_job(store, account: str, devices: list, retries: int,
                   queued: float = 60.0) -> dict:
    job = {"id": tokens.new_id("j"), "account_id": account, "key_id": "k1", "name": "rpc",
           "kind": "rpc", "firmware_id": None, "state": "running", "created": 1.0,
           "started": 1.0, "spec": {"action": {"type": "rpc", "method": "Sim.Echo"},
                                    "timeouts": {"queued": queued, "running": 10.0},
                                    "retries": retries}}
    await store.create_job(job, [(d.id, "queued", None) for d in devices])
    return job


@pytest_twisted.ensureDeferred
async def test_a_calls_end_ends_its_job_execution_in_the_same_transaction(
        stores):  # noqa: F811
    """An RPC job's call that ends (its device's answer, through the
    batched ends as dashd.app.calls stores them; or the sweep expiring it)
    ends its execution in the call's own transaction: no step of the job
    (sync) is needed to see it, and the sync then finds nothing left to do.
    A failed attempt with retries left is queued again; a call that is not
    a job's ends alone."""
    from dashd.store import calls_sql

    store, other = stores
    first = await _device(store)
    account = first.account_id
    devices = [first] + [Device(tokens.new_id("d"), account, "dev%d" % i, 2.0)
                         for i in range(3)]
    for device in devices[1:]:
        await store.create_device(device, tokens.new_id("t"))
    answered, failing, expiring, retried = devices
    job = await _rpc_job(store, account, [answered, failing], 0)
    late_job = await _rpc_job(store, account, [expiring], 0, queued=0.5)
    again = await _rpc_job(store, account, [retried], 1)
    made = []
    for one in (job, late_job, again):
        made += await store.dispatch_job(one, 10, 5.0, 10, 100)
    calls = {call.device_id: call for call in made}
    alone = await store.create_call(_call(first), 10, 100)
    # The sweep expires one before its device takes it (on another node).
    (expired,) = await other.expire_calls(5.5)
    assert expired.id == calls[expiring.id].id
    taken = {}
    for device in (answered, failing, retried):
        sent, _ = await store.claim_calls(device.id, "n1/%s" % device.id, 6.0, 10)
        taken.update((call.id, call) for call in sent)
    assert alone.id in taken
    # The ends, batched in one transaction as CallDelivery gathers them.
    ends = [(calls[answered.id].id, 1, "n1/" + answered.id, "succeeded", 7.0, {"n": 1}, None),
            (calls[failing.id].id, 1, "n1/" + failing.id, "failed", 7.0, None,
             {"code": 500, "message": "no"}),
            (calls[retried.id].id, 1, "n1/" + retried.id, "failed", 7.0, None,
             {"code": 500, "message": "not yet"}),
            (alone.id, 1, "n1/" + first.id, "succeeded", 7.0, "alone", None)]
    results = await store.alarms_job(calls_sql.each, calls_sql.end, ends)
    assert [r.state for r in results] == ["succeeded", "failed", "failed", "succeeded"]
    found = {e["device_id"]: e for e in await store.job_executions(job["id"], None, 10, None)}
    ok = found[answered.id]
    assert (ok["state"], ok["result"], ok["dispatched"]) == ("succeeded", {"n": 1}, False)
    assert ok["times"]["in_progress"] == 6.0 and ok["times"]["succeeded"] == 7.0
    bad = found[failing.id]
    assert (bad["state"], bad["error"]) == ("failed", {"code": 500, "message": "no"})
    (late,) = await store.job_executions(late_job["id"], None, 10, None)
    assert late["state"] == "timed_out" and late["error"]["code"] == 504
    assert "in_progress" not in late["times"]
    (retry,) = await store.job_executions(again["id"], None, 10, None)
    assert (retry["state"], retry["dispatched"], retry["attempts"]) == ("queued", False, 1)
    assert retry["error"] == {"code": 500, "message": "not yet"}
    assert await store.jobs_in_flight(job["id"]) == 0
    # Nothing left for the job's step.
    assert await store.sync_job(job["id"], 0, 8.0) == 0
    assert await store.sync_job(late_job["id"], 0, 8.0) == 0
    assert await store.sync_job(again["id"], 1, 8.0) == 0
    # The retry is a new attempt, sent once more (a new call).
    (next_call,) = await store.dispatch_job(again, 10, 9.0, 10, 100)
    assert next_call.id != calls[retried.id].id
