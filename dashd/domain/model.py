"""
The records dashd keeps, as the store hands them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dashd.domain import shadow

# admin: everything in its account; read-only: sees, changes nothing;
# restricted: a customer's key for listed devices (see dashd.domain.access).
KEY_KINDS = ("admin", "read-only", "restricted")


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    created: float
    # The first account: its admins manage accounts.
    operator: bool = False


@dataclass(frozen=True)
class Device:
    id: str
    account_id: str
    name: str
    created: float
    shared_with: tuple[str, ...] = ()
    last_seen: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # The stored shadow document (see dashd.domain.shadow), without the delta.
    shadow: dict[str, Any] = field(default_factory=shadow.empty)


@dataclass(frozen=True)
class ApiKey:
    id: str
    account_id: str
    name: str
    kind: str
    created: float
    expires: float | None = None
    # For restricted keys: {"devices": {DEVICE_ID: {"read": [...],
    # "write": [...], "rpc": [...]}}}; None for the other kinds.
    scope: dict[str, Any] | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires
