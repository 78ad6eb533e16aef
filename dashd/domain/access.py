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
call RPC            yes             the share's     no          listed methods
                                    scope: by
                                    default all
                                    but the
                                    owner's
change desired      yes             yes (or the     no          listed keys
                                    share's keys)
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

Methods for the owner (L{OWNER_METHODS}: firmware, configuration, the file
system, reboot and factory reset) reach a device only from the admin keys of
the account that owns it (and the console): a sharee's keys and restricted
keys are refused them on the RPC bridge, with nothing sent to the device,
unless the owner granted the method by its exact name (a wildcard never
grants one): in a restricted key's ``rpc`` list, or in a share's scope.

A share may carry a scope, chosen by the owner::

    {"rpc": ["GPIO.*", "Sys.GetInfo"], "write": ["led"]}

``rpc`` lists the methods the sharee may call (default: any method but those
for the owner), ``write`` the ``desired`` keys it may change (default: all).
A restricted key of the sharee is held to both its own scope and the
share's.

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
MAX_SHARES = 100
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


# What only a device's owner may do to it over RPC: its firmware, its
# configuration (the dash connection and the device's token are in it, and
# in its file system), rebooting or resetting it. Matched without regard to
# case; granted to others only by exact name.
OWNER_METHODS = ("OTA.*", "Config.*", "FS.*", "Sys.Reboot", "Sys.FactoryReset")
_OWNER_METHOD_PATTERNS = tuple(p.lower() for p in OWNER_METHODS)


def is_owner_method(method: str) -> bool:
    lowered = method.lower()
    return any(fnmatch.fnmatchcase(lowered, p) for p in _OWNER_METHOD_PATTERNS)


def _grants(patterns: list[str], method: str) -> bool:
    """Whether C{patterns} allow C{method}: a method for the owner only by
    its exact name, any other one by a matching pattern."""
    if is_owner_method(method):
        return method in patterns
    return any(fnmatch.fnmatchcase(method, pattern) for pattern in patterns)


def share_scope(key: ApiKey, device: Device) -> dict[str, Any] | None:
    """The scope of the share through which C{key} sees C{device} ({}: the
    default), or None when the key's account owns the device (or it is the
    console)."""
    if key.kind == CONSOLE_KIND or device.account_id == key.account_id:
        return None
    return device.share_scopes.get(key.account_id) or {}


_OWNER_ONLY = ("%s is for the owner of device %s only (firmware, configuration, file system, "
               "reboot: " + ", ".join(OWNER_METHODS) + ")")


def check_rpc(key: ApiKey, device: Device, method: str) -> None:
    if key.kind == CONSOLE_KIND or is_owner_admin(key, device):
        return
    if key.kind == READ_ONLY:
        raise Forbidden("this key is read-only: it may not call methods on devices")
    if key.kind == RESTRICTED:
        allowed = _acl(key, device.id).get("rpc", [])
        if not _grants(allowed, method):
            if is_owner_method(method) and any(
                    fnmatch.fnmatchcase(method, pattern) for pattern in allowed):
                raise Forbidden(
                    (_OWNER_ONLY + "; the key's scope must name it exactly to allow it")
                    % (method, device.id))
            raise Forbidden("this key may not call %s on device %s" % (method, device.id))
    scope = share_scope(key, device)
    if scope is None:
        return
    patterns = scope.get("rpc")
    if patterns is None:
        if is_owner_method(method):
            raise Forbidden(
                ("device %s is shared with this account: " + _OWNER_ONLY
                 + "; its owner may grant it by name in the share's scope")
                % (device.id, method, device.id))
        return
    if not _grants(patterns, method):
        raise Forbidden("device %s is shared with this account, whose share does not allow %s"
                        % (device.id, method))


def check_shadow_update(key: ApiKey, device: Device, update: shadow.ShadowUpdate) -> None:
    sections = set(update.patches)
    if key.kind == READ_ONLY:
        raise Forbidden("this key is read-only: it may not change the shadow")
    if key.kind == CONSOLE_KIND:
        return
    scope = share_scope(key, device)
    if key.kind == ADMIN:
        if scope is not None and sections - {"desired"}:
            raise Forbidden(
                "device %s is shared with this account: only its desired state may be "
                "changed here" % device.id
            )
    else:
        if sections - {"desired"}:
            raise Forbidden("this key may change only the desired state of device %s"
                            % device.id)
        _check_desired_keys(update, _acl(key, device.id).get("write", []),
                            "this key may not %s", device.id)
    if scope is not None and scope.get("write") is not None and "desired" in update.patches:
        _check_desired_keys(update, scope["write"], "device %s is shared with this account, "
                            "whose share does not allow it to %%s" % device.id, device.id)


def _check_desired_keys(update: shadow.ShadowUpdate, allowed: list[str], refusal: str,
                        device_id: str) -> None:
    """Refuse (C{refusal} % what) a change of C{desired} beyond the keys
    C{allowed}."""
    patch = update.patches.get("desired")
    if patch is None:
        # Emptying desired touches every key, allowed or not.
        raise Forbidden(refusal % ("empty the desired state of device %s" % device_id))
    for path in _leaf_paths(patch):
        if not _covered(path, allowed):
            raise Forbidden(refusal % ("change desired.%s of device %s"
                                       % (".".join(path), device_id)))


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
    if event.name in JOB_EVENTS:
        return job_event_payload(key, event)
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


# The notifications of fleet jobs (their ID in place of a device's).
JOB_EVENTS = ("job.state", "job.progress")


def job_event_payload(key: ApiKey, event: Event) -> str | None:
    """A job's notification goes to the keys that may see the job (as
    C{GET /jobs/:id}): every key of its account but a restricted one, and a
    restricted key for the jobs it created (the creator's ID is in the
    data). Devices shared with an account do not bring it the jobs of the
    owner's account: those are the owner's. A job's notifications carry
    counts, never a device's data."""
    if key.kind == CONSOLE_KIND:
        return event.payload
    if event.account_id != key.account_id:
        return None
    if key.kind == RESTRICTED and (
            not isinstance(event.data, dict) or event.data.get("key_id") != key.id):
        return None
    return event.payload


# Reading what a caller gives


def parse_shares(value: Any) -> tuple[tuple[str, ...], dict[str, Any] | None]:
    """
    Who a device is shared with, and how: mDash's comma-separated account
    IDs (a JSON list is accepted too), or an object of account IDs whose
    values are each share's scope (null: the default, see
    L{parse_share_scope}). Return the account IDs and, for the object form,
    the scopes of the shares that have one (None: the IDs only, whose
    shares keep the scope they have).

    @raise Invalid: saying what is wrong.
    """
    if not isinstance(value, dict):
        return parse_shared_with(value), None
    given = {k.strip(): None if v is None else parse_share_scope(v, "shared_with.%s" % k)
             for k, v in value.items()}
    accounts = parse_shared_with(list(given))
    return accounts, {a: given[a] for a in accounts if given.get(a) is not None}


def parse_share_scope(value: Any, where: str = "scope") -> dict[str, Any]:
    """A share's scope: C{{"rpc": [PATTERN, ...], "write": [KEY, ...]}},
    each optional (absent: the default).
    @raise Invalid: saying what is wrong."""
    if not isinstance(value, dict) or set(value) - {"rpc", "write"}:
        raise Invalid('%s must be null or {"rpc"?: [METHOD, ...], "write"?: [KEY, ...]}'
                      % where, "shared_with")
    return {field: _entries(value[field], "%s.%s" % (where, field), field != "rpc")
            for field in ("rpc", "write") if field in value}


def _entries(entries: Any, where: str, dotted: bool) -> list[str]:
    if not isinstance(entries, list) or not all(
        isinstance(e, str) and e and len(e) <= MAX_SCOPE_ENTRY_LENGTH for e in entries
    ):
        raise Invalid("%s must be a list of non-empty strings" % where)
    if len(entries) > MAX_SCOPE_ENTRIES:
        raise Invalid("%s may hold at most %d entries" % (where, MAX_SCOPE_ENTRIES))
    if dotted and any(".." in e or e.startswith(".") or e.endswith(".") for e in entries):
        raise Invalid("%s holds a malformed dotted path" % where)
    return list(dict.fromkeys(entries))


def parse_shared_with(value: Any) -> tuple[str, ...]:
    """mDash's comma-separated account IDs (a JSON list is accepted too).
    @raise Invalid: saying what is wrong."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise Invalid("shared_with must be a string of comma-separated account IDs (or an "
                      "object of account IDs and the scopes of their shares)",
                      "shared_with")
    out: list[str] = []
    if len(items) > MAX_SHARES:
        raise Invalid("shared_with may name at most %d accounts" % MAX_SHARES, "shared_with")
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
        out[device_id] = {field: _entries(acl.get(field, []), "%s.%s" % (where, field),
                                          field != "rpc")
                          for field in ("read", "write", "rpc")}
    return {"devices": out}


def readable_keys(key: ApiKey, device_id: str) -> list[str] | None:
    """The shadow keys (dotted paths) C{key} may read of a device it sees,
    None: all of them (every kind but restricted)."""
    if key.kind != RESTRICTED:
        return None
    return list(_acl(key, device_id).get("read", []))
