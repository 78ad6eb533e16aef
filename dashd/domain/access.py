"""
Who may do what: the one place where API keys meet devices.

Every device and every key belongs to an account. A key sees the devices of
its account and those shared with it (``shared_with``); a device it may not
see does not exist for it (404, never 403). What it may do with a device it
sees depends on its kind:

==================  ==============  ==============  ==========  ==================
action              admin, owner    admin, shared   read-only   restricted
==================  ==============  ==============  ==========  ==================
see                 yes             yes             yes         its devices, the
                                                                readable keys only
call RPC            yes             yes             no          listed methods
change desired      yes             yes             no          listed keys
change reported,    yes             no              no          no
tags, name,
sharing; delete;
rotate the token
register devices,   yes (own        --              no          no
manage keys         account)
manage accounts     admins of the operator account only
notifications       all events      all events      all events  online/offline,
                                                                shadow.update,
                                                                device.updated
                                                                (its name) and
                                                                device.deleted,
                                                                filtered
==================  ==============  ==============  ==========  ==================

A restricted key's scope::

    {"devices": {"DEVICE_ID": {"read": ["temp", "led"],
                               "write": ["led"],
                               "rpc": ["GPIO.Toggle", "Sys.*"]}}}

``read`` and ``write`` are shadow keys as dotted paths (``led`` covers
``led.on``); ``read`` applies to ``desired``, ``reported`` and ``delta``
(tags, info and sharing are the operator's business and never shown);
``write`` names the ``desired`` keys the key may change; ``rpc`` lists
method names, where ``*`` matches any run of characters.

L{CONSOLE} is the operator at the server's own console: dashctl, through
the control socket or on a stopped dashd's store. It may do what an owning
admin may do, in every account. It is never a stored key (no secret opens
it): reaching the control socket takes dashd's own user, who can read the
store anyway.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from dashd.domain import shadow
from dashd.domain.errors import Forbidden, Invalid
from dashd.domain.events import Event
from dashd.domain.model import ApiKey, Device
from dashd.jsontext import compact

ADMIN = "admin"
READ_ONLY = "read-only"
RESTRICTED = "restricted"
# Not a kind of stored key: see CONSOLE.
CONSOLE_KIND = "console"

CONSOLE = ApiKey(id="dashctl", account_id="", name="dashctl", kind=CONSOLE_KIND, created=0.0)

# What an account ID may be made of (an operator may choose them).
ACCOUNT_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"
ACCOUNT_ID = re.compile("^%s$" % ACCOUNT_ID_PATTERN)
# A restricted key's scope entry (a dotted shadow key or a method pattern).
MAX_SCOPE_ENTRY_LENGTH = 128

MAX_SCOPE_DEVICES = 1000
MAX_SCOPE_ENTRIES = 100
# What a restricted key sees on the notification stream.
RESTRICTED_EVENTS = ("online", "offline", "shadow.update", "device.updated", "device.deleted")


def is_console(key: ApiKey) -> bool:
    return key.kind == CONSOLE_KIND


def can_see(key: ApiKey, device_id: str, account_id: str, shared_with: tuple[str, ...]) -> bool:
    if key.kind == CONSOLE_KIND:
        return True
    if account_id != key.account_id and key.account_id not in shared_with:
        return False
    if key.kind == RESTRICTED:
        return device_id in _devices(key)
    return True


def sees(key: ApiKey, device: Device) -> bool:
    return can_see(key, device.id, device.account_id, device.shared_with)


def account_sees(account_id: str, device: Device) -> bool:
    """The account owns the device or has it shared with it."""
    return device.account_id == account_id or account_id in device.shared_with


def manages_account(key: ApiKey, account_id: str) -> bool:
    """The key may manage the keys of C{account_id} (its own, or any from
    the console)."""
    return key.kind == CONSOLE_KIND or key.account_id == account_id


def _devices(key: ApiKey) -> dict[str, Any]:
    return (key.scope or {}).get("devices", {})


def _acl(key: ApiKey, device_id: str) -> dict[str, list[str]]:
    return _devices(key).get(device_id, {})


def is_owner_admin(key: ApiKey, device: Device) -> bool:
    return key.kind == ADMIN and device.account_id == key.account_id


# Checks that raise Forbidden with a message that says what is missing.


def require_admin(key: ApiKey, what: str) -> None:
    if key.kind not in (ADMIN, CONSOLE_KIND):
        raise Forbidden("only admin keys may %s; this key is %s" % (what, key.kind))


def require_owner(key: ApiKey, device: Device, what: str) -> None:
    require_admin(key, what)
    if device.account_id != key.account_id and key.kind != CONSOLE_KIND:
        raise Forbidden(
            "only admin keys of the account that owns device %s may %s" % (device.id, what)
        )


def check_rpc(key: ApiKey, device: Device, method: str) -> None:
    if key.kind in (ADMIN, CONSOLE_KIND):
        return
    if key.kind == READ_ONLY:
        raise Forbidden("this key is read-only: it may not call methods on devices")
    allowed = _acl(key, device.id).get("rpc", [])
    if not any(fnmatch.fnmatchcase(method, pattern) for pattern in allowed):
        raise Forbidden("this key may not call %s on device %s" % (method, device.id))


def check_shadow_update(key: ApiKey, device: Device, update: shadow.ShadowUpdate) -> None:
    sections = set(update.patches)
    if key.kind == READ_ONLY:
        raise Forbidden("this key is read-only: it may not change the shadow")
    if key.kind == CONSOLE_KIND:
        return
    if key.kind == ADMIN:
        if device.account_id != key.account_id and sections - {"desired"}:
            raise Forbidden(
                "device %s is shared with this account: only its desired state may be "
                "changed here" % device.id
            )
        return
    if sections - {"desired"}:
        raise Forbidden("this key may change only the desired state of device %s" % device.id)
    patch = update.patches.get("desired")
    allowed = _acl(key, device.id).get("write", [])
    if patch is None:
        # Emptying desired touches every key, allowed or not.
        raise Forbidden("this key may not empty the desired state of device %s" % device.id)
    for path in _leaf_paths(patch):
        if not _covered(path, allowed):
            raise Forbidden(
                "this key may not change desired.%s of device %s" % (".".join(path), device.id)
            )


def _leaf_paths(patch: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths a merge patch touches: objects are descended into, so that
    {"led": {"on": true}} touches led.on, not all of led; a null or any
    other value touches its whole path."""
    out = []
    for k, v in patch.items():
        if isinstance(v, dict) and v:
            out.extend(_leaf_paths(v, prefix + (k,)))
        else:
            out.append(prefix + (k,))
    return out


