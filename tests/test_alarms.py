"""
Alarm rules on a Clock (tests/clocked.py): each kind of condition, raised
once and cleared with hysteresis, durations and staleness on timers, what
a restart keeps, and the in-memory query evaluation against the stores'.
"""

from __future__ import annotations

from typing import Any

import pytest

from dashd.app.alarms import AlarmEngine, Alarms
from dashd.domain import query as q
from dashd.domain.errors import DeviceFailed, Forbidden, Invalid, NotFound, TimedOut
from dashd.domain.query_eval import evaluate
from dashd.store.alarms_sql import AlarmStore
from tests.clocked import World, done, failure_of


class AlarmWorld(World):
    def __init__(self, tmp_path: Any, config: dict[str, Any] | None = None) -> None:
        super().__init__(tmp_path, config)
        self.alarm_store = AlarmStore(self.store)
        self.engine = AlarmEngine(self.fleet, self.alarm_store, self.clock)
        self.fleet.event_observers.append(self.engine.device_event)
        self.fleet.connect_observers.append(self.engine.device_connected)
        self.fleet.info_observers.append(self.engine.device_info)
        self.fleet.call_result_observers.append(self.engine.call_result)
        self.alarms = Alarms(self.fleet, self.app.devices, self.engine, self.alarm_store)
        self.announced: list[tuple[str, Any]] = []
        self.engine.observers.append(lambda name, rule, alarm: self.announced.append(
            (name, alarm)))
        done(self.engine.start())

    def rule(self, condition: dict[str, Any], where: str | None = None,
             severity: str = "major") -> Any:
        body = {"name": "r", "condition": condition, "severity": severity}
        if where is not None:
            body["where"] = where
        return done(self.alarms.put_rule(self.admin, None, body))

    def report(self, fake: Any, **values: Any) -> None:
        reply = fake.request("State.Set", values)
        assert reply is not None and "result" in reply, reply
        self.settle()

    def settle(self) -> None:
        self.clock.advance(0)

    def active(self) -> list[Any]:
        return done(self.alarms.list(self.admin, "active", None, None, None, 50, None))[0]

    def every(self) -> list[Any]:
        return done(self.alarms.list(self.admin, None, None, None, None, 50, None))[0]

    def names(self) -> list[str]:
        return [name for name, _ in self.announced]


@pytest.fixture
def world(tmp_path: Any) -> Any:
    w = AlarmWorld(tmp_path)
    yield w
    w.engine.stop()
    w.close()


def test_threshold_raised_once_and_cleared_with_hysteresis(world: AlarmWorld) -> None:
    world.rule({"kind": "threshold", "key": "temp", "above": 30, "clear": 28})
    fake = world.connect()
    world.report(fake, temp=25)
    assert world.active() == []
    world.report(fake, temp=31)
    [alarm] = world.active()
    assert alarm.device_id == fake.device_id and alarm.details["value"] == 31
    # Still above, and between the thresholds: no second alarm, no clear.
    world.report(fake, temp=35)
    world.report(fake, temp=29)
    assert [a.id for a in world.active()] == [alarm.id]
    assert world.names() == ["alarm.raised"]
    world.report(fake, temp=28)
    assert world.active() == []
    assert world.names() == ["alarm.raised", "alarm.cleared"]
    [cleared] = world.every()
    assert cleared.id == alarm.id and cleared.state == "cleared"
    assert cleared.cleared_by == "condition"
    # And again: a new alarm, the old one kept as history.
    world.report(fake, temp=40)
    assert len(world.active()) == 1 and len(world.every()) == 2
    assert [e.name for e in world.named("alarm.raised")] == ["alarm.raised"] * 2


def test_threshold_below(world: AlarmWorld) -> None:
    world.rule({"kind": "threshold", "key": "bat.level", "below": 10, "clear": 20})
    fake = world.connect()
    world.report(fake, bat={"level": 9})
    assert len(world.active()) == 1
    world.report(fake, bat={"level": 15})
    assert len(world.active()) == 1
    world.report(fake, bat={"level": 21})
    assert world.active() == []


