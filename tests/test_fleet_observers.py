"""
Fleet event observers by name (L{Fleet.observe_events}): each observer is
told only of the events it acts on, so that a device's shadow report, the
most frequent event, is not offered to the five observers that ignore it.
"""

from __future__ import annotations

from twisted.internet import task

from dashd.app import fleet as fleet_module
from dashd.app.fleet import Fleet
from dashd.config import Config
from dashd.domain.events import Event


class _Hub:
    def __init__(self):
        self.events = []

    def publish(self, event):
        self.events.append(event)


def _fleet():
    return Fleet(None, None, _Hub(), task.Clock(), Config({}))


def test_an_observer_is_told_only_of_the_names_it_wants_in_the_order_added():
    fleet = _fleet()
    told = []
    fleet.event_observers.append(lambda e: told.append(("all", e.name)))
    fleet.observe_events(lambda e: told.append(("a", e.name)), ("online", "offline"))
    fleet.observe_events(lambda e: told.append(("b", e.name)), ("online",),
                         accepts=lambda name: name.startswith("rpc.out."))
    for name in ("online", "shadow.update", "rpc.out.Log", "offline"):
        fleet._publish(Event(name, "d1", None, "acct", ()))
    assert told == [("all", "online"), ("a", "online"), ("b", "online"),
                    ("all", "shadow.update"),
                    ("all", "rpc.out.Log"), ("b", "rpc.out.Log"),
                    ("all", "offline"), ("a", "offline")]
    # One added later is told of names already published.
    fleet.observe_events(lambda e: told.append(("c", e.name)), ("online",))
    told.clear()
    fleet._publish(Event("online", "d1", None, "acct", ()))
    assert told == [("all", "online"), ("a", "online"), ("b", "online"), ("c", "online")]


def test_an_observer_that_raises_does_not_keep_the_others_from_the_event():
    fleet = _fleet()
    told = []

    def bad(event):
        raise RuntimeError("observer bug")

    fleet.observe_events(bad, ("online",))
    fleet.observe_events(told.append, ("online",))
    fleet._publish(Event("online", "d1", None, "acct", ()))
    assert [e.name for e in told] == ["online"]


def test_names_a_device_makes_up_are_not_all_remembered(monkeypatch):
    monkeypatch.setattr(fleet_module, "MAX_EVENT_NAMES", 10)
    fleet = _fleet()
    told = []
    fleet.observe_events(told.append, accepts=lambda name: name.startswith("rpc.out."))
    for i in range(50):
        fleet._publish(Event("rpc.out.M%d" % i, "d1", None, "acct", ()))
    assert len(told) == 50
    assert len(fleet._by_name) == 10


def test_a_shadow_report_is_offered_only_to_the_alarms_and_the_jobs(tmp_path):
    from dashd.assembly import build

    config = Config({"data_dir": str(tmp_path), "listen": ["tcp:0:interface=127.0.0.1"]})
    service = build(config, task.Clock())
    fleet = service.parts.fleet
    names = {name: sorted(type(o.__self__).__name__ for o in fleet._observers_of(name))
             for name in ("shadow.update", "online", "offline", "rpc.out.OTAState",
                          "rpc.out.DB.NewData", "rpc.out.Log", "ota.status", "job.state")}
    assert fleet.event_observers == []
    assert names == {
        "shadow.update": ["AlarmEngine", "JobRunner"],
        "online": ["AlarmEngine", "History", "JobRunner", "OtaManager", "WebhookDispatcher"],
        "offline": ["AlarmEngine", "CallDelivery", "History", "WebhookDispatcher"],
        "rpc.out.OTAState": ["History", "OtaManager"],
        "rpc.out.DB.NewData": ["DataPuller", "History"],
        "rpc.out.Log": ["AlarmEngine", "History"],
        "ota.status": ["AlarmEngine", "History", "WebhookDispatcher"],
        "job.state": ["JobRunner"],
    }