def _covered(path: tuple[str, ...], allowed: list[str]) -> bool:
    for entry in allowed:
        parts = tuple(entry.split("."))
        if path[: len(parts)] == parts:
            return True
    return False


def _project(doc: Any, allowed: list[str]) -> dict[str, Any]:
    """The parts of C{doc} under the allowed dotted paths."""
    out: dict[str, Any] = {}
    if not isinstance(doc, dict):
        return out
    for entry in allowed:
        parts = entry.split(".")
        node: Any = doc
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            target = out
            for part in parts[:-1]:
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    break
            else:
                target[parts[-1]] = node
    return out


def shadow_view_for(key: ApiKey, device_id: str, view: dict[str, Any]) -> dict[str, Any]:
    """A shadow as L{shadow.view} renders it, cut down to what the key may read."""
    if key.kind != RESTRICTED:
        return view
    readable = _acl(key, device_id).get("read", [])
    state = view["state"]
    out = {
        "state": {name: _project(state[name], readable) for name in ("desired", "reported", "delta")},
        "version": view["version"],
        "timestamp": view["timestamp"],
    }
    if "sections" in view:
        out["sections"] = {name: view["sections"][name] for name in ("desired", "reported")}
        out["metadata"] = {"reported": _project(view["metadata"]["reported"], readable)}
    return out


def device_view_for(key: ApiKey, view: dict[str, Any]) -> dict[str, Any]:
    if key.kind != RESTRICTED:
        return view
    return {
        "id": view["id"],
        "name": view["name"],
        "online": view["online"],
        "last_seen": view["last_seen"],
        "shadow": shadow_view_for(key, view["id"], view["shadow"]),
    }


def event_payload(key: ApiKey, event: Event) -> str | None:
    """What a subscriber with this key receives of C{event}, or None."""
    if not can_see(key, event.device_id, event.account_id, event.shared_with):
        return None
    if key.kind != RESTRICTED:
        return event.payload
    if event.name not in RESTRICTED_EVENTS:
        return None
    data = event.data
    if event.name == "shadow.update":
        data = shadow_view_for(key, event.device_id, data)
    elif event.name == "device.updated":
        data = {"name": data["name"]}  # not whom it is shared with
    elif event.name == "online":
        data = None  # not the addresses of the connections
    return compact({"name": event.name, "id": event.device_id, "data": data})


# Reading what a caller gives


def parse_shared_with(value: Any) -> tuple[str, ...]:
    """mDash's comma-separated account IDs (a JSON list is accepted too).
    @raise Invalid: saying what is wrong."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise Invalid("shared_with must be a string of comma-separated account IDs",
                      "shared_with")
    out: list[str] = []
    for item in items:
        if item and item not in out:
            if not ACCOUNT_ID.match(item):
                raise Invalid(
                    "shared_with holds %r, which is not an account ID (letters, digits, "
                    "'_', '.', ':' and '-', at most 64)" % item[:70], "shared_with"
                )
            out.append(item)
    return tuple(out)


def parse_scope(value: Any) -> dict[str, Any]:
    """Check a restricted key's scope.
    @raise Invalid: saying what is wrong."""
    if not isinstance(value, dict) or set(value) != {"devices"}:
        raise Invalid('scope must be {"devices": {DEVICE_ID: {"read": [...], '
                         '"write": [...], "rpc": [...]}}}')
    devices = value["devices"]
    if not isinstance(devices, dict) or not devices:
        raise Invalid("scope.devices must name at least one device")
    if len(devices) > MAX_SCOPE_DEVICES:
        raise Invalid("scope.devices may name at most %d devices" % MAX_SCOPE_DEVICES)
    out: dict[str, Any] = {}
    for device_id, acl in devices.items():
        where = "scope.devices.%s" % device_id
        if not isinstance(acl, dict):
            raise Invalid("%s must be an object with read, write and rpc lists" % where)
        unknown = set(acl) - {"read", "write", "rpc"}
        if unknown:
            raise Invalid("%s has unknown field(s): %s" % (where, ", ".join(sorted(unknown))))
        clean: dict[str, list[str]] = {}
        for field in ("read", "write", "rpc"):
            entries = acl.get(field, [])
            if not isinstance(entries, list) or not all(
                isinstance(e, str) and e and len(e) <= MAX_SCOPE_ENTRY_LENGTH for e in entries
            ):
                raise Invalid("%s.%s must be a list of non-empty strings" % (where, field))
            if len(entries) > MAX_SCOPE_ENTRIES:
                raise Invalid("%s.%s may hold at most %d entries"
                                 % (where, field, MAX_SCOPE_ENTRIES))
            if field != "rpc" and any(".." in e or e.startswith(".") or e.endswith(".")
                                      for e in entries):
                raise Invalid("%s.%s holds a malformed dotted path" % (where, field))
            clean[field] = list(dict.fromkeys(entries))
        out[device_id] = clean
    return {"devices": out}
