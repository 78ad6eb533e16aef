"""
The store jobs of alarm rules, alarms and webhook endpoints, one
implementation for SQLite and PostgreSQL over L{calls_sql.Db}. Schema:
``migrations/0009_alarms.sql`` and ``migrations_pg/0007_alarms.sql``.

Each store has one entry point, C{alarms_job(job, *args, read=False)};
L{AlarmStore} gives the jobs their names and types for the application.

Raising is an insert that the partial unique index on active alarms
refuses when the (rule, device) has one already: an alarm is raised once,
whichever node (or restarted dashd) raises it. Clearing and acknowledging
are compare-and-sets on the state.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from dashd.domain.alarms import Alarm, Rule
from dashd.store.calls_sql import Db

_RULE = "id, account_id, name, query, condition, severity, enabled, webhooks, created, updated"
_ALARM = ("seq, id, rule_id, device_id, account_id, severity, state, raised, message, details,"
          " cleared, cleared_by, acknowledged, acknowledged_by, note")
_HOOK = "id, account_id, name, url, events, secret, enabled, created, updated"


def _rule(db: Db, row: Any) -> Rule:
    return Rule(id=row[0], account_id=row[1], name=row[2], where=row[3],
                condition=db.load(row[4]), severity=row[5], enabled=bool(row[6]),
                webhooks=tuple(db.load(row[7]) or ()), created=row[8], updated=row[9])


def _alarm(db: Db, row: Any) -> Alarm:
    return Alarm(seq=row[0], id=row[1], rule_id=row[2], device_id=row[3], account_id=row[4],
                 severity=row[5], state=row[6], raised=row[7], message=row[8],
                 details=db.load(row[9]) or {}, cleared=row[10], cleared_by=row[11],
                 acknowledged=row[12], acknowledged_by=row[13], note=row[14])


def _hook(db: Db, row: Any) -> dict[str, Any]:
    return {"id": row[0], "account_id": row[1], "name": row[2], "url": row[3],
            "events": list(db.load(row[4]) or ()), "secret": row[5], "enabled": bool(row[6]),
            "created": row[7], "updated": row[8]}


# Rules


def put_rule(db: Db, rule: Rule, limit: int) -> Rule:
    """Create or replace C{rule}; refuse a new one beyond C{limit} rules of
    its account (L{OverLimit})."""
    exists = db.one("SELECT 1 FROM alarm_rules WHERE id = ?", (rule.id,))
    params = (rule.account_id, rule.name, rule.where, db.json(rule.condition), rule.severity,
              bool(rule.enabled), db.json(list(rule.webhooks)), rule.updated)
    if exists:
        db.execute("UPDATE alarm_rules SET account_id = ?, name = ?, query = ?, condition = ?,"
                   " severity = ?, enabled = ?, webhooks = ?, updated = ? WHERE id = ?",
                   params + (rule.id,))
    else:
        count = db.one("SELECT count(*) FROM alarm_rules WHERE account_id = ?",
                       (rule.account_id,))[0]
        if count >= limit:
            raise OverLimit("an account has at most %d alarm rules" % limit)
        db.execute("INSERT INTO alarm_rules (account_id, name, query, condition, severity,"
                   " enabled, webhooks, updated, id, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?,"
                   " ?, ?)", params + (rule.id, rule.created))
    return rule


def get_rule(db: Db, rule_id: str) -> Rule | None:
    row = db.one("SELECT %s FROM alarm_rules WHERE id = ?" % _RULE, (rule_id,))
    return _rule(db, row) if row else None


def list_rules(db: Db, account_id: str | None) -> list[Rule]:
    if account_id is None:
        rows = db.all("SELECT %s FROM alarm_rules ORDER BY created, id" % _RULE)
    else:
        rows = db.all("SELECT %s FROM alarm_rules WHERE account_id = ? ORDER BY created, id"
                      % _RULE, (account_id,))
    return [_rule(db, r) for r in rows]


def delete_rule(db: Db, rule_id: str, now: float, by: str) -> list[Alarm]:
    """Delete the rule; its active alarms are cleared (and returned)."""
    cleared = _clear_where(db, "rule_id = ? AND state = 'active'", (rule_id,), now, by)
    db.execute("DELETE FROM alarm_rules WHERE id = ?", (rule_id,))
    return cleared


# Alarms


def raise_alarm(db: Db, alarm: Alarm) -> tuple[Alarm, bool]:
    """Insert C{alarm} unless its (rule, device) has an active one: fire
    with the active alarm and whether it is this one."""
    cur = db.execute(
        "INSERT INTO alarms (id, rule_id, device_id, account_id, severity, state, raised,"
        " message, details) SELECT ?, ?, ?, ?, ?, 'active', ?, ?, ?"
        " WHERE EXISTS (SELECT 1 FROM devices WHERE id = ?)"
        " ON CONFLICT (rule_id, device_id) WHERE state = 'active' DO NOTHING",
        (alarm.id, alarm.rule_id, alarm.device_id, alarm.account_id, alarm.severity,
         alarm.raised, alarm.message, db.json(alarm.details), alarm.device_id))
    created = cur.rowcount == 1
    row = db.one("SELECT %s FROM alarms WHERE rule_id = ? AND device_id = ? AND state ="
                 " 'active'" % _ALARM, (alarm.rule_id, alarm.device_id))
    if row is None:  # the device is gone
        return alarm, False
    return _alarm(db, row), created


def _clear_where(db: Db, where: str, params: tuple[Any, ...], now: float, by: str,
                 details: dict[str, Any] | None = None) -> list[Alarm]:
    rows = db.all("SELECT %s FROM alarms WHERE %s%s" % (_ALARM, where, db.lock), params)
    out = []
    for row in rows:
        alarm = _alarm(db, row)
        merged = dict(alarm.details)
        if details:
            merged.update(details)
        db.execute("UPDATE alarms SET state = 'cleared', cleared = ?, cleared_by = ?,"
                   " details = ? WHERE seq = ? AND state = 'active'",
                   (now, by, db.json(merged), alarm.seq))
        out.append(_alarm(db, db.one("SELECT %s FROM alarms WHERE seq = ?" % _ALARM,
                                     (alarm.seq,))))
    return out


def clear_alarm(db: Db, rule_id: str, device_id: str, now: float, by: str,
                details: dict[str, Any] | None) -> Alarm | None:
    """Clear the (rule, device)'s active alarm; None if it had none."""
    cleared = _clear_where(db, "rule_id = ? AND device_id = ? AND state = 'active'",
                           (rule_id, device_id), now, by, details)
    return cleared[0] if cleared else None


