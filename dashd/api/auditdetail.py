"""
What an audit entry says besides its method and path (``detail``), so that
the audit log can say it in words ("renamed boiler to boiler 2", "changed
desired.led"): set on the request by the route that knows, recorded by
L{dashd.api.audit.entry_for}. Only names and the dotted paths a change
touched, never the values written.
"""

from __future__ import annotations

from typing import Any

# Paths named in one entry, at most.
MAX_PATHS = 32


def changed_paths(patch: Any, prefix: str = "") -> list[str]:
    """The dotted paths a merge patch touches (objects descended into)."""
    out: list[str] = []
    if not isinstance(patch, dict):
        return [prefix] if prefix else []
    for k, v in patch.items():
        path = "%s.%s" % (prefix, k) if prefix else str(k)
        if isinstance(v, dict) and v:
            out.extend(changed_paths(v, path))
        else:
            out.append(path)
    return out


def device_change(body: dict[str, Any], old_name: str | None) -> dict[str, Any] | None:
    """The detail of a change of a device (POST /devices/:id)."""
    detail: dict[str, Any] = {}
    if isinstance(body.get("name"), str):
        detail["name"] = [old_name, body["name"].strip()]
    if "shared_with" in body:
        detail["sharing"] = True
    shadow = body.get("shadow")
    if isinstance(shadow, dict):
        paths: list[str] = []
        state = shadow.get("state")
        if isinstance(state, dict):
            for section in ("desired", "reported"):
                if section in state:
                    paths.extend(changed_paths(state[section], section)
                                 if state[section] is not None else [section])
        if "tags" in shadow:
            paths.extend(changed_paths(shadow["tags"], "tags")
                         if shadow["tags"] is not None else ["tags"])
        if paths:
            detail["changed"] = paths[:MAX_PATHS]
    return detail or None


def note(request: Any, detail: dict[str, Any] | None) -> None:
    request.dashd_audit_detail = detail