def test_threshold_for_a_duration(world: AlarmWorld) -> None:
    world.rule({"kind": "threshold", "key": "temp", "above": 30, "for": 60})
    fake = world.connect()
    world.report(fake, temp=31)
    world.clock.advance(59)
    assert world.active() == []
    # Back below before the minute is up: nothing.
    world.report(fake, temp=20)
    world.clock.advance(10)
    assert world.active() == []
    world.report(fake, temp=32)
    world.clock.advance(30)
    world.report(fake, temp=33)  # still above; the duration runs on
    world.clock.advance(30)
    [alarm] = world.active()
    assert "for 60 s" in alarm.message


def test_only_the_devices_the_query_matches_live(world: AlarmWorld) -> None:
    world.rule({"kind": "threshold", "key": "temp", "above": 30},
               where='shadow.tags.site = "berlin"')
    berlin, _ = world.register("berlin")
    paris, _ = world.register("paris")
    fb = world.connect(berlin)
    fp = world.connect(paris)
    from dashd.domain import shadow

    done(world.fleet.update_shadow(berlin.id, shadow.ShadowUpdate(
        patches={"tags": {"site": "berlin"}})))
    world.settle()
    world.report(fb, temp=31)
    world.report(fp, temp=31)
    assert [a.device_id for a in world.active()] == [berlin.id]
    # Paris starts matching: covered from its next report.
    done(world.fleet.update_shadow(paris.id, shadow.ShadowUpdate(
        patches={"tags": {"site": "berlin"}})))
    world.settle()
    world.report(fp, temp=32)
    assert sorted(a.device_id for a in world.active()) == sorted([berlin.id, paris.id])
    # Berlin stops matching: its alarm is cleared.
    done(world.fleet.update_shadow(berlin.id, shadow.ShadowUpdate(
        patches={"tags": {"site": "rome"}})))
    world.settle()
    assert [a.device_id for a in world.active()] == [paris.id]


def test_offline_for_longer_than(world: AlarmWorld) -> None:
    world.rule({"kind": "offline", "seconds": 300}, severity="critical")
    fake = world.connect()
    world.settle()
    fake.gone()
    world.settle()
    world.clock.advance(299)
    assert world.active() == []
    # Back in time: nothing raised.
    fake = world.connect(done(world.store.get_device(fake.device_id)))
    world.settle()
    world.clock.advance(600)
    assert world.active() == []
    fake.gone()
    world.settle()
    world.clock.advance(300)
    [alarm] = world.active()
    assert alarm.severity == "critical"
    assert world.engine.active["critical"] == 1
    fake = world.connect(done(world.store.get_device(fake.device_id)))
    world.settle()
    assert world.active() == []
    assert world.engine.active["critical"] == 0


def test_stale_key(world: AlarmWorld) -> None:
    world.rule({"kind": "stale", "key": "temp", "seconds": 60})
    fake = world.connect()
    world.report(fake, temp=20)
    world.clock.advance(50)
    # The same value again: stored, not announced; the engine reads it.
    world.report(fake, temp=20)
    world.clock.advance(20)
    world.settle()
    assert world.active() == []
    world.clock.advance(45)
    world.settle()
    [alarm] = world.active()
    assert "temp not reported" in alarm.message
    world.report(fake, temp=21)
    assert world.active() == []


def test_ota_failed(world: AlarmWorld) -> None:
    world.rule({"kind": "ota_failed"})
    fake = world.connect()
    world.settle()
    device = done(world.store.get_device(fake.device_id))
    world.fleet.publish(device, "ota.status", {"id": "o1", "state": "failed",
                                               "reason": "device refused"})
    world.settle()
    [alarm] = world.active()
    assert "device refused" in alarm.message
    world.fleet.publish(device, "ota.status", {"id": "o2", "state": "uploading"})
    world.settle()
    assert len(world.active()) == 1
    world.fleet.publish(device, "ota.status", {"id": "o2", "state": "committed"})
    world.settle()
    assert world.active() == []


