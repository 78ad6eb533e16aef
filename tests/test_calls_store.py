"""
The store jobs of queued calls (dashd.store.calls_sql) on both stores:
every change of state a compare-and-set, a call taken to send once however
many ask at once (two nodes on one PostgreSQL), and retention.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from dashd.domain import calls as c
from dashd.domain import tokens
from dashd.domain.calls import Call
from dashd.domain.errors import Busy
from dashd.domain.model import Account, ApiKey, Device
from dashd.store import NotFound

import backends
from test_store import open_store


@pytest.fixture(params=backends.STORES)
def stores(request, tmp_path):
    """One store, and a second on the same database where there can be one
    (PostgreSQL: another node); on SQLite the same one twice."""
    s, cleanup = open_store(request.param, tmp_path)
    other = s
    if request.param == "postgresql":
        from dashd.store.postgres import PostgresStore
        from twisted.internet import reactor

        other = PostgresStore(s.url, reactor)
        other.start()
    yield s, other
    if other is not s:
        pytest_twisted.blockon(other.stop())
    pytest_twisted.blockon(s.stop())
    cleanup()


async def _device(store) -> Device:
    account = Account(tokens.new_id("a"), "acme", 1.0)
    key = ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0)
    await store.bootstrap_admin_key(key, "h" * 64, account)
    device = Device(tokens.new_id("d"), account.id, "dev", 2.0)
    await store.create_device(device, tokens.new_id("t"))
    return device


def _call(device: Device, method: str = "Sim.Echo", expires: float = 1000.0,
          retries: int = 0, params: object = None) -> Call:
    return Call(id=tokens.new_id("c"), device_id=device.id, account_id=device.account_id,
                key_id="k1", method=method, params=params, state=c.QUEUED, created=10.0,
                expires=expires, timeout=5.0, retries=retries, times={c.QUEUED: 10.0})


@pytest_twisted.ensureDeferred
async def test_a_call_is_taken_once_however_many_ask(stores):
    store, other = stores
    device = await _device(store)
    made = [await store.create_call(_call(device, params=i), 100, 100) for i in range(20)]
    assert [m.seq for m in made] == sorted(m.seq for m in made)
    takers = [s.claim_calls(device.id, "n%d/1" % i, 20.0, 3)
              for i, s in enumerate([store, other] * 5)]
    outcomes = await gatherResults(takers)
    taken = [call for sent, _ in outcomes for call in sent]
    assert sorted(call.params for call in taken) == list(range(20))
    for sent, _ in outcomes:
        # Each taker got its calls in the order they were made.
        assert [call.seq for call in sent] == sorted(call.seq for call in sent)
        assert all(call.state == c.SENT and len(call.attempts) == 1 for call in sent)
    assert await store.claim_calls(device.id, "n9/1", 21.0, 5) == ([], [])


@pytest_twisted.ensureDeferred
async def test_an_attempt_ends_once_and_only_by_whoever_sent_it(stores):
    store, other = stores
    device = await _device(store)
    call = await store.create_call(_call(device, retries=1), 100, 100)
    (sent,), _ = await store.claim_calls(device.id, "a/1", 20.0, 5)
    assert sent.claim == "a/1" and sent.times[c.SENT] == 20.0
    assert await other.end_call(call.id, 1, "b/1", c.SUCCEEDED, 21.0, 1) is None
    # Timed out, with a retry left: queued again, its attempt kept.
    again = await other.end_call(call.id, 1, "a/1", c.TIMED_OUT, 25.0, None,
                                 {"code": 504, "message": "late"})
    assert again.state == c.QUEUED and again.attempts[0]["state"] == c.TIMED_OUT
    assert await store.end_call(call.id, 1, "a/1", c.SUCCEEDED, 26.0, 1) is None
    (sent,), _ = await store.claim_calls(device.id, "b/2", 30.0, 5)
    assert len(sent.attempts) == 2
    done = await store.end_call(call.id, 2, "b/2", c.LOST, 31.0, None,
                                {"code": 503, "message": "gone"})
    assert done.state == c.LOST and done.finished == 31.0
    assert [a["state"] for a in done.attempts] == [c.TIMED_OUT, c.LOST]
    assert (await store.get_call(call.id)).state == c.LOST


@pytest_twisted.ensureDeferred
async def test_unsend_cancel_expire_and_prune(stores):
    store, _ = stores
    device = await _device(store)
    back = await store.create_call(_call(device), 100, 100)
    (sent,), _ = await store.claim_calls(device.id, "a/1", 20.0, 1)
    undone = await store.unsend_call(back.id, "a/1")
    assert undone.state == c.QUEUED and undone.attempts == () and c.SENT not in undone.times
    cancelled = await store.cancel_call(back.id, 22.0)
    assert cancelled.state == c.CANCELLED
    assert (await store.cancel_call(back.id, 23.0)).finished == 22.0
    soon = await store.create_call(_call(device, expires=30.0), 100, 100)
    assert [e.id for e in await store.expire_calls(29.0)] == []
    assert [e.id for e in await store.expire_calls(30.0)] == [soon.id]
    assert await store.queued_devices() == []
    late = await store.create_call(_call(device, expires=40.0), 100, 100)
    assert await store.queued_devices() == [device.id]
    sent, expired = await store.claim_calls(device.id, "a/2", 41.0, 5)
    assert (sent, [e.id for e in expired]) == ([], [late.id])
    assert await store.prune_calls(30.0) == 1
    assert await store.get_call(back.id) is None
    assert (await store.get_call(soon.id)).state == c.EXPIRED
    listed = await store.list_calls(device.id, (c.EXPIRED,), 10, None)
    assert [x.id for x in listed] == [late.id, soon.id]


@pytest_twisted.ensureDeferred
async def test_limits_and_a_missing_device(stores):
    store, _ = stores
    device = await _device(store)
    await store.create_call(_call(device), 2, 3)
    await store.create_call(_call(device), 2, 3)
    with pytest.raises(Busy, match="calls.max_queued_per_device"):
        await store.create_call(_call(device), 2, 3)
    with pytest.raises(Busy, match="calls.max_queued_per_account"):
        await store.create_call(_call(device), 5, 2)
    gone = Device("dnothere", device.account_id, "x", 1.0)
    with pytest.raises(NotFound):
        await store.create_call(_call(gone), 5, 5)
    await store.delete_device(device.id)
    assert await store.list_calls(device.id, None, 10, None) == []


@pytest_twisted.ensureDeferred
async def test_claims_and_ends_gathered_in_one_store_job_each_get_their_own_outcome(stores):
    from dashd.store import calls_sql

    store, _ = stores
    devices = [await _device(store)]
    for i in range(2):
        devices.append(Device(tokens.new_id("d"), devices[0].account_id, "dev%d" % i, 2.0))
        await store.create_device(devices[-1], tokens.new_id("t"))
    made = [await store.create_call(_call(d), 100, 100) for d in devices]
    claimed = await store.alarms_job(calls_sql.each, calls_sql.claim, [
        (d.id, "n/%d" % i, 20.0, 1) for i, d in enumerate(devices)] + [(devices[0].id, "n/9",
                                                                       20.0, 1)])
    assert [[x.id for x in taken] for taken, _ in claimed] == [[m.id] for m in made] + [[]]
    # One end of the batch cannot be stored (its result is not JSON): it
    # alone is refused, the others are stored.
    ended = await store.alarms_job(calls_sql.each, calls_sql.end, [
        (made[0].id, 1, "n/0", c.SUCCEEDED, 21.0, {"ok": 1}, None),
        (made[1].id, 1, "n/1", c.SUCCEEDED, 21.0, {"bad": object()}, None),
        (made[2].id, 1, "n/wrong", c.SUCCEEDED, 21.0, None, None)])
    assert ended[0].state == c.SUCCEEDED and ended[0].result == {"ok": 1}
    assert isinstance(ended[1], calls_sql.Refused)
    assert ended[2] is None  # not its claim
    assert (await store.get_call(made[0].id)).state == c.SUCCEEDED
    assert (await store.get_call(made[1].id)).state == c.SENT
    assert (await store.get_call(made[2].id)).state == c.SENT
