"""
Fleet jobs: one action on many devices (L{dashd.app.jobs} runs them).

A job's spec, as ``POST /jobs`` takes it (every field checked here, before
anything is stored or sent)::

    {"name": "interval 60 at berlin",
     "target": {"where": "tags.site = \\"berlin\\"", "continuous": false}
               | {"devices": ["d...", ...]},
     "action": {"type": "rpc", "method": "Sys.Reboot", "params": {...}}
               | {"type": "shadow", "desired": {...}, "tags": {...}},
     "rate": {"per_minute": 600}
             | {"base_per_minute": 10, "increment_factor": 2, "after_succeeded": 50,
                "max_per_minute": 1000},
     "concurrency": 50,
     "timeouts": {"queued": 3600, "running": 30},
     "retries": 1,
     "abort": [{"on": "failed" | "timed_out" | "any", "percent": 20, "min_finished": 10}],
     "start_at": T, "end_at": T}

Job states: ``scheduled`` (its start_at is ahead), ``running``, ``paused``,
``completed``, ``cancelled``, ``aborted`` (``reason`` names the rule).
Execution states: ``queued`` (not sent yet: waiting for its turn, or for
its device to be online), ``in_progress`` (sent; the device works on it),
``succeeded``, ``failed``, ``timed_out``, ``cancelled``, ``skipped`` (with
why: ``forbidden``, ``not found``).
"""

from __future__ import annotations

from typing import Any

from dashd.domain import shadow
from dashd.domain.errors import Invalid
from dashd.domain.model import check_name

SCHEDULED = "scheduled"
RUNNING = "running"
PAUSED = "paused"
COMPLETED = "completed"
CANCELLED = "cancelled"
ABORTED = "aborted"
JOB_STATES = (SCHEDULED, RUNNING, PAUSED, COMPLETED, CANCELLED, ABORTED)
LIVE = (SCHEDULED, RUNNING, PAUSED)
ENDED = (COMPLETED, CANCELLED, ABORTED)

QUEUED = "queued"
IN_PROGRESS = "in_progress"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
SKIPPED = "skipped"
EXECUTION_STATES = (QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, SKIPPED)
FINAL = (SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, SKIPPED)
# What an abort rule counts.
ABORT_ON = ("failed", "timed_out", "any")

ACTIONS = ("rpc", "shadow", "firmware")
MAX_PHASES = 10
MODES = ("push", "pull")
MAX_DEVICE_LIST = 1000
MAX_CONCURRENCY = 10000
DEFAULT_CONCURRENCY = 50
MAX_RULES = 10
MAX_METHOD_LENGTH = 256

_FIELDS = {"name", "target", "action", "rate", "concurrency", "timeouts", "retries", "abort",
           "start_at", "end_at", "phases"}