def test_log_pattern(world: AlarmWorld) -> None:
    world.rule({"kind": "log", "pattern": "(?i)panic|watchdog", "clear_after": 600})
    fake = world.connect()
    fake.request("Dash.Log", {"fd": 1, "data": "all fine\n"})
    world.settle()
    assert world.active() == []
    fake.request("Dash.Log", {"fd": 1, "data": "WATCHDOG reset\n"})
    fake.request("Dash.Log", {"fd": 1, "data": "panic again\n"})
    world.settle()
    [alarm] = world.active()
    assert alarm.details["line"] == "WATCHDOG reset\n"
    world.clock.advance(599)
    assert len(world.active()) == 1
    world.clock.advance(2)
    assert world.active() == []


def test_call_failure_rate(world: AlarmWorld) -> None:
    world.rule({"kind": "call_failures", "rate": 0.5, "clear_rate": 0.2, "window": 100,
                "min_calls": 4})
    fake = world.connect()
    world.settle()
    device = done(world.store.get_device(fake.device_id))

    def ended(error: Exception | None) -> None:
        world.engine.call_result(device, "Sys.Get", None if error is None else
                                 _failure(error))
        world.settle()

    ended(None)
    ended(DeviceFailed("no", -1))
    ended(TimedOut("slow"))
    assert world.active() == []  # 3 calls: fewer than min_calls
    ended(None)
    [alarm] = world.active()
    assert alarm.details == {"calls": 4, "failed": 2, "rate": 0.5}
    ended(None)  # 2 of 5: above clear_rate
    assert len(world.active()) == 1
    world.clock.advance(101)  # the window passes: no calls, rate 0
    world.settle()
    assert world.active() == []


def _failure(error: Exception) -> Any:
    from twisted.python.failure import Failure

    return Failure(error)


def test_calls_made_through_the_fleet_are_counted(world: AlarmWorld) -> None:
    world.rule({"kind": "call_failures", "rate": 1.0, "window": 100, "min_calls": 2})
    fake = world.connect()
    world.settle()
    device = done(world.store.get_device(fake.device_id))
    for _ in range(2):
        d = world.fleet.call(device, "Sys.Get", None, 5)
        [call] = [c for c in fake.unanswered() if c["method"] == "Sys.Get"]
        fake.refuse(call, -32000, "broken")
        failure_of(d, DeviceFailed)
    world.settle()
    assert len(world.active()) == 1


def test_acknowledge_and_clear_by_hand(world: AlarmWorld) -> None:
    world.rule({"kind": "threshold", "key": "temp", "above": 30})
    fake = world.connect()
    world.report(fake, temp=31)
    [alarm] = world.active()
    acked = done(world.alarms.acknowledge(world.admin, alarm.id, "on my way"))
    assert acked.acknowledged is not None and acked.note == "on my way"
    assert world.admin.id in (acked.acknowledged_by or "")
    # Once only.
    again = done(world.alarms.acknowledge(world.admin, alarm.id, "twice"))
    assert again.note == "on my way"
    assert world.names().count("alarm.acknowledged") == 1
    cleared = done(world.alarms.clear(world.admin, alarm.id))
    assert cleared.state == "cleared" and cleared.acknowledged is not None
    assert [e.name for e in world.events if e.name.startswith("alarm.")] == [
        "alarm.raised", "alarm.acknowledged", "alarm.cleared"]
    failure_of(world.alarms.acknowledge(world.admin, "al-nope", None), NotFound)
    failure_of(world.alarms.acknowledge(world.admin, alarm.id, "x" * 2000), Invalid)


