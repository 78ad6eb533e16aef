"""
The records dashd keeps, as the store hands them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dashd import shadow

KEY_KINDS = ("admin",)


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    created: float


@dataclass(frozen=True)
class Device:
    id: str
    account_id: str
    name: str
    created: float
    shared_with: tuple[str, ...] = ()
    last_seen: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # The stored shadow document (see dashd.shadow), without the delta.
    shadow: dict[str, Any] = field(default_factory=shadow.empty)


@dataclass(frozen=True)
class ApiKey:
    id: str
    account_id: str
    name: str
    kind: str
    created: float
    expires: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def can_see(self, account_id: str, shared_with: tuple[str, ...]) -> bool:
        return account_id == self.account_id or self.account_id in shared_with