def clear_by_id(db: Db, alarm_id: str, now: float, by: str) -> tuple[Alarm | None, bool]:
    """Clear an alarm by hand: (the alarm, whether this cleared it)."""
    cleared = _clear_where(db, "id = ? AND state = 'active'", (alarm_id,), now, by)
    if cleared:
        return cleared[0], True
    return get_alarm(db, alarm_id), False


def acknowledge(db: Db, alarm_id: str, now: float, by: str,
                note: str | None) -> tuple[Alarm | None, bool]:
    """Acknowledge an alarm once: (the alarm, whether this acknowledged it)."""
    cur = db.execute("UPDATE alarms SET acknowledged = ?, acknowledged_by = ?, note = ?"
                     " WHERE id = ? AND acknowledged IS NULL", (now, by, note, alarm_id))
    changed = cur.rowcount == 1  # (read before the cursor runs another query)
    return get_alarm(db, alarm_id), changed


def get_alarm(db: Db, alarm_id: str) -> Alarm | None:
    row = db.one("SELECT %s FROM alarms WHERE id = ?" % _ALARM, (alarm_id,))
    return _alarm(db, row) if row else None


def active_for(db: Db, device_ids: list[str]) -> list[Alarm]:
    """The active alarms of the devices."""
    if not device_ids:
        return []
    marks = ", ".join("?" for _ in device_ids)
    rows = db.all("SELECT %s FROM alarms WHERE state = 'active' AND device_id IN (%s)"
                  " ORDER BY seq" % (_ALARM, marks), tuple(device_ids))
    return [_alarm(db, r) for r in rows]