def test_bad_rules_refused(world: AlarmWorld) -> None:
    for body, field in [
        ({"name": "r", "severity": "major", "condition": {"kind": "nope"}}, "condition.kind"),
        ({"name": "r", "severity": "huge", "condition": {"kind": "ota_failed"}}, "severity"),
        ({"name": "r", "severity": "major", "condition": {"kind": "threshold", "key": "t"}},
         "condition"),
        ({"name": "r", "severity": "major",
          "condition": {"kind": "threshold", "key": "t", "above": 5, "clear": 9}},
         "condition.clear"),
        ({"name": "r", "severity": "major", "condition": {"kind": "log", "pattern": "("}},
         "condition.pattern"),
        ({"name": "r", "severity": "major", "where": "temp >",
          "condition": {"kind": "ota_failed"}}, "where"),
        ({"name": "r", "severity": "major", "condition": {"kind": "offline"}},
         "condition.seconds"),
    ]:
        error = failure_of(world.alarms.put_rule(world.admin, None, body), Invalid)
        assert error.field == field, (body, error.message)


def test_read_only_keys_may_not_change_rules(world: AlarmWorld) -> None:
    key, _ = done(world.app.keys.create(world.admin, "ro", "read-only"))
    failure_of(world.alarms.put_rule(key, None, {
        "name": "r", "severity": "major", "condition": {"kind": "ota_failed"}}), Forbidden)


def test_restart_neither_re_raises_nor_loses(tmp_path: Any) -> None:
    world = AlarmWorld(tmp_path)
    world.rule({"kind": "threshold", "key": "temp", "above": 30, "clear": 28})
    world.rule({"kind": "offline", "seconds": 100})
    fake = world.connect()
    world.report(fake, temp=31)
    device_id = fake.device_id
    assert len(world.active()) == 1
    world.engine.stop()
    # A new engine on the same store (dashd restarted).
    engine = AlarmEngine(world.fleet, world.alarm_store, world.clock)
    world.fleet.event_observers.remove(world.engine.device_event)
    world.fleet.connect_observers.remove(world.engine.device_connected)
    world.fleet.event_observers.append(engine.device_event)
    world.fleet.connect_observers.append(engine.device_connected)
    world.engine = engine
    done(engine.start())
    assert engine.active["major"] == 1
    world.report(fake, temp=33)
    assert len(world.active()) == 1 and len(world.every()) == 1
    world.report(fake, temp=27)
    assert world.active() == []
    # A device that went offline while dashd was down is found at start.
    fake.gone()
    world.settle()
    engine.stop()
    engine2 = AlarmEngine(world.fleet, world.alarm_store, world.clock)
    world.fleet.event_observers.remove(engine.device_event)
    world.fleet.event_observers.append(engine2.device_event)
    world.engine = engine2
    done(engine2.start())
    world.clock.advance(101)
    world.settle()
    [alarm] = world.active()
    assert alarm.device_id == device_id and "offline" in alarm.message
    engine2.stop()
    world.close()


def test_deleting_a_rule_clears_its_alarms(world: AlarmWorld) -> None:
    rule = world.rule({"kind": "threshold", "key": "temp", "above": 30})
    fake = world.connect()
    world.report(fake, temp=31)
    assert len(world.active()) == 1
    done(world.alarms.delete_rule(world.admin, rule.id))
    assert world.active() == []
    [alarm] = world.every()
    assert alarm.cleared_by == "rule deleted"
    world.report(fake, temp=40)
    assert world.active() == []


