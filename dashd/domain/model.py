"""
The records dashd keeps, as the store hands them out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from dashd.domain import shadow
from dashd.domain.errors import Invalid

# admin: everything in its account; read-only: sees, changes nothing;
# restricted: a customer's key for listed devices (see dashd.domain.access).
KEY_KINDS = ("admin", "read-only", "restricted")

# Names of devices, keys and accounts.
MAX_NAME_LENGTH = 128


class Unset(enum.Enum):
    """A field the caller did not give (where null is a value, and wrong)."""

    UNSET = "unset"


UNSET = Unset.UNSET


def check_name(value: Any, field: str = "name") -> str:
    """A name as given, without leading and trailing white space.
    @raise Invalid: not a non-empty string of at most MAX_NAME_LENGTH."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("%s must be a non-empty string" % field, field)
    if len(value) > MAX_NAME_LENGTH:
        raise Invalid("%s must be at most %d characters" % (field, MAX_NAME_LENGTH), field)
    return value.strip()


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
    # The scope the owner gave some shares (account ID -> {"rpc": [...],
    # "write": [...]}, see dashd.domain.access); a share not named here has
    # the default scope.
    share_scopes: dict[str, Any] = field(default_factory=dict)


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
