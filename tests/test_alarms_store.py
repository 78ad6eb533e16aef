"""
The store jobs of alarms (dashd.store.alarms_sql) on both stores: an alarm
raised once per (rule, device) however many raise it at once (two nodes on
one PostgreSQL), cleared and acknowledged once, listed by filter and page,
rules and webhooks kept with their limits.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from dashd.domain import tokens
from dashd.domain.alarms import Alarm, Rule
from dashd.domain.model import Device
from dashd.store.alarms_sql import AlarmStore, OverLimit

from test_calls_store import _device, stores  # noqa: F401 (the fixture)


def _alarm(device, rule_id: str = "ar1", severity: str = "major", t: float = 10.0) -> Alarm:
    return Alarm(id=tokens.new_id("al"), rule_id=rule_id, device_id=device.id,
                 account_id=device.account_id, severity=severity, state="active", raised=t,
                 message="hot", details={"value": 31})


@pytest_twisted.ensureDeferred
async def test_raised_once_however_many_raise(stores):  # noqa: F811
    one, other = stores
    device = await _device(one)
    a, b = AlarmStore(one), AlarmStore(other)
    outcomes = await gatherResults([s.raise_alarm(_alarm(device)) for s in (a, b, a, b)])
    assert sum(1 for _, created in outcomes if created) == 1
    assert len({alarm.id for alarm, _ in outcomes}) == 1
    [active] = await a.active_for([device.id])
    assert active.details == {"value": 31} and active.state == "active"
    # Cleared once.
    cleared = await gatherResults([a.clear_alarm("ar1", device.id, 20.0, "condition",
                                                 {"value": 27}),
                                   b.clear_alarm("ar1", device.id, 20.0, "condition")])
    assert sum(1 for c in cleared if c is not None) == 1
    done = [c for c in cleared if c is not None][0]
    assert done.state == "cleared" and done.cleared == 20.0
    assert await a.active_for([device.id]) == []
    # Raised anew: a second alarm, the first one history.
    again, created = await a.raise_alarm(_alarm(device, t=30.0))
    assert created and again.id != active.id
    found, _ = await a.list_alarms(device.account_id, None, None, None, None, None, 10, None)
    assert [x.id for x in found] == [again.id, active.id]


@pytest_twisted.ensureDeferred
async def test_acknowledged_once_and_cleared_by_hand(stores):  # noqa: F811
    one, other = stores
    device = await _device(one)
    a, b = AlarmStore(one), AlarmStore(other)
    alarm, _ = await a.raise_alarm(_alarm(device))
    acks = await gatherResults([a.acknowledge(alarm.id, 11.0, "ann", "looking"),
                                b.acknowledge(alarm.id, 11.5, "bob", "me too")])
    assert sorted(changed for _, changed in acks) == [False, True]
    got = await a.get_alarm(alarm.id)
    assert got.acknowledged_by in ("ann", "bob") and got.note in ("looking", "me too")
    cleared, changed = await a.clear_by_id(alarm.id, 12.0, "ann")
    assert changed and cleared.state == "cleared" and cleared.cleared_by == "ann"
    _, again = await b.clear_by_id(alarm.id, 13.0, "bob")
    assert not again
    missing, changed = await a.clear_by_id("al-none", 13.0, "bob")
    assert missing is None and not changed


@pytest_twisted.ensureDeferred
async def test_listing_and_counts(stores):  # noqa: F811
    one, _ = stores
    d1 = await _device(one)
    d2 = Device(tokens.new_id("d"), d1.account_id, "dev2", 3.0)
    await one.create_device(d2, tokens.new_id("t"))
    s = AlarmStore(one)
    for i, sev in enumerate(["critical", "minor", "minor"]):
        await s.raise_alarm(_alarm(d1, rule_id="r%d" % i, severity=sev))
    await s.raise_alarm(_alarm(d2, rule_id="r0", severity="critical"))
    await s.clear_alarm("r2", d1.id, 50.0, "condition")
    assert await s.count_active() == {"critical": 2, "minor": 1}
    assert await s.count_active(d1.account_id) == {"critical": 2, "minor": 1}
    assert await s.count_active("another-account") == {}
    active, _ = await s.list_alarms(d1.account_id, None, "active", ("minor", "critical"),
                                    d1.id, None, 10, None)
    assert {(x.rule_id, x.severity) for x in active} == {("r0", "critical"), ("r1", "minor")}
    page, cursor = await s.list_alarms(d1.account_id, None, None, None, None, None, 2, None)
    rest, end = await s.list_alarms(d1.account_id, None, None, None, None, None, 2, cursor)
    assert len(page) == 2 and len(rest) == 2 and end is None
    assert {x.id for x in page}.isdisjoint({x.id for x in rest})
    unacked, _ = await s.list_alarms(d1.account_id, None, None, None, None, False, 10, None)
    assert len(unacked) == 4
    # A restricted key's devices only.
    none, _ = await s.list_alarms(d1.account_id, [], None, None, None, None, 10, None)
    assert none == []


@pytest_twisted.ensureDeferred
async def test_rules_and_webhooks_kept(stores):  # noqa: F811
    one, _ = stores
    s = AlarmStore(one)
    rule = Rule(id="ar-x", account_id="acct", name="hot", where='shadow.tags.site = "x"',
                condition={"kind": "threshold", "key": "t", "above": 1.0, "clear": 1.0,
                           "for": 0.0}, severity="minor", enabled=True, webhooks=("wh1",),
                created=1.0, updated=1.0)
    await s.put_rule(rule, 2)
    assert await s.get_rule("ar-x") == rule
    changed = Rule(**{**rule.__dict__, "enabled": False, "updated": 2.0})
    await s.put_rule(changed, 2)
    assert await s.list_rules("acct") == [changed]
    await s.put_rule(Rule(**{**rule.__dict__, "id": "ar-y"}), 2)
    with pytest.raises(OverLimit):
        await s.put_rule(Rule(**{**rule.__dict__, "id": "ar-z"}), 2)
    assert [r.id for r in await s.list_rules()] == ["ar-x", "ar-y"]
    assert await s.delete_rule("ar-x", 3.0, "me") == []
    assert await s.get_rule("ar-x") is None
    hook = {"id": "wh1", "account_id": "acct", "name": "ops", "url": "https://example.com/",
            "events": ["alarm.raised"], "secret": "s", "enabled": True, "created": 1.0,
            "updated": 1.0}
    await s.put_webhook(hook, 1)
    assert await s.get_webhook("wh1") == hook
    with pytest.raises(OverLimit):
        await s.put_webhook({**hook, "id": "wh2"}, 1)
    assert await s.delete_webhook("wh1") is True
    assert await s.list_webhooks("acct") == []


@pytest_twisted.ensureDeferred
async def test_alarms_go_with_their_device(stores):  # noqa: F811
    one, _ = stores
    device = await _device(one)
    s = AlarmStore(one)
    await s.raise_alarm(_alarm(device))
    await one.delete_device(device.id)
    assert await s.active_for([device.id]) == []
    # And a raise for a device that is gone creates nothing.
    _, created = await s.raise_alarm(_alarm(device))
    assert not created
    assert await s.count_active() == {}


@pytest_twisted.ensureDeferred
async def test_evaluation_in_memory_agrees_with_each_store(stores):  # noqa: F811
    """The query a rule selects devices with means on a device in memory
    what it means in each store's SQL."""
    from dashd.domain import query as q
    from dashd.domain import shadow
    from dashd.domain.query_eval import evaluate
    from test_alarms import QUERIES

    one, _ = stores
    first = await _device(one)
    specs = [
        ({"site": "berlin", "floor": 1}, {"temp": 25, "on": True, "mode": "auto"}, "1.9.0"),
        ({"site": "paris", "floor": "1"}, {"on": False, "name": "ü"}, "1.10.2"),
        ({}, {"temp": 19.5, "mode": "manual"}, None),
        ({"site": "berlin"}, {"temp": "25"}, "2.0-rc1"),
    ]
    ids = []
    for i, (tags, reported, version) in enumerate(specs):
        device = first if i == 0 else Device(tokens.new_id("d"), first.account_id,
                                             "dev-%d" % i, 3.0 + i)
        if i:
            await one.create_device(device, tokens.new_id("t"))
        await one.update_shadow(device.id, shadow.ShadowUpdate(
            patches={"tags": tags, "reported": reported}), 10.0 + i)
        if version is not None:
            await one.record_info(device.id, {"fw_version": version}, None, 20.0 + i)
        ids.append(device.id)
    online = (ids[0], ids[2])
    devices = [await one.get_device(i) for i in ids]
    for text in QUERIES + ['shadow.reported.name > "z"', 'name < "dev-2"']:
        node = q.parse(text)
        selection = q.Selection(where=node, account_id=first.account_id, online=online)
        by_store = {d.id for d in await one.select_devices(selection)}
        in_memory = {d.id for d in devices if evaluate(node, d, d.id in online)}
        assert in_memory == by_store, text
