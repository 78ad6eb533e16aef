"""
dashctl's commands on keys and devices, as the application runs them. The
same table serves a running dashd's control socket (L{dashd.ops.control})
and dashctl working on a stopped dashd's store itself (L{dashd.ctl}): each
command is one call of the application layer, made by
L{dashd.domain.access.CONSOLE}, the operator at the server's own console.

A command is a name and a JSON object of arguments; its result is JSON.
Commands that change something also say which account and device they
touched, for the audit log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from dashd.domain.access import CONSOLE
from dashd.domain.errors import Invalid
from dashd.domain.model import UNSET, ApiKey, Device

DAY = 86400.0


@dataclass(frozen=True)
class Done:
    """A command's JSON result, and what it changed (None for reads)."""

    result: Any
    account_id: str | None = None
    device_id: str | None = None
    # What it acted on, for the audit log: a key or device ID.
    target: str = ""


def key_view(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "kind": key.kind, "account_id": key.account_id,
            "created": key.created, "expires": key.expires}


def device_view(device: Device) -> dict[str, Any]:
    return {"id": device.id, "name": device.name, "account_id": device.account_id,
            "created": device.created, "last_seen": device.last_seen,
            "shared_with": list(device.shared_with), "info": device.info}


def _text(args: dict[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is not None and not isinstance(value, str):
        raise Invalid("%s must be a string" % name, name)
    return value


def _given(args: dict[str, Any], name: str) -> Any:
    """An optional argument: UNSET when dashctl did not give it."""
    value = args.get(name)
    return UNSET if value is None else value


async def keys_list(app: Any, args: dict[str, Any]) -> Done:
    keys = await app.keys.list(CONSOLE, _text(args, "account"))
    return Done([key_view(k) for k in keys])


async def keys_create(app: Any, args: dict[str, Any]) -> Done:
    expires = None
    days = args.get("expires_in")
    if days is not None:
        if (isinstance(days, bool) or not isinstance(days, (int, float))
                or not math.isfinite(days) or days <= 0):
            raise Invalid("expires_in must be a number of days greater than 0", "expires_in")
        expires = app.clock.seconds() + days * DAY
    key, secret = await app.keys.create(CONSOLE, name=_given(args, "name"), expires=expires,
                                        account_id=_text(args, "account"))
    return Done(dict(key_view(key), key=secret), key.account_id, target=key.id)


async def keys_revoke(app: Any, args: dict[str, Any]) -> Done:
    key = await app.keys.revoke(CONSOLE, _text(args, "key_id") or "")
    return Done({"id": key.id, "deleted": True}, key.account_id, target=key.id)


async def devices_list(app: Any, args: dict[str, Any]) -> Done:
    devices = await app.devices.list(CONSOLE, _text(args, "account"))
    return Done([device_view(d) for d in devices])


async def devices_register(app: Any, args: dict[str, Any]) -> Done:
    device, token = await app.devices.register(
        CONSOLE, name=_given(args, "name"), shared_with=_given(args, "shared_with"),
        account_id=_text(args, "account"))
    return Done({"id": device.id, "name": device.name, "token": token},
                device.account_id, device.id, device.id)


async def devices_delete(app: Any, args: dict[str, Any]) -> Done:
    device = await app.devices.delete(CONSOLE, _text(args, "device_id") or "")
    return Done({"id": device.id, "deleted": True}, device.account_id, device.id, device.id)


async def devices_rotate_token(app: Any, args: dict[str, Any]) -> Done:
    device, token = await app.devices.rotate_token(CONSOLE, _text(args, "device_id") or "")
    return Done({"id": device.id, "token": token}, device.account_id, device.id, device.id)


def _jobs(app: Any) -> Any:
    if app.jobs is None:
        raise Invalid("jobs are driven by a running dashd: start it, then run this again")
    return app.jobs


async def jobs_list(app: Any, args: dict[str, Any]) -> Done:
    found, _ = await _jobs(app).list(CONSOLE, 500)
    return Done(found)


async def jobs_show(app: Any, args: dict[str, Any]) -> Done:
    jobs = _jobs(app)
    return Done(await jobs.view(await jobs.get(CONSOLE, _text(args, "job_id") or "")))


async def jobs_executions(app: Any, args: dict[str, Any]) -> Done:
    state = _text(args, "state")
    states = tuple(s.strip() for s in state.split(",")) if state else None
    found, _ = await _jobs(app).executions(CONSOLE, _text(args, "job_id") or "", states, 500)
    return Done(found)


def _job_control(action: str) -> Callable[[Any, dict[str, Any]], Awaitable[Done]]:
    async def control(app: Any, args: dict[str, Any]) -> Done:
        job = await getattr(_jobs(app), action)(CONSOLE, _text(args, "job_id") or "")
        return Done(job, job["account_id"], target=job["id"])

    return control


def _alarm_view(alarm: Any) -> dict[str, Any]:
    from dashd.domain.alarms import alarm_view

    return alarm_view(alarm)


async def alarms_list(app: Any, args: dict[str, Any]) -> Done:
    found, _ = await app.alarms.list(CONSOLE, _text(args, "state"), _text(args, "severity"),
                                     _text(args, "device"), None, 500, None)
    account = _text(args, "account")
    return Done([_alarm_view(a) for a in found if account is None or a.account_id == account])


async def alarms_acknowledge(app: Any, args: dict[str, Any]) -> Done:
    alarm = await app.alarms.acknowledge(CONSOLE, _text(args, "alarm_id") or "",
                                         _text(args, "note"))
    return Done(_alarm_view(alarm), alarm.account_id, alarm.device_id, alarm.id)


async def alarms_clear(app: Any, args: dict[str, Any]) -> Done:
    alarm = await app.alarms.clear(CONSOLE, _text(args, "alarm_id") or "")
    return Done(_alarm_view(alarm), alarm.account_id, alarm.device_id, alarm.id)


async def sessions_list(app: Any, args: dict[str, Any]) -> Done:
    from dashd.app import sessions

    return Done(await sessions.listed(app.fleet.store, app.clock.seconds(),
                                      _text(args, "key_id"), _text(args, "account")))


async def sessions_revoke(app: Any, args: dict[str, Any]) -> Done:
    from dashd.app import sessions

    ended = await sessions.revoke(app.fleet.store, app.clock.seconds(),
                                  _text(args, "session_id"), _text(args, "key_id"))
    accounts = {s["account_id"] for s in ended}
    return Done(ended, accounts.pop() if len(accounts) == 1 else None,
                target=_text(args, "session_id") or _text(args, "key_id") or "")


def _number(args: dict[str, Any], name: str) -> float | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Invalid("%s must be a number" % name, name)
    return float(value)


def _names(args: dict[str, Any], name: str) -> list[str] | None:
    value = _text(args, name)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


async def data_range(app: Any, args: dict[str, Any]) -> Done:
    """The stored data of a time range, as GET /api/v2/data?from=&to= (in
    buckets, or raw points), of every account's devices."""
    from dashd.app.ranges import DEFAULT_RANGE_LIMIT, DataRanges

    start = _number(args, "start")
    bucket = _number(args, "bucket")
    if bucket is not None and bucket != int(bucket):
        raise Invalid("bucket must be a whole number of seconds, at least 1", "bucket")
    limit = _number(args, "limit")
    ranges = DataRanges(app.fleet.store, app.devices, app.clock)
    result = await ranges.query(
        CONSOLE, _names(args, "device"), _names(args, "key"),
        -3600.0 if start is None else start, _number(args, "end"),
        None if bucket is None else int(bucket),
        DEFAULT_RANGE_LIMIT if limit is None else int(limit))
    return Done(result)


async def jobs_cancel(app: Any, args: dict[str, Any]) -> Done:
    # force: the executions in progress are cancelled too (see JobService.cancel).
    job = await _jobs(app).cancel(CONSOLE, _text(args, "job_id") or "",
                                  force=args.get("force") is True)
    return Done(job, job["account_id"], target=job["id"])


COMMANDS: dict[str, Callable[[Any, dict[str, Any]], Awaitable[Done]]] = {
    "sessions list": sessions_list,
    "sessions revoke": sessions_revoke,
    "data range": data_range,
    "jobs list": jobs_list,
    "jobs show": jobs_show,
    "jobs executions": jobs_executions,
    "jobs pause": _job_control("pause"),
    "jobs resume": _job_control("resume"),
    "jobs cancel": jobs_cancel,
    "jobs retry": _job_control("retry"),
    "jobs delete": _job_control("delete"),
    "alarms list": alarms_list,
    "alarms acknowledge": alarms_acknowledge,
    "alarms clear": alarms_clear,
    "keys list": keys_list,
    "keys create": keys_create,
    "keys revoke": keys_revoke,
    "devices list": devices_list,
    "devices register": devices_register,
    "devices delete": devices_delete,
    "devices rotate-token": devices_rotate_token,
}

# Commands whose effect on a running dashd goes beyond the store: a revoked
# key's streams are closed, a rotated or deleted device's connection cut.
# Without a dashd on this machine they are safe only where no other node
# may hold those streams and connections (a single node).
LIVE_EFFECTS = ("keys revoke", "devices delete", "devices rotate-token")


async def run(app: Any, command: str, args: Any) -> Done:
    """Run one command. @raise DomainError: saying why it was refused."""
    handler = COMMANDS.get(command)
    if handler is None:
        raise Invalid("unknown command: %s" % command, "command")
    if not isinstance(args, dict):
        raise Invalid("the arguments must be a JSON object", "args")
    return await handler(app, args)