def _number(value: Any, where: str, low: float, high: float, whole: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
            or (whole and not isinstance(value, int)):
        raise Invalid("%s must be a %s" % (where, "whole number" if whole else "number"), where)
    if not low <= value <= high:
        raise Invalid("%s must be from %g to %g" % (where, low, high), where)
    return value


def _object(value: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid("%s must be an object" % where, where)
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise Invalid("unknown field(s) in %s: %s (allowed: %s)"
                      % (where, ", ".join(unknown), ", ".join(sorted(allowed))), where)
    return value


def parse_spec(body: Any, config: Any, now: float) -> dict[str, Any]:
    """The spec of a new job, checked and with its defaults.
    @raise Invalid: naming the field and what is wrong with it."""
    body = _object(body, "the job", _FIELDS)
    spec: dict[str, Any] = {}
    if "name" not in body:
        raise Invalid("name is required", "name")
    spec["name"] = check_name(body["name"], "name")

    if "target" not in body:
        raise Invalid("target is required: {\"where\": QUERY} or {\"devices\": [ID, ...]}",
                      "target")
    target = _object(body["target"], "target", {"where", "devices", "continuous"})
    if ("where" in target) == ("devices" in target):
        raise Invalid("target must have either where (a device query) or devices (a list "
                      "of device IDs)", "target")
    continuous = target.get("continuous", False)
    if not isinstance(continuous, bool):
        raise Invalid("target.continuous must be true or false", "target.continuous")
    if "where" in target:
        if not isinstance(target["where"], str):
            raise Invalid("target.where must be a device query (a string)", "target.where")
        spec["target"] = {"where": target["where"], "continuous": continuous}
    else:
        devices = target["devices"]
        if not isinstance(devices, list) or not devices \
                or not all(isinstance(d, str) and 0 < len(d) <= 32 for d in devices):
            raise Invalid("target.devices must be a non-empty list of device IDs",
                          "target.devices")
        if len(devices) > MAX_DEVICE_LIST:
            raise Invalid("target.devices may list at most %d devices (use a query for more)"
                          % MAX_DEVICE_LIST, "target.devices")
        if continuous:
            raise Invalid("target.continuous needs a query (where): a list of IDs never "
                          "grows", "target.continuous")
        spec["target"] = {"devices": list(dict.fromkeys(devices)), "continuous": False}

    if "action" not in body:
        raise Invalid("action is required: {\"type\": \"rpc\", \"method\": ...} or "
                      "{\"type\": \"shadow\", \"desired\": ...}", "action")
    action = body["action"]
    if not isinstance(action, dict) or action.get("type") not in ACTIONS:
        raise Invalid("action.type must be one of %s" % ", ".join(ACTIONS), "action.type")
    if action["type"] == "rpc":
        action = _object(action, "action", {"type", "method", "params"})
        method = action.get("method")
        if not isinstance(method, str) or not method or len(method) > MAX_METHOD_LENGTH:
            raise Invalid("action.method must be a method name of 1 to %d characters"
                          % MAX_METHOD_LENGTH, "action.method")
        spec["action"] = {"type": "rpc", "method": method, "params": action.get("params")}
    elif action["type"] == "firmware":
        action = _object(action, "action", {"type", "firmware", "mode", "auto_commit",
                                            "commit_timeout"})
        if not isinstance(action.get("firmware"), str) or not action["firmware"]:
            raise Invalid("action.firmware must be the ID of an image of the library "
                          "(POST /firmware)", "action.firmware")
        mode = action.get("mode", "push")
        if mode not in MODES:
            raise Invalid("action.mode must be push or pull", "action.mode")
        auto_commit = action.get("auto_commit", True)
        if not isinstance(auto_commit, bool):
            raise Invalid("action.auto_commit must be true or false", "action.auto_commit")
        spec["action"] = {"type": "firmware", "firmware": action["firmware"], "mode": mode,
                          "auto_commit": auto_commit}
        if action.get("commit_timeout") is not None:
            spec["action"]["commit_timeout"] = int(_number(
                action["commit_timeout"], "action.commit_timeout", 0, 30 * 86400, whole=True))
    else:
        action = _object(action, "action", {"type", "desired", "tags"})
        if "desired" not in action and "tags" not in action:
            raise Invalid("a shadow action changes desired, tags or both", "action")
        update: dict[str, Any] = {}
        if "desired" in action:
            update["state"] = {"desired": action["desired"]}
        if "tags" in action:
            update["tags"] = action["tags"]
        shadow.parse_update(update, allow_tags=True)  # raises InvalidShadowUpdate
        spec["action"] = dict(type="shadow", **{k: action[k] for k in ("desired", "tags")
                                                if k in action})

    rate = body.get("rate")
    if rate is not None:
        rate = _object(rate, "rate", {"per_minute", "base_per_minute", "increment_factor",
                                      "after_succeeded", "max_per_minute"})
        if "per_minute" in rate:
            if set(rate) != {"per_minute"}:
                raise Invalid("rate is either {per_minute} or exponential {base_per_minute, "
                              "increment_factor, after_succeeded, max_per_minute}", "rate")
            spec["rate"] = {"per_minute": _number(rate["per_minute"], "rate.per_minute", 1,
                                                  1e6)}
        else:
            missing = [k for k in ("base_per_minute", "increment_factor", "after_succeeded",
                                   "max_per_minute") if k not in rate]
            if missing:
                raise Invalid("an exponential rate needs %s" % ", ".join(missing), "rate")
            base = _number(rate["base_per_minute"], "rate.base_per_minute", 1, 1e6)
            spec["rate"] = {
                "base_per_minute": base,
                "increment_factor": _number(rate["increment_factor"], "rate.increment_factor",
                                            1.1, 5),
                "after_succeeded": _number(rate["after_succeeded"], "rate.after_succeeded", 1,
                                           1e6, whole=True),
                "max_per_minute": _number(rate["max_per_minute"], "rate.max_per_minute", base,
                                          1e6),
            }
    spec["concurrency"] = int(_number(body.get("concurrency", DEFAULT_CONCURRENCY),
                                      "concurrency", 1, MAX_CONCURRENCY, whole=True))
    timeouts = _object(body.get("timeouts", {}), "timeouts", {"queued", "running"})
    spec["timeouts"] = {
        "queued": _number(timeouts.get("queued", config["calls.default_expires_in"]),
                          "timeouts.queued", 1, config["calls.max_expires_in"]),
        "running": _number(timeouts.get("running", config["rpc.default_timeout"]),
                           "timeouts.running", 0.1, config["rpc.max_timeout"]),
    }
    spec["retries"] = int(_number(body.get("retries", 0), "retries", 0,
                                  config["calls.max_retries"], whole=True))
    rules = body.get("abort", [])
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise Invalid("abort must be a list of at most %d rules" % MAX_RULES, "abort")
    spec["abort"] = []
    for i, rule in enumerate(rules):
        where = "abort[%d]" % i
        rule = _object(rule, where, {"on", "percent", "min_finished"})
        if rule.get("on", "any") not in ABORT_ON:
            raise Invalid("%s.on must be one of %s" % (where, ", ".join(ABORT_ON)), where)
        if "percent" not in rule:
            raise Invalid("%s.percent is required" % where, where)
        spec["abort"].append({
            "on": rule.get("on", "any"),
            "percent": _number(rule["percent"], where + ".percent", 0, 100),
            "min_finished": int(_number(rule.get("min_finished", 1), where + ".min_finished",
                                        1, 1e7, whole=True)),
        })
    phases = body.get("phases")
    if phases is not None:
        spec["phases"] = _phases(phases)
    for name in ("start_at", "end_at"):
        if body.get(name) is not None:
            spec[name] = _number(body[name], name, 0, 1e11)
    if spec.get("end_at") is not None:
        if spec["end_at"] <= max(now, spec.get("start_at") or 0):
            raise Invalid("end_at must be after now and after start_at", "end_at")
    return spec


def rate_now(spec: dict[str, Any], succeeded: int) -> float | None:
    """Devices a minute the job may send to now (None: no limit)."""
    rate = spec.get("rate")
    if rate is None:
        return None
    if "per_minute" in rate:
        return float(rate["per_minute"])
    steps = succeeded // rate["after_succeeded"]
    return float(min(rate["max_per_minute"],
                     rate["base_per_minute"] * rate["increment_factor"] ** min(steps, 64)))


def finished_count(counts: dict[str, int]) -> int:
    return sum(counts.get(s, 0) for s in (SUCCEEDED, FAILED, TIMED_OUT))


def rule_fired(spec: dict[str, Any], counts: dict[str, int]) -> dict[str, Any] | None:
    """The first abort rule the counts meet, with the figures, or None."""
    finished = finished_count(counts)
    for rule in spec.get("abort", []):
        if finished < rule["min_finished"]:
            continue
        if rule["on"] == "any":
            bad = counts.get(FAILED, 0) + counts.get(TIMED_OUT, 0)
        else:
            bad = counts.get(rule["on"], 0)
        percent = 100.0 * bad / finished if finished else 0.0
        if percent >= rule["percent"] and bad > 0:
            return {"rule": rule, "finished": finished, "matching": bad,
                    "percent": round(percent, 2),
                    "message": "%d of %d finished executions %s (%.1f%%, the rule's "
                               "threshold is %g%% once %d have finished)"
                               % (bad, finished, "failed or timed out" if rule["on"] == "any"
                                  else rule["on"].replace("_", " "), percent,
                                  rule["percent"], rule["min_finished"])}
    return None


def progress(counts: dict[str, int]) -> dict[str, int]:
    """Counts per execution state (every state named) and the total."""
    out = {state: int(counts.get(state, 0)) for state in EXECUTION_STATES}
    out["total"] = sum(out.values())
    return out


def _phases(value: Any) -> list[dict[str, Any]]:
    """Staged rollout: each phase's cumulative size (percent of the
    target's devices, or a count), the share of its devices that must
    succeed before the next starts, the share that failed or timed out that
    pauses the job, a wait and an approval before the next."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PHASES:
        raise Invalid("phases must be a list of 1 to %d phases" % MAX_PHASES, "phases")
    out = []
    last_percent = last_count = 0.0
    for i, phase in enumerate(value):
        where = "phases[%d]" % i
        phase = _object(phase, where, {"percent", "count", "success_threshold",
                                       "error_threshold", "wait", "approval"})
        if ("percent" in phase) == ("count" in phase):
            raise Invalid("%s must have either percent or count (of all the devices, "
                          "counted from the first phase)" % where, where)
        item: dict[str, Any] = {}
        if "percent" in phase:
            item["percent"] = _number(phase["percent"], where + ".percent", 0.001, 100)
            if item["percent"] <= last_percent:
                raise Invalid("%s.percent must be more than the phase before's" % where, where)
            last_percent = item["percent"]
        else:
            item["count"] = int(_number(phase["count"], where + ".count", 1, 1e7, whole=True))
            if item["count"] <= last_count:
                raise Invalid("%s.count must be more than the phase before's" % where, where)
            last_count = item["count"]
        item["success_threshold"] = _number(phase.get("success_threshold", 100),
                                            where + ".success_threshold", 0, 100)
        if phase.get("error_threshold") is not None:
            item["error_threshold"] = _number(phase["error_threshold"],
                                              where + ".error_threshold", 0, 100)
        item["wait"] = _number(phase.get("wait", 0), where + ".wait", 0, 30 * 86400)
        approval = phase.get("approval", False)
        if not isinstance(approval, bool):
            raise Invalid("%s.approval must be true or false" % where, where)
        item["approval"] = approval
        out.append(item)
    return out


def assign_phases(count: int, phases: list[dict[str, Any]] | None) -> list[int]:
    """The phase of each of C{count} devices in order (the last phase takes
    all those beyond the phases' sizes)."""
    if not phases:
        return [0] * count
    out = []
    for i in range(count):
        for number, phase in enumerate(phases):
            size = phase["count"] if "count" in phase else -(-phase["percent"] * count // 100)
            if i < size or number == len(phases) - 1:
                out.append(number)
                break
    return out


def phase_verdict(spec: dict[str, Any], number: int, counts: dict[str, int]
                  ) -> tuple[str, str | None]:
    """Where phase C{number} stands, from its executions' counts:
    ("error", why) past its error threshold, ("next", None) its success
    threshold met, ("short", why) all ended below it, ("wait", None)
    otherwise."""
    phase = spec["phases"][number]
    total = sum(n for state, n in counts.items() if state != SKIPPED)
    succeeded = counts.get(SUCCEEDED, 0)
    bad = counts.get(FAILED, 0) + counts.get(TIMED_OUT, 0)
    if total == 0:
        return "next", None
    if phase.get("error_threshold") is not None and bad \
            and 100.0 * bad / total >= phase["error_threshold"]:
        return "error", ("phase %d: %d of its %d devices failed or timed out (%.1f%%; its "
                         "error threshold is %g%%)" % (number + 1, bad, total,
                                                       100.0 * bad / total,
                                                       phase["error_threshold"]))
    if 100.0 * succeeded / total >= phase["success_threshold"]:
        return "next", None
    if not counts.get(QUEUED) and not counts.get(IN_PROGRESS):
        return "short", ("phase %d ended with %d of its %d devices succeeded (%.1f%%), below "
                         "its success threshold of %g%%" % (number + 1, succeeded, total,
                                                            100.0 * succeeded / total,
                                                            phase["success_threshold"]))
    return "wait", None
