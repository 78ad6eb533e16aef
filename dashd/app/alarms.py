"""
Alarms: rules evaluated as events arrive (L{AlarmEngine}, a fleet
observer) and the use cases of the REST API and dashctl (L{Alarms}). The
records and conditions are L{dashd.domain.alarms}'.

How the engine works:

- It hears what the fleet publishes on this node (shadow reports, online
  and offline, firmware status, log lines) and the end of every call
  (C{fleet.call_result_observers}); in a cluster these happen on the node
  holding the device, so each device's rules are evaluated there, once.
- A rule covers a device while the device query matches it, evaluated in
  memory on the device's current record (L{dashd.domain.query_eval}): a
  device that starts matching is covered from its next event, and an
  active alarm of a device that stops matching is cleared.
- Per device it keeps what it knows (the record, which rules have an
  active alarm, pending timers), loaded from the store the first time the
  device is heard of (in batches) and dropped when the device goes away
  with nothing pending. Durations, staleness and offline times are timers
  on the clock it was given.
- What it decides for a (rule, device) is queued in order: a raise is a
  store insert the store refuses while an alarm is active (so a restart or
  another node never raises twice), a clear a compare-and-set. Only what
  changed the store is announced (C{alarm.raised}, C{alarm.cleared},
  C{alarm.acknowledged} notifications), audited and counted.
- At start (and when a rule is made) the devices an ``offline`` or
  ``stale`` rule covers that are offline are looked up once, so that a
  device that went away before a restart is still found out.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dashd.app.fleet import Fleet
from dashd.domain import access, query
from dashd.domain import alarms as a
from dashd.domain.alarms import Alarm, Rule
from dashd.domain.errors import Busy, DomainError, Forbidden, Invalid, NotFound, Offline
from dashd.domain.model import UNSET, ApiKey, Device
from dashd.domain.query_eval import evaluate
from dashd.domain.tokens import new_id
from dashd.store.alarms_sql import AlarmStore, OverLimit

log = Logger()

# Devices whose alarms are looked up in one store read.
LOAD_BATCH = 500
# Outcomes of calls kept per (rule, device) for call_failures.
MAX_CALL_OUTCOMES = 10000
MAX_PAGE = 500


@dataclass
class _Compiled:
    rule: Rule
    where: Any
    pattern: re.Pattern[str] | None = None


@dataclass
class _DeviceState:
    device: Device
    # Rule ID -> whether the engine wants its alarm active (what it decided;
    # the store follows in order through `ops`).
    want: dict[str, bool] = field(default_factory=dict)
    ops: dict[str, Deferred[Any]] = field(default_factory=dict)
    timers: dict[tuple[str, str], IDelayedCall] = field(default_factory=dict)
    since: dict[str, float] = field(default_factory=dict)
    calls: dict[str, deque[tuple[float, bool]]] = field(default_factory=dict)
    held: bool = False
    first_seen: float = 0.0


class AlarmEngine:
    def __init__(self, fleet: Fleet, store: AlarmStore, clock: IReactorTime,
                 audit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.fleet = fleet
        self.store = store
        self.clock = clock
        self._audit = audit
        self._rules: dict[str, _Compiled] = {}
        self._by_account: dict[str, list[_Compiled]] = {}
        self._devices: dict[str, _DeviceState] = {}
        # Devices being loaded: their events wait here, in order.
        self._loading: dict[str, list[Callable[[_DeviceState], None]]] = {}
        self._load_call: IDelayedCall | None = None
        self._pending: dict[str, Device | None] = {}
        # Active alarms by severity (all accounts; for metrics).
        self.active: dict[str, int] = {s: 0 for s in a.SEVERITIES}
        self.raised = 0
        self.cleared = 0
        self.started = False
        # Who else hears of alarms raised, cleared and acknowledged
        # (dashd.app.webhooks): (event name, rule, alarm).
        self.observers: list[Callable[[str, Rule | None, Alarm], None]] = []

    # Life cycle

    async def start(self) -> None:
        for rule in await self.store.list_rules():
            self._install(rule)
        self.active.update(await self.store.count_active())
        self.started = True
        for compiled in list(self._rules.values()):
            self._sweep(compiled)

    async def reload(self) -> None:
        """Take up what changed in the store (rules made, changed or deleted
        on another node) and the counts of active alarms."""
        rules = {r.id: r for r in await self.store.list_rules()}
        for rule_id in list(self._rules):
            if rule_id not in rules:
                self.rule_changed(None, rule_id)
        for rule in rules.values():
            known = self._rules.get(rule.id)
            if known is None or known.rule != rule:
                if known is not None and (known.rule.condition != rule.condition or
                                          known.rule.severity != rule.severity):
                    # As where it was changed: what the old one raised was
                    # cleared there, and the condition starts afresh.
                    self.rule_changed(None, rule.id)
                self.rule_changed(rule, rule.id)
        counts = {s: 0 for s in a.SEVERITIES}
        counts.update(await self.store.count_active())
        self.active.update(counts)

    def stop(self) -> None:
        self.started = False
        for state in self._devices.values():
            for timer in state.timers.values():
                if timer.active():
                    timer.cancel()
            state.timers.clear()
        if self._load_call is not None and self._load_call.active():
            self._load_call.cancel()

    # Rules

    def rule(self, rule_id: str) -> Rule | None:
        compiled = self._rules.get(rule_id)
        return compiled.rule if compiled is not None else None

    def rules(self) -> list[Rule]:
        return [c.rule for c in self._rules.values()]

    def _install(self, rule: Rule) -> _Compiled:
        self._uninstall(rule.id)
        where = query.parse(rule.where) if rule.where else None
        pattern = re.compile(rule.condition["pattern"]) if rule.kind == "log" else None
        compiled = _Compiled(rule, where, pattern)
        self._rules[rule.id] = compiled
        self._by_account.setdefault(rule.account_id, []).append(compiled)
        return compiled

    def _uninstall(self, rule_id: str) -> None:
        old = self._rules.pop(rule_id, None)
        if old is None:
            return
        rules = self._by_account.get(old.rule.account_id, [])
        rules[:] = [c for c in rules if c.rule.id != rule_id]
        for state in self._devices.values():
            for key in [k for k in state.timers if k[0] == rule_id]:
                timer = state.timers.pop(key)
                if timer.active():
                    timer.cancel()
            state.since.pop(rule_id, None)
            state.calls.pop(rule_id, None)

    def rule_changed(self, rule: Rule | None, rule_id: str) -> None:
        """A rule was made, changed (C{rule}) or deleted (None) here."""
        if rule is None:
            self._uninstall(rule_id)
            for state in self._devices.values():
                state.want.pop(rule_id, None)
            return
        compiled = self._install(rule)
        for state in self._devices.values():
            if not rule.enabled or not self._covers(compiled, state):
                if state.want.get(rule.id):
                    self._decide(state, compiled, False, {"reason": "the rule no longer "
                                                                    "covers the device"})
                continue
            if rule.kind == "stale" and not self._elsewhere(state.device.id):
                self._stale_check(state, compiled, state.device.shadow)
        self._sweep(compiled)

    def _elsewhere(self, device_id: str) -> bool:
        """Held by another node, which evaluates its rules."""
        return self.fleet.router.is_online(device_id) and \
            self.fleet.router.device(device_id) is None

    def _covers(self, compiled: _Compiled, state: _DeviceState) -> bool:
        rule, device = compiled.rule, state.device
        if not rule.enabled or not access.account_sees(rule.account_id, device):
            return False
        return evaluate(compiled.where, device, self.fleet.router.is_online(device.id))

    def _covering(self, state: _DeviceState, kind: str | None = None) -> list[_Compiled]:
        device = state.device
        out = []
        for account in (device.account_id,) + tuple(device.shared_with):
            for compiled in self._by_account.get(account, ()):
                if (kind is None or compiled.rule.kind == kind) and self._covers(compiled,
                                                                                 state):
                    out.append(compiled)
        return out

    def _sweep(self, compiled: _Compiled) -> None:
        """Offline and stale rules: find the covered devices that are offline
        (and, for stale, those held here), whose timers would otherwise start
        only when they are next heard of."""
        rule = compiled.rule
        if not rule.enabled or rule.kind not in ("offline", "stale") or not self.started:
            return
        selection = query.Selection(where=compiled.where, account_id=rule.account_id,
                                    online=tuple(self.fleet.router.online_ids())
                                    if query.uses_online(compiled.where) else None)
        d = self.fleet.store.select_devices(selection)

        def found(devices: list[Device]) -> None:
            for device in devices:
                if rule.kind == "offline" and self.fleet.router.is_online(device.id):
                    continue
                if rule.kind == "stale" and self._elsewhere(device.id):
                    continue  # held by another node, which looks after it
                self._with_device(device.id, lambda s, dev=device: self._swept(s, dev,
                                                                               compiled),
                                  device)

        d.addCallback(found)
        d.addErrback(lambda f: log.failure("alarm rule {rule}: looking up devices", f,
                                           rule=rule.id))

    def _swept(self, state: _DeviceState, device: Device, compiled: _Compiled) -> None:
        if self._rules.get(compiled.rule.id) is not compiled:
            return
        rule = compiled.rule
        if rule.kind == "offline" and not state.want.get(rule.id):
            since = device.last_seen if device.last_seen is not None else device.created
            self._timer(state, rule.id, "offline", since + rule.condition["seconds"],
                        lambda: self._offline_due(state.device.id, rule.id))
        elif rule.kind == "stale":
            self._stale_check(state, compiled, device.shadow)

    # Device state

    def _with_device(self, device_id: str, then: Callable[[_DeviceState], None],
                     device: Device | None = None) -> None:
        """Run C{then} with the device's state, loading it first if needed
        (events that come meanwhile wait, in order)."""
        state = self._devices.get(device_id)
        if state is not None:
            if device is not None and state.device is not device and not state.held:
                state.device = device
            then(state)
            return
        waiting = self._loading.get(device_id)
        if waiting is None:
            if device is None:
                # Held here: its connection's record (no store read).
                device = self.fleet.router.device(device_id)
            self._loading[device_id] = waiting = []
            self._pending[device_id] = device
            if self._load_call is None or not self._load_call.active():
                self._load_call = self.clock.callLater(0, self._load)
        waiting.append(then)

    def _load(self) -> None:
        self._load_call = None
        pending = self._pending
        batch = list(pending.items())[:LOAD_BATCH]
        for device_id, _ in batch:
            del pending[device_id]
        if pending:
            self._load_call = self.clock.callLater(0, self._load)
        ids = [device_id for device_id, _ in batch]
        d = self.store.active_for(ids)

        def loaded(alarms: list[Alarm]) -> Deferred[Any]:
            active: dict[str, list[Alarm]] = {}
            for alarm in alarms:
                active.setdefault(alarm.device_id, []).append(alarm)
            waits = []
            for device_id, device in batch:
                waits.append(self._ready(device_id, device, active.get(device_id, [])))
            return Deferred.fromCoroutine(_all(waits)) if waits else succeed(None)

        def failed(failure: Failure) -> None:
            log.failure("loading the alarms of {n} devices", failure, n=len(ids))
            for device_id in ids:
                self._loading.pop(device_id, None)

        d.addCallback(loaded).addErrback(failed)

    def _ready(self, device_id: str, device: Device | None, alarms: list[Alarm]
               ) -> Deferred[Any]:
        d = succeed(device) if device is not None else self.fleet.store.get_device(device_id)

        def got(device: Device | None) -> None:
            waiting = self._loading.pop(device_id, [])
            if device is None:
                return
            state = self._devices.get(device_id)
            if state is None:
                state = _DeviceState(device, first_seen=self.clock.seconds())
                for alarm in alarms:
                    state.want[alarm.rule_id] = True
                self._devices[device_id] = state
            for then in waiting:
                try:
                    then(state)
                except Exception:
                    log.failure("alarms of device {id}", id=device_id)
            self._maybe_forget(state)

        def failed(failure: Failure) -> None:
            # What waited is dropped with the device's load (next time anew).
            self._loading.pop(device_id, None)
            log.failure("reading device {id} for its alarm rules", failure, id=device_id)

        return d.addCallbacks(got, failed)

    def _maybe_forget(self, state: _DeviceState) -> None:
        """Drop what is kept of a device not held here with nothing pending."""
        if state.held or state.ops or any(t.active() for t in state.timers.values()):
            return
        if self.fleet.router.device(state.device.id) is not None:
            return  # held here (connected before a rule concerned it)
        if any(state.want.values()) and self.fleet.router.is_online(state.device.id):
            return
        if state.calls:
            return
        self._devices.pop(state.device.id, None)

    # Timers

    def _timer(self, state: _DeviceState, rule_id: str, what: str, at: float,
               then: Callable[[], None]) -> None:
        key = (rule_id, what)
        old = state.timers.pop(key, None)
        if old is not None and old.active():
            old.cancel()

        def fire() -> None:
            state.timers.pop(key, None)
            if not self.started:
                return
            try:
                then()
            except Exception:
                log.failure("alarm timer {what} of rule {rule}", what=what, rule=rule_id)

        state.timers[key] = self.clock.callLater(max(0.0, at - self.clock.seconds()), fire)

    def _cancel(self, state: _DeviceState, rule_id: str, what: str) -> None:
        timer = state.timers.pop((rule_id, what), None)
        if timer is not None and timer.active():
            timer.cancel()

    # What the fleet tells

    def device_connected(self, device: Device, pull: Any = None) -> None:
        if device.id not in self._devices and not self._concerns(device.account_id,
                                                                  device.shared_with):
            return

        def connected(state: _DeviceState) -> None:
            state.device = device
            state.held = True
            for compiled in self._covering(state, "stale"):
                self._stale_check(state, compiled, device.shadow)

        self._with_device(device.id, connected, device)

    def device_info(self, device: Device, info: dict[str, Any]) -> None:
        state = self._devices.get(device.id)
        if state is not None:
            state.device = replace(state.device, info=dict(info))

    def _concerns(self, account_id: str, shared_with: tuple[str, ...]) -> bool:
        """Whether any rule may cover a device of C{account_id}."""
        if self._by_account.get(account_id):
            return True
        return any(self._by_account.get(a) for a in shared_with)

    # The names of the events L{device_event} acts on.
    DEVICE_EVENTS = ("shadow.update", "online", "offline", "ota.status", "rpc.out.Log",
                     "device.deleted", "device.updated")

    def device_event(self, event: Any) -> None:
        if event.device_id not in self._devices and not self._concerns(
                event.account_id, event.shared_with):
            return
        name = event.name
        if name == "shadow.update":
            self._with_device(event.device_id, lambda s: self._shadow(s, event.data))
        elif name == "online":
            self._with_device(event.device_id, self._online)
        elif name == "offline":
            self._with_device(event.device_id, self._offline)
        elif name == "ota.status":
            self._with_device(event.device_id, lambda s: self._ota(s, event.data))
        elif name == "rpc.out.Log":
            self._with_device(event.device_id, lambda s: self._log(s, event.data))
        elif name == "device.deleted":
            state = self._devices.pop(event.device_id, None)
            if state is not None:
                for timer in state.timers.values():
                    if timer.active():
                        timer.cancel()
        elif name == "device.updated":
            state = self._devices.get(event.device_id)
            if state is not None:
                d = self.fleet.store.get_device(event.device_id)
                d.addCallback(lambda device: setattr(state, "device", device)
                              if device is not None else None)
                d.addErrback(lambda f: log.failure("re-reading device {id}", f,
                                                   id=event.device_id))

    def call_result(self, device: Device, method: str, failure: Failure | None) -> None:
        if failure is not None and failure.check(Offline):
            return  # the offline rules' business
        if not any(c.rule.kind == "call_failures"
                   for acct in (device.account_id,) + tuple(device.shared_with)
                   for c in self._by_account.get(acct, ())):
            return
        self._with_device(device.id, lambda s: self._calls(s, failure is not None), device)

    # Conditions

    def _shadow(self, state: _DeviceState, view: dict[str, Any]) -> None:
        state.device = replace(state.device, shadow=view)
        now = self.clock.seconds()
        for rule_id, wanted in list(state.want.items()):
            compiled = self._rules.get(rule_id)
            if wanted and compiled is not None and not self._covers(compiled, state):
                self._decide(state, compiled, False,
                             {"reason": "the rule no longer covers the device"})
        for compiled in self._covering(state):
            kind = compiled.rule.kind
            if kind == "threshold":
                self._threshold(state, compiled, view, now)
            elif kind == "stale":
                self._stale_check(state, compiled, view)

    def _threshold(self, state: _DeviceState, compiled: _Compiled, view: dict[str, Any],
                   now: float) -> None:
        rule, cond = compiled.rule, compiled.rule.condition
        value = a.reported_value(view, cond["key"])
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            if not state.want.get(rule.id):
                state.since.pop(rule.id, None)
                self._cancel(state, rule.id, "for")
            return
        above = "above" in cond
        limit = cond["above"] if above else cond["below"]
        beyond = value > limit if above else value < limit
        normal = value <= cond["clear"] if above else value >= cond["clear"]
        details = {"key": cond["key"], "value": value}
        if state.want.get(rule.id):
            if normal:
                self._decide(state, compiled, False, details)
            return
        if not beyond:
            state.since.pop(rule.id, None)
            self._cancel(state, rule.id, "for")
            return
        message = "%s is %s, %s %g" % (cond["key"], value, "above" if above else "below",
                                       limit)
        if cond["for"] <= 0:
            self._decide(state, compiled, True, details, message)
            return
        if rule.id in state.since:
            return  # the timer is running
        state.since[rule.id] = now

        def held() -> None:
            if state.since.pop(rule.id, None) is not None and self._rules.get(rule.id) is \
                    compiled:
                self._decide(state, compiled, True, details,
                             message + " for %g s" % cond["for"])

        self._timer(state, rule.id, "for", now + cond["for"], held)

    def _stale_check(self, state: _DeviceState, compiled: _Compiled,
                     document: dict[str, Any]) -> None:
        rule, cond = compiled.rule, compiled.rule.condition
        reported = a.reported_time(document, cond["key"])
        base = reported if reported is not None else state.first_seen
        due = base + cond["seconds"]
        now = self.clock.seconds()
        if due > now:
            if state.want.get(rule.id) and reported is not None:
                self._decide(state, compiled, False, {"key": cond["key"],
                                                      "reported": reported})
            self._timer(state, rule.id, "stale", due,
                        lambda: self._stale_due(state.device.id, rule.id))
            return
        if not state.want.get(rule.id):
            self._decide(state, compiled, True, {"key": cond["key"], "reported": reported},
                         "%s not reported for %g s" % (cond["key"], cond["seconds"]))

    def _stale_due(self, device_id: str, rule_id: str) -> None:
        """The key's time is up: read the device (a report of the same value
        is stored but not announced) and look again."""
        state = self._devices.get(device_id)
        compiled = self._rules.get(rule_id)
        if state is None or compiled is None:
            return
        d = self.fleet.store.get_device(device_id)

        def got(device: Device | None) -> None:
            if device is None or self._rules.get(rule_id) is not compiled:
                return
            if self._elsewhere(device_id):
                return  # that node's timer runs (and here one starts if it dies)
            state.device = replace(state.device, shadow=device.shadow)
            if self._covers(compiled, state):
                self._stale_check(state, compiled, device.shadow)

        d.addCallback(got).addErrback(
            lambda f: log.failure("reading device {id}", f, id=device_id))

    def _online(self, state: _DeviceState) -> None:
        state.held = state.held or self.fleet.router.device(state.device.id) is not None
        for compiled in self._covering(state, "offline"):
            self._cancel(state, compiled.rule.id, "offline")
            if state.want.get(compiled.rule.id):
                self._decide(state, compiled, False, {"reason": "online"})
        for rule_id in [k[0] for k in state.timers if k[1] == "offline"]:
            self._cancel(state, rule_id, "offline")

    def _offline(self, state: _DeviceState) -> None:
        state.held = False
        now = self.clock.seconds()
        for compiled in self._covering(state, "offline"):
            rule = compiled.rule
            if state.want.get(rule.id):
                continue
            self._timer(state, rule.id, "offline", now + rule.condition["seconds"],
                        lambda r=rule.id: self._offline_due(state.device.id, r))
        for compiled in self._covering(state, "stale"):
            # Said offline here for a node that died holding it: its stale
            # timers died with that node (those of a device held here run on).
            if (compiled.rule.id, "stale") not in state.timers and \
                    not state.want.get(compiled.rule.id):
                self._stale_check(state, compiled, state.device.shadow)
        for rule_id in list(state.since):
            self._cancel(state, rule_id, "for")
            state.since.pop(rule_id, None)
        self._maybe_forget(state)

    def _offline_due(self, device_id: str, rule_id: str) -> None:
        state = self._devices.get(device_id)
        compiled = self._rules.get(rule_id)
        if state is None or compiled is None or self.fleet.router.is_online(device_id):
            return
        if self._covers(compiled, state) and not state.want.get(rule_id):
            seconds = compiled.rule.condition["seconds"]
            self._decide(state, compiled, True, {"offline_for": seconds},
                         "offline for more than %g s" % seconds)
        self._maybe_forget(state)

    def _ota(self, state: _DeviceState, status: Any) -> None:
        if not isinstance(status, dict):
            return
        for compiled in self._covering(state, "ota_failed"):
            if status.get("state") == "failed":
                self._decide(state, compiled, True,
                             {"update": status.get("id"), "reason": status.get("reason")},
                             "firmware update failed: %s" % status.get("reason", "?"))
            elif status.get("state") == "committed" and state.want.get(compiled.rule.id):
                self._decide(state, compiled, False, {"update": status.get("id")})

    def _log(self, state: _DeviceState, params: Any) -> None:
        rules = self._covering(state, "log")
        if not rules:
            return
        text = a.log_text(params)
        for compiled in rules:
            assert compiled.pattern is not None
            if compiled.pattern.search(text) is None:
                continue
            rule = compiled.rule
            if not state.want.get(rule.id):
                self._decide(state, compiled, True, {"line": text[:1000]},
                             "log line matched: %s" % text[:200])
            after = rule.condition.get("clear_after")
            if after:
                self._timer(state, rule.id, "log", self.clock.seconds() + after,
                            lambda c=compiled: self._decide(state, c, False,
                                                            {"reason": "no matching line"})
                            if state.want.get(c.rule.id) else None)

    def _calls(self, state: _DeviceState, failed: bool) -> None:
        now = self.clock.seconds()
        for compiled in self._covering(state, "call_failures"):
            rule = compiled.rule
            outcomes = state.calls.setdefault(rule.id, deque(maxlen=MAX_CALL_OUTCOMES))
            outcomes.append((now, failed))
            self._call_rate(state, compiled)

    def _call_rate(self, state: _DeviceState, compiled: _Compiled) -> None:
        rule, cond = compiled.rule, compiled.rule.condition
        outcomes = state.calls.get(rule.id)
        if outcomes is None:
            return
        now = self.clock.seconds()
        while outcomes and outcomes[0][0] <= now - cond["window"]:
            outcomes.popleft()
        total = len(outcomes)
        failures = sum(1 for _, f in outcomes if f)
        rate = failures / total if total else 0.0
        details = {"calls": total, "failed": failures, "rate": round(rate, 4)}
        if state.want.get(rule.id):
            if rate < cond["clear_rate"] or (total == 0 and cond["clear_rate"] == 0):
                self._decide(state, compiled, False, details)
        elif total >= cond["min_calls"] and rate >= cond["rate"]:
            self._decide(state, compiled, True, details,
                         "%d of %d calls failed in %g s" % (failures, total, cond["window"]))
        if outcomes:
            # Look again when the oldest leaves the window.
            self._timer(state, rule.id, "calls", outcomes[0][0] + cond["window"],
                        lambda: self._call_rate(state, compiled))
        else:
            del state.calls[rule.id]

    # Raising and clearing, in order per (rule, device)

    def _decide(self, state: _DeviceState, compiled: _Compiled, active: bool,
                details: dict[str, Any], message: str = "") -> None:
        rule = compiled.rule
        if bool(state.want.get(rule.id)) == active:
            return
        state.want[rule.id] = active
        device = state.device
        if active:
            alarm = Alarm(id=new_id("al"), rule_id=rule.id, device_id=device.id,
                          account_id=rule.account_id, severity=rule.severity, state="active",
                          raised=self.clock.seconds(), message=message, details=details)

            def op() -> Deferred[Any]:
                return self.store.raise_alarm(alarm).addCallback(self._raised, state, rule)
        else:
            def op() -> Deferred[Any]:
                d = self.store.clear_alarm(rule.id, device.id, self.clock.seconds(),
                                           "condition", details)
                return d.addCallback(self._cleared, state, rule)

        self._queue(state, rule.id, op)

    def _queue(self, state: _DeviceState, rule_id: str, op: Callable[[], Deferred[Any]]
               ) -> None:
        before = state.ops.get(rule_id)
        d: Deferred[Any] = Deferred()
        if before is None:
            d.callback(None)
        else:
            before.addBoth(lambda _: d.callback(None))
        d.addCallback(lambda _: op())

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                log.failure("alarm of rule {rule} on device {id}", result, rule=rule_id,
                            id=state.device.id)
            if state.ops.get(rule_id) is d:
                del state.ops[rule_id]
                self._maybe_forget(state)

        state.ops[rule_id] = d
        d.addBoth(done)

    def _raised(self, outcome: tuple[Alarm, bool], state: _DeviceState, rule: Rule) -> None:
        alarm, created = outcome
        if created:
            self.raised += 1
            self.count(alarm, +1)
            self.announce("alarm.raised", state.device, rule, alarm)

    def _cleared(self, alarm: Alarm | None, state: _DeviceState, rule: Rule | None) -> None:
        if alarm is not None:
            self.cleared += 1
            self.count(alarm, -1)
            self.announce("alarm.cleared", state.device, rule, alarm)

    def count(self, alarm: Alarm, step: int) -> None:
        self.active[alarm.severity] = max(0, self.active.get(alarm.severity, 0) + step)

    def announce(self, name: str, device: Device, rule: Rule | None, alarm: Alarm,
                 key: ApiKey | None = None) -> None:
        view = a.alarm_view(alarm)
        if rule is not None:
            view["rule"] = rule.name
        self.fleet.publish(device, name, view)
        for observer in self.observers:
            try:
                observer(name, rule, alarm)
            except Exception:
                log.failure("alarm observer {observer}", observer=observer)
        if self._audit is not None and key is None:
            # What a person did is in the audit log as their request.
            self._audit({"t": self.clock.seconds(), "account_id": alarm.account_id,
                         "key_id": "alarms", "method": "ALARM",
                         "path": "%s %s (%s)" % (name, alarm.id, rule.name if rule else
                                                 alarm.rule_id),
                         "device_id": alarm.device_id, "status": 200, "error": None})

    def forget(self, alarm: Alarm) -> None:
        """An alarm was cleared by hand: the condition is looked at afresh."""
        self.forget_ids(alarm.rule_id, alarm.device_id)

    def forget_ids(self, rule_id: str, device_id: str) -> None:
        """L{forget} by IDs (an alarm cleared by hand on another node)."""
        state = self._devices.get(device_id)
        if state is not None:
            state.want.pop(rule_id, None)
            state.since.pop(rule_id, None)


async def _all(waits: list[Deferred[Any]]) -> None:
    for d in waits:
        await d


class Alarms:
    """The use cases: rules CRUD, alarms listed, acknowledged, cleared."""

    def __init__(self, fleet: Fleet, devices: Any, engine: AlarmEngine | None,
                 store: AlarmStore, max_rules: int = a.MAX_RULES_PER_ACCOUNT) -> None:
        self._fleet = fleet
        self._devices = devices
        self._engine = engine
        self._store = store
        self._max_rules = max_rules
        # Told when rules changed here (in a cluster, the other nodes hear
        # of it: dashd.assembly), and when an alarm was cleared by hand
        # (alarm): the node evaluating its device looks at it afresh.
        self.changed: Callable[[Alarm | None], None] | None = None

    @property
    def engine(self) -> AlarmEngine | None:
        return self._engine

    # Rules

    def _may_manage(self, by: ApiKey) -> None:
        access.require_admin(by, "manage alarm rules")

    async def _own_rule(self, by: ApiKey, rule_id: str) -> Rule:
        rule = await self._store.get_rule(rule_id)
        if rule is None or not (access.is_console(by) or rule.account_id == by.account_id):
            raise NotFound("no such alarm rule: %s" % rule_id)
        return rule

    async def list_rules(self, by: ApiKey) -> list[Rule]:
        if by.kind == access.RESTRICTED:
            raise Forbidden("restricted keys may not read alarm rules")
        return await self._store.list_rules(None if access.is_console(by) else by.account_id)

    async def get_rule(self, by: ApiKey, rule_id: str) -> Rule:
        if by.kind == access.RESTRICTED:
            raise Forbidden("restricted keys may not read alarm rules")
        return await self._own_rule(by, rule_id)

    async def put_rule(self, by: ApiKey, rule_id: str | None, body: dict[str, Any],
                       account_id: Any = UNSET) -> Rule:
        """Create (C{rule_id} None) or change a rule from what the client
        sent (a change takes only the fields given)."""
        self._may_manage(by)
        if account_id is not UNSET:
            if not isinstance(account_id, str) or not account_id:
                raise Invalid("account_id must be an account ID", "account_id")
            if not access.is_console(by) and account_id != by.account_id:
                raise Forbidden("only dashctl makes rules for other accounts")
        now = self._fleet.now()
        old = await self._own_rule(by, rule_id) if rule_id is not None else None
        if old is None:
            for required in ("name", "condition", "severity"):
                if required not in body:
                    raise Invalid("%s is required" % required, required)
        name = a.parse_name(body["name"]) if "name" in body else old.name  # type: ignore
        where = a.parse_where(body["where"])[0] if "where" in body else (
            old.where if old else None)
        condition = a.parse_condition(body["condition"]) if "condition" in body else \
            old.condition  # type: ignore[union-attr]
        severity = a.parse_severity(body["severity"]) if "severity" in body else \
            old.severity  # type: ignore[union-attr]
        enabled = body.get("enabled", old.enabled if old else True)
        if not isinstance(enabled, bool):
            raise Invalid("enabled must be true or false", "enabled")
        webhooks = a.parse_webhooks(body["webhooks"]) if "webhooks" in body else (
            old.webhooks if old else ())
        owner = old.account_id if old else (by.account_id if account_id is UNSET or not
                                            access.is_console(by) else account_id)
        for hook_id in webhooks:
            hook = await self._store.get_webhook(hook_id)
            if hook is None or hook["account_id"] != owner:
                raise Invalid("no such webhook: %s" % hook_id, "webhooks")
        if where is not None:
            query.check_access(query.parse(where), False)
        rule = Rule(id=old.id if old else new_id("ar"), account_id=owner, name=name,
                    where=where, condition=condition, severity=severity, enabled=enabled,
                    webhooks=webhooks, created=old.created if old else now, updated=now)
        try:
            await self._store.put_rule(rule, self._max_rules)
        except OverLimit as e:
            raise Busy(str(e)) from None
        if self._engine is not None:
            if old is not None and (old.condition != rule.condition or
                                    old.severity != rule.severity):
                # A changed condition starts afresh: what the old one raised is cleared.
                for alarm in await self._store.active_of_rule(rule.id):
                    cleared = await self._store.clear_alarm(rule.id, alarm.device_id, now,
                                                            "rule changed")
                    if cleared is not None:
                        await self._announce_change("alarm.cleared", cleared, rule, None)
                self._engine.rule_changed(None, rule.id)
            self._engine.rule_changed(rule, rule.id)
        self._tell(None)
        return rule

    def _tell(self, alarm: Alarm | None) -> None:
        if self.changed is not None:
            try:
                self.changed(alarm)
            except Exception:
                log.failure("telling the cluster of an alarm change")

    async def delete_rule(self, by: ApiKey, rule_id: str) -> None:
        self._may_manage(by)
        rule = await self._own_rule(by, rule_id)
        cleared = await self._store.delete_rule(rule_id, self._fleet.now(), "rule deleted")
        if self._engine is not None:
            self._engine.rule_changed(None, rule_id)
        self._tell(None)
        for alarm in cleared:
            await self._announce_change("alarm.cleared", alarm, rule, None)

    # Alarms

    async def list(self, by: ApiKey, state: str | None, severity: str | None,
                   device_id: str | None, acknowledged: bool | None, limit: int,
                   cursor: str | None) -> tuple[list[Alarm], str | None]:
        if device_id is not None and not device_id:
            raise Invalid("device must be a device ID", "device")
        if state is not None and state not in a.STATES:
            raise Invalid("state must be one of %s" % ", ".join(a.STATES), "state")
        severities = None
        if severity is not None:
            severities = tuple(a.parse_severity(s.strip()) for s in severity.split(","))
        if not 1 <= limit <= MAX_PAGE:
            raise Invalid("limit must be 1 to %d" % MAX_PAGE, "limit")
        before = None
        if cursor is not None:
            if not cursor.isdigit():
                raise Invalid("cursor is not one this API gave", "cursor")
            before = int(cursor)
        devices = None
        account: str | None = by.account_id
        if access.is_console(by):
            account = None
        elif by.kind == access.RESTRICTED:
            devices = list((by.scope or {}).get("devices", {}))
        found, following = await self._store.list_alarms(
            account, devices, state, severities, device_id, acknowledged, limit, before)
        return found, (str(following) if following is not None else None)

    async def rule_names(self, by: ApiKey) -> dict[str, str]:
        """The names of the rules whose alarms C{by} sees (by rule ID)."""
        if self._engine is not None:
            return {r.id: r.name for r in self._engine.rules()
                    if access.is_console(by) or r.account_id == by.account_id}
        rules = await self._store.list_rules(None if access.is_console(by) else by.account_id)
        return {r.id: r.name for r in rules}

    async def _visible_alarm(self, by: ApiKey, alarm_id: str) -> tuple[Alarm, Device]:
        alarm = await self._store.get_alarm(alarm_id)
        if alarm is None or not (access.is_console(by) or alarm.account_id == by.account_id):
            raise NotFound("no such alarm: %s" % alarm_id)
        try:
            device = await self._devices.visible(by, alarm.device_id)
        except NotFound:
            raise NotFound("no such alarm: %s" % alarm_id) from None
        return alarm, device

    async def get(self, by: ApiKey, alarm_id: str) -> Alarm:
        return (await self._visible_alarm(by, alarm_id))[0]

    async def acknowledge(self, by: ApiKey, alarm_id: str, note: Any = UNSET) -> Alarm:
        if by.kind == access.READ_ONLY:
            raise Forbidden("read-only keys may not acknowledge alarms")
        note_text = a.parse_note(None if note is UNSET else note)
        await self._visible_alarm(by, alarm_id)
        alarm, changed = await self._store.acknowledge(alarm_id, self._fleet.now(),
                                                       _who(by), note_text)
        if alarm is None:
            raise NotFound("no such alarm: %s" % alarm_id)
        if changed:
            await self._announce_change("alarm.acknowledged", alarm, None, by)
        return alarm

    async def clear(self, by: ApiKey, alarm_id: str) -> Alarm:
        if by.kind == access.READ_ONLY:
            raise Forbidden("read-only keys may not clear alarms")
        await self._visible_alarm(by, alarm_id)
        alarm, changed = await self._store.clear_by_id(alarm_id, self._fleet.now(), _who(by))
        if alarm is None:
            raise NotFound("no such alarm: %s" % alarm_id)
        if changed:
            if self._engine is not None:
                self._engine.forget(alarm)
            self._tell(alarm)
            await self._announce_change("alarm.cleared", alarm, None, by)
        return alarm

    async def counts(self, by: ApiKey) -> dict[str, int]:
        """Active alarms by severity that C{by} sees."""
        counts = {s: 0 for s in a.SEVERITIES}
        if by.kind == access.RESTRICTED:
            found, _ = await self._store.list_alarms(
                by.account_id, list((by.scope or {}).get("devices", {})), "active", None,
                None, None, MAX_PAGE, None)
            for alarm in found:
                counts[alarm.severity] += 1
            return counts
        counts.update(await self._store.count_active(
            None if access.is_console(by) else by.account_id))
        return counts

    async def _announce_change(self, name: str, alarm: Alarm, rule: Rule | None,
                               by: ApiKey | None) -> None:
        if rule is None:
            rule = self._engine.rule(alarm.rule_id) if self._engine is not None else None
            if rule is None:
                rule = await self._store.get_rule(alarm.rule_id)
        device = await self._fleet.store.get_device(alarm.device_id)
        if device is None:
            return
        if self._engine is not None:
            if name == "alarm.cleared":
                self._engine.cleared += 1
                self._engine.count(alarm, -1)
            self._engine.announce(name, device, rule, alarm, by)
        else:
            view = a.alarm_view(alarm)
            self._fleet.publish(device, name, view)


def _who(by: ApiKey) -> str:
    return "console" if access.is_console(by) else "%s (%s)" % (by.name, by.id)


__all__ = ["AlarmEngine", "Alarms", "DomainError"]