def active_of_rule(db: Db, rule_id: str) -> list[Alarm]:
    rows = db.all("SELECT %s FROM alarms WHERE state = 'active' AND rule_id = ? ORDER BY seq"
                  % _ALARM, (rule_id,))
    return [_alarm(db, r) for r in rows]


def list_alarms(db: Db, account_id: str | None, devices: list[str] | None,
                state: str | None, severities: tuple[str, ...] | None,
                device_id: str | None, acknowledged: bool | None, limit: int,
                before: int | None) -> tuple[list[Alarm], int | None]:
    """Newest first; C{devices}: only of these (a restricted key's); the
    next page's cursor (a seq) or None."""
    where, params = ["1 = 1"], []
    if account_id is not None:
        where.append("account_id = ?")
        params.append(account_id)
    if devices is not None:
        if not devices:
            return [], None
        where.append("device_id IN (%s)" % ", ".join("?" for _ in devices))
        params.extend(devices)
    if state is not None:
        where.append("state = ?")
        params.append(state)
    if severities:
        where.append("severity IN (%s)" % ", ".join("?" for _ in severities))
        params.extend(severities)
    if device_id is not None:
        where.append("device_id = ?")
        params.append(device_id)
    if acknowledged is not None:
        where.append("acknowledged IS NOT NULL" if acknowledged else "acknowledged IS NULL")
    if before is not None:
        where.append("seq < ?")
        params.append(before)
    rows = db.all("SELECT %s FROM alarms WHERE %s ORDER BY seq DESC LIMIT %d"
                  % (_ALARM, " AND ".join(where), limit + 1), tuple(params))
    found = [_alarm(db, r) for r in rows[:limit]]
    following = found[-1].seq if len(rows) > limit else None
    return found, following


def count_active(db: Db, account_id: str | None = None) -> dict[str, int]:
    """Active alarms by severity (of an account, or all)."""
    if account_id is None:
        rows = db.all("SELECT severity, count(*) FROM alarms WHERE state = 'active'"
                      " GROUP BY severity")
    else:
        rows = db.all("SELECT severity, count(*) FROM alarms WHERE state = 'active' AND"
                      " account_id = ? GROUP BY severity", (account_id,))
    return {r[0]: int(r[1]) for r in rows}


# Webhook endpoints


