"""
What dashd has kept and people read back: the stored data points
(L{dashd.domain.timeseries}), the device history (L{dashd.app.history})
and the audit log. Long reads; the stores run them off their writer.
"""

from __future__ import annotations

from typing import Any

from dashd.app.devices import Devices
from dashd.domain import access
from dashd.domain.errors import Forbidden, Invalid
from dashd.domain.model import ApiKey
from dashd.store import IStore

MAX_DATA_LIMIT = 5000
DEFAULT_DATA_LIMIT = 100
MAX_LOGS_LIMIT = 1000
DEFAULT_LOGS_LIMIT = 100
MAX_AUDIT_LIMIT = 1000
DEFAULT_AUDIT_LIMIT = 100
MAX_FILTER_LENGTH = 256
# Offsets are counted from the start (or, negative, from the end).
MAX_OFFSET = 2**62


class Records:
    def __init__(self, store: IStore, devices: Devices) -> None:
        self._store = store
        self._devices = devices

    async def data(self, by: ApiKey, device_id: str | None, skip: int | None = None,
                   limit: int = DEFAULT_DATA_LIMIT, text: str | None = None,
                   ) -> list[dict[str, Any]]:
        """Stored points of one device, or of every device C{by} may see,
        oldest first: C{limit} from C{skip} (negative: from the end; None:
        the last C{limit}), only those whose key or value holds C{text}."""
        if by.kind == access.RESTRICTED:
            raise Forbidden("restricted keys may not read stored data")
        _check_range("limit", limit, 1, MAX_DATA_LIMIT)
        if skip is None:
            skip = -limit
        _check_range("skip", skip, -MAX_OFFSET, MAX_OFFSET)
        if text is not None and not 0 < len(text) <= MAX_FILTER_LENGTH:
            raise Invalid("filter must be 1 to %d characters" % MAX_FILTER_LENGTH, "filter")
        if device_id is not None:
            await self._devices.visible(by, device_id)
        return await self._store.query_data(by.account_id, device_id, skip, limit, text)

    async def logs(self, by: ApiKey, device_id: str | None, start: int = 0,
                   limit: int = DEFAULT_LOGS_LIMIT) -> tuple[list[dict[str, Any]], int]:
        """Stored log lines and notifications from offset C{start}; fire
        with them and the offset of the following page.

        Offsets are the order the events were stored in (so that a reader
        following with the next offset misses none, those stored late
        included); a page lists its events in the order they happened
        (their timestamps, each taken where it happened): events of several
        nodes, or kept while the database was away, are stored later than
        they happened."""
        if by.kind == access.RESTRICTED:
            raise Forbidden("restricted keys may not read device logs")
        _check_range("start", start, -MAX_OFFSET, MAX_OFFSET)
        _check_range("limit", limit, 1, MAX_LOGS_LIMIT)
        if device_id is not None:
            await self._devices.visible(by, device_id)
        events, following = await self._store.query_events(by.account_id, device_id, start,
                                                           limit)
        events.sort(key=lambda e: (e["timestamp"], e["offset"]))
        return events, following

    async def audit(self, by: ApiKey, start: int = 0,
                    limit: int = DEFAULT_AUDIT_LIMIT) -> tuple[list[dict[str, Any]], int]:
        access.require_admin(by, "read the audit log")
        _check_range("start", start, -MAX_OFFSET, MAX_OFFSET)
        _check_range("limit", limit, 1, MAX_AUDIT_LIMIT)
        return await self._store.query_audit(by.account_id, start, limit)


def _check_range(name: str, value: int, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid("%s must be an integer" % name, name)
    if not minimum <= value <= maximum:
        raise Invalid("%s must be between %d and %d" % (name, minimum, maximum), name)
