"""
Alarm rules and alarms: records, the checks of what clients send, and how
the API shows them. No I/O; the engine that evaluates rules is
L{dashd.app.alarms}, the store jobs L{dashd.store.alarms_sql}.

A rule: which devices (a device query, L{dashd.domain.query}; none: all the
account sees), a condition, a severity, and optionally webhooks to call
(L{dashd.app.webhooks}). Conditions (``condition.kind``):

- ``threshold``: ``key`` (a dotted path of ``reported``), ``above`` or
  ``below`` a number; the alarm clears once the value is back on the other
  side of ``clear`` (hysteresis; default: the threshold itself); ``for``:
  seconds the value must stay beyond the threshold before the alarm is
  raised (default 0).
- ``stale``: ``key`` not reported for ``seconds``.
- ``offline``: the device offline for more than ``seconds``.
- ``ota_failed``: a firmware update ended ``failed``; cleared when one is
  committed.
- ``log``: a log line (``Dash.Log``) matching ``pattern`` (a regular
  expression); cleared by hand, or after ``clear_after`` seconds without
  another matching line when given.
- ``call_failures``: of the calls made to the device in the last ``window``
  seconds (at least ``min_calls`` of them), the share that failed (an
  error, a timeout; not "offline") is ``rate`` or more; cleared when it is
  below ``clear_rate`` (default ``rate``).

An alarm is one (rule, device)'s: at most one is active at a time (the
stores hold to that), raised once while the condition holds, cleared when it
stops holding (or by hand), acknowledged by a person with a note. Cleared
alarms stay as the history.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dashd.domain import query as q
from dashd.domain.errors import Invalid

SEVERITIES = ("critical", "major", "minor", "warning", "indeterminate")
STATES = ("active", "cleared")
KINDS = ("threshold", "stale", "offline", "ota_failed", "log", "call_failures")

MAX_NAME = 200
MAX_PATTERN = 256
MAX_NOTE = 1000
MAX_WEBHOOKS = 10
MAX_SECONDS = 30 * 86400.0
# Rules one account may have.
MAX_RULES_PER_ACCOUNT = 200


@dataclass(frozen=True)
class Rule:
    id: str
    account_id: str
    name: str
    where: str | None
    condition: dict[str, Any]
    severity: str
    enabled: bool
    webhooks: tuple[str, ...]
    created: float
    updated: float

    @property
    def kind(self) -> str:
        return str(self.condition["kind"])


@dataclass(frozen=True)
class Alarm:
    id: str
    rule_id: str
    device_id: str
    account_id: str
    severity: str
    state: str
    raised: float
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    cleared: float | None = None
    cleared_by: str | None = None
    acknowledged: float | None = None
    acknowledged_by: str | None = None
    note: str | None = None
    seq: int = 0


def rule_view(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id, "name": rule.name, "where": rule.where, "condition": rule.condition,
        "severity": rule.severity, "enabled": rule.enabled, "webhooks": list(rule.webhooks),
        "account_id": rule.account_id, "created": rule.created, "updated": rule.updated,
    }


def alarm_view(alarm: Alarm) -> dict[str, Any]:
    return {
        "id": alarm.id, "rule_id": alarm.rule_id, "device_id": alarm.device_id,
        "account_id": alarm.account_id, "severity": alarm.severity, "state": alarm.state,
        "acknowledged": alarm.acknowledged is not None, "raised": alarm.raised,
        "message": alarm.message, "details": alarm.details, "cleared": alarm.cleared,
        "cleared_by": alarm.cleared_by, "acknowledged_at": alarm.acknowledged,
        "acknowledged_by": alarm.acknowledged_by, "note": alarm.note,
    }


# Checks of what clients send


def _number(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise Invalid("%s must be a number" % name, name)
    return float(value)


def _seconds(value: Any, name: str, minimum: float = 0.0) -> float:
    seconds = _number(value, name)
    if not minimum <= seconds <= MAX_SECONDS:
        raise Invalid("%s must be between %g and %g seconds" % (name, minimum, MAX_SECONDS),
                      name)
    return seconds


def _key(value: Any, name: str = "condition.key") -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise Invalid("%s must be a dotted path of the reported state, e.g. env.temp" % name,
                      name)
    parts = value.split(".")
    if any(not p for p in parts) or len(parts) > q.MAX_PATH_SEGMENTS:
        raise Invalid("%s must be a dotted path of the reported state, e.g. env.temp" % name,
                      name)
    return value


_FIELDS = {
    "threshold": {"kind", "key", "above", "below", "clear", "for"},
    "stale": {"kind", "key", "seconds"},
    "offline": {"kind", "seconds"},
    "ota_failed": {"kind"},
    "log": {"kind", "pattern", "clear_after"},
    "call_failures": {"kind", "rate", "clear_rate", "window", "min_calls"},
}


def parse_condition(value: Any) -> dict[str, Any]:
    """The condition as stored (with its defaults filled in).
    @raise Invalid: naming what is wrong."""
    if not isinstance(value, dict):
        raise Invalid("condition must be an object with a kind (one of %s)" % ", ".join(KINDS),
                      "condition")
    kind = value.get("kind")
    if kind not in KINDS:
        raise Invalid("condition.kind must be one of %s" % ", ".join(KINDS), "condition.kind")
    unknown = set(value) - _FIELDS[kind]
    if unknown:
        raise Invalid("a %s condition has no %s (it has %s)" % (
            kind, ", ".join(sorted(unknown)), ", ".join(sorted(_FIELDS[kind]))), "condition")
    out: dict[str, Any] = {"kind": kind}
    if kind == "threshold":
        out["key"] = _key(value.get("key"))
        if ("above" in value) == ("below" in value):
            raise Invalid("a threshold condition has either above or below", "condition")
        side = "above" if "above" in value else "below"
        limit = _number(value[side], "condition." + side)
        clear = _number(value.get("clear", limit), "condition.clear")
        if (side == "above" and clear > limit) or (side == "below" and clear < limit):
            raise Invalid("condition.clear must be on the normal side of the threshold (%s "
                          "%g)" % ("at most" if side == "above" else "at least", limit),
                          "condition.clear")
        out.update({side: limit, "clear": clear,
                    "for": _seconds(value.get("for", 0), "condition.for")})
    elif kind == "stale":
        out["key"] = _key(value.get("key"))
        out["seconds"] = _seconds(value.get("seconds"), "condition.seconds", 1.0)
    elif kind == "offline":
        out["seconds"] = _seconds(value.get("seconds"), "condition.seconds", 0.0)
    elif kind == "log":
        pattern = value.get("pattern")
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
            raise Invalid("condition.pattern must be a regular expression of 1 to %d "
                          "characters" % MAX_PATTERN, "condition.pattern")
        try:
            re.compile(pattern)
        except re.error as e:
            raise Invalid("condition.pattern is not a regular expression: %s" % e,
                          "condition.pattern") from None
        out["pattern"] = pattern
        if "clear_after" in value:
            out["clear_after"] = _seconds(value["clear_after"], "condition.clear_after", 1.0)
    elif kind == "call_failures":
        rate = _number(value.get("rate"), "condition.rate")
        if not 0 < rate <= 1:
            raise Invalid("condition.rate must be more than 0 and at most 1",
                          "condition.rate")
        clear = _number(value.get("clear_rate", rate), "condition.clear_rate")
        if not 0 <= clear <= rate:
            raise Invalid("condition.clear_rate must be between 0 and rate",
                          "condition.clear_rate")
        min_calls = value.get("min_calls", 5)
        if not isinstance(min_calls, int) or isinstance(min_calls, bool) or not \
                1 <= min_calls <= 10000:
            raise Invalid("condition.min_calls must be an integer from 1 to 10000",
                          "condition.min_calls")
        out.update({"rate": rate, "clear_rate": clear, "min_calls": min_calls,
                    "window": _seconds(value.get("window", 300), "condition.window", 1.0)})
    return out


def parse_severity(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in SEVERITIES:
        raise Invalid("severity must be one of %s" % ", ".join(SEVERITIES), "severity")
    return value.lower()


def parse_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise Invalid("name must be a string of 1 to %d characters" % MAX_NAME, "name")
    return value.strip()


def parse_where(value: Any) -> tuple[str | None, Any]:
    """The query's text (None: every device) and its tree.
    @raise QueryError: where it cannot be read."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if not isinstance(value, str):
        raise Invalid("where must be a device query (a string)", "where")
    return value, q.parse(value)