def put_webhook(db: Db, hook: dict[str, Any], limit: int) -> dict[str, Any]:
    exists = db.one("SELECT 1 FROM webhooks WHERE id = ?", (hook["id"],))
    params = (hook["name"], hook["url"], db.json(hook["events"]), hook["secret"],
              bool(hook["enabled"]), hook["updated"])
    if exists:
        db.execute("UPDATE webhooks SET name = ?, url = ?, events = ?, secret = ?,"
                   " enabled = ?, updated = ? WHERE id = ?", params + (hook["id"],))
    else:
        count = db.one("SELECT count(*) FROM webhooks WHERE account_id = ?",
                       (hook["account_id"],))[0]
        if count >= limit:
            raise OverLimit("an account has at most %d webhooks" % limit)
        db.execute("INSERT INTO webhooks (name, url, events, secret, enabled, updated, id,"
                   " account_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   params + (hook["id"], hook["account_id"], hook["created"]))
    return hook


def get_webhook(db: Db, hook_id: str) -> dict[str, Any] | None:
    row = db.one("SELECT %s FROM webhooks WHERE id = ?" % _HOOK, (hook_id,))
    return _hook(db, row) if row else None


def list_webhooks(db: Db, account_id: str | None) -> list[dict[str, Any]]:
    if account_id is None:
        rows = db.all("SELECT %s FROM webhooks ORDER BY created, id" % _HOOK)
    else:
        rows = db.all("SELECT %s FROM webhooks WHERE account_id = ? ORDER BY created, id"
                      % _HOOK, (account_id,))
    return [_hook(db, r) for r in rows]


def delete_webhook(db: Db, hook_id: str) -> bool:
    return db.execute("DELETE FROM webhooks WHERE id = ?", (hook_id,)).rowcount == 1


class OverLimit(Exception):
    """Turned into the domain's Busy by L{AlarmStore}'s callers."""


class AlarmStore:
    """The jobs above as methods, on a store with C{alarms_job}."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def _run(self, job: Any, *args: Any, read: bool = False) -> Deferred[Any]:
        return self._store.alarms_job(job, *args, read=read)  # type: ignore[no-any-return]

    def put_rule(self, rule: Rule, limit: int) -> Deferred[Rule]:
        return self._run(put_rule, rule, limit)

    def get_rule(self, rule_id: str) -> Deferred[Rule | None]:
        return self._run(get_rule, rule_id, read=True)

    def list_rules(self, account_id: str | None = None) -> Deferred[list[Rule]]:
        return self._run(list_rules, account_id, read=True)

    def delete_rule(self, rule_id: str, now: float, by: str) -> Deferred[list[Alarm]]:
        return self._run(delete_rule, rule_id, now, by)

    def raise_alarm(self, alarm: Alarm) -> Deferred[tuple[Alarm, bool]]:
        return self._run(raise_alarm, alarm)

    def clear_alarm(self, rule_id: str, device_id: str, now: float, by: str,
                    details: dict[str, Any] | None = None) -> Deferred[Alarm | None]:
        return self._run(clear_alarm, rule_id, device_id, now, by, details)

    def clear_by_id(self, alarm_id: str, now: float, by: str) -> Deferred[Any]:
        return self._run(clear_by_id, alarm_id, now, by)

    def acknowledge(self, alarm_id: str, now: float, by: str, note: str | None
                    ) -> Deferred[Any]:
        return self._run(acknowledge, alarm_id, now, by, note)

    def get_alarm(self, alarm_id: str) -> Deferred[Alarm | None]:
        return self._run(get_alarm, alarm_id, read=True)

    def active_for(self, device_ids: list[str]) -> Deferred[list[Alarm]]:
        return self._run(active_for, device_ids, read=True)

    def active_of_rule(self, rule_id: str) -> Deferred[list[Alarm]]:
        return self._run(active_of_rule, rule_id, read=True)

    def list_alarms(self, account_id: str | None, devices: list[str] | None,
                    state: str | None, severities: tuple[str, ...] | None,
                    device_id: str | None, acknowledged: bool | None, limit: int,
                    before: int | None) -> Deferred[Any]:
        return self._run(list_alarms, account_id, devices, state, severities, device_id,
                         acknowledged, limit, before, read=True)

    def count_active(self, account_id: str | None = None) -> Deferred[dict[str, int]]:
        return self._run(count_active, account_id, read=True)

    def put_webhook(self, hook: dict[str, Any], limit: int) -> Deferred[dict[str, Any]]:
        return self._run(put_webhook, hook, limit)

    def get_webhook(self, hook_id: str) -> Deferred[dict[str, Any] | None]:
        return self._run(get_webhook, hook_id, read=True)

    def list_webhooks(self, account_id: str | None = None) -> Deferred[list[dict[str, Any]]]:
        return self._run(list_webhooks, account_id, read=True)

    def delete_webhook(self, hook_id: str) -> Deferred[bool]:
        return self._run(delete_webhook, hook_id)