def test_listing_filters_and_pages(world: AlarmWorld) -> None:
    world.rule({"kind": "threshold", "key": "temp", "above": 30}, severity="minor")
    world.rule({"kind": "threshold", "key": "hum", "above": 90}, severity="critical")
    fakes = [world.connect() for _ in range(3)]
    for fake in fakes:
        world.report(fake, temp=31, hum=95)
    assert len(world.active()) == 6
    crit = done(world.alarms.list(world.admin, "active", "critical", None, None, 50, None))[0]
    assert len(crit) == 3 and {a.severity for a in crit} == {"critical"}
    mine = done(world.alarms.list(world.admin, None, None, fakes[0].device_id, None, 50,
                                  None))[0]
    assert {a.device_id for a in mine} == {fakes[0].device_id}
    page, cursor = done(world.alarms.list(world.admin, None, None, None, None, 4, None))
    assert len(page) == 4 and cursor is not None
    rest, end = done(world.alarms.list(world.admin, None, None, None, None, 4, cursor))
    assert len(rest) == 2 and end is None
    assert {a.id for a in page} | {a.id for a in rest} == {a.id for a in world.active()}
    counts = done(world.alarms.counts(world.admin))
    assert counts["critical"] == 3 and counts["minor"] == 3
    failure_of(world.alarms.list(world.admin, "open", None, None, None, 50, None), Invalid)
    failure_of(world.alarms.list(world.admin, None, "loud", None, None, 50, None), Invalid)


# The in-memory evaluation agrees with the stores'

QUERIES = [
    'shadow.tags.site = "berlin"', 'shadow.tags.site != "berlin"', "shadow.reported.temp > 20",
    'shadow.reported.temp >= 20 and name matches "dev-?"', 'shadow.tags.floor = "1"',
    'info.fw_version < "1.10.0"', 'info.fw_version >= "1.9"', "shadow.reported.on",
    "not shadow.reported.on", "shadow.reported.temp exists", 'name in ["dev-1", "dev-3"]',
    'shadow.tags.floor in [1, 2]', 'shadow.reported.mode matches "a*"', 'id > "d"',
    "online", "not online", 'shared_with = "nobody"', "shadow.version > 1",
    'shadow.reported.temp < "x"', "created > 0", "last_seen exists",
]


def test_evaluation_agrees_with_the_store(world: AlarmWorld) -> None:
    from dashd.domain import shadow

    specs = [
        {"tags": {"site": "berlin", "floor": 1}, "reported": {"temp": 25, "on": True,
                                                            "mode": "auto"}},
        {"tags": {"site": "paris", "floor": "1"}, "reported": {"temp": None, "on": False}},
        {"tags": {}, "reported": {"temp": 19.5, "mode": "manual"}},
        {"tags": {"site": "berlin"}, "reported": {"temp": "25"}},
    ]
    online = set()
    for i, spec in enumerate(specs):
        device, _ = world.register("dev-%d" % i)
        done(world.fleet.update_shadow(device.id, shadow.ShadowUpdate(
            patches={"tags": spec["tags"], "reported": spec["reported"]})))
        if i % 2 == 0:
            fake = world.connect(device, fw_id="1.%d.0" % (9 + i))
            online.add(fake.device_id)
    world.settle()
    devices = done(world.store.list_devices(world.admin.account_id))
    assert len(devices) == len(specs)
    sizes: list[int] = []
    for text in QUERIES:
        node = q.parse(text)
        selection = q.Selection(where=node, account_id=world.admin.account_id,
                                online=tuple(online))
        by_store = {d.id for d in done(world.store.select_devices(selection))}
        in_memory = {d.id for d in devices if evaluate(node, d, d.id in online)}
        assert in_memory == by_store, text
        sizes.append(len(by_store))
    # The queries tell the devices apart (neither all nor none, mostly).
    assert sum(1 for n in sizes if 0 < n < len(specs)) >= len(QUERIES) - 4, list(zip(QUERIES, sizes))


def test_a_stale_rule_made_after_the_device_connected(world: AlarmWorld) -> None:
    fake = world.connect()
    world.report(fake, temp=20)
    world.rule({"kind": "stale", "key": "temp", "seconds": 30})
    world.settle()
    world.clock.advance(31)
    world.settle()
    [alarm] = world.active()
    assert alarm.device_id == fake.device_id