def parse_webhooks(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_WEBHOOKS or not all(
            isinstance(v, str) and v for v in value):
        raise Invalid("webhooks must be a list of at most %d webhook IDs" % MAX_WEBHOOKS,
                      "webhooks")
    return tuple(dict.fromkeys(value))


def parse_note(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_NOTE:
        raise Invalid("note must be a string of at most %d characters" % MAX_NOTE, "note")
    return value


def reported_value(document: dict[str, Any], key: str) -> Any:
    """The value of the dotted C{key} of a shadow's reported state (None if
    absent)."""
    value: Any = document.get("state", {}).get("reported", {})
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def reported_time(document: dict[str, Any], key: str) -> float | None:
    """When the dotted C{key} was last reported, from the shadow's
    metadata (the latest time under it for an object)."""
    value: Any = document.get("metadata", {}).get("reported", {})
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return _latest(value)


def _latest(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        times = [t for t in (_latest(v) for v in value.values()) if t is not None]
        return max(times) if times else None
    return None


def log_text(params: Any) -> str:
    """The text of a Dash.Log line: its C{data} (or C{msg}), or the params as
    JSON."""
    if isinstance(params, dict):
        for k in ("data", "msg", "message", "text"):
            if isinstance(params.get(k), str):
                return str(params[k])
    if isinstance(params, str):
        return params
    if isinstance(params, list) and params and isinstance(params[0], str):
        return " ".join(str(p) for p in params)
    from dashd.jsontext import compact

    return compact(params)
