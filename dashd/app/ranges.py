"""
Stored data over a time range (``GET .../data?from=&to=``): the raw points
of a range, or the range in buckets of a chosen width with each bucket's
count and the lowest, highest and average of its numbers (server-side
downsampling: a week of 3-second data of ten devices is one request, see
L{dashd.store.ranges_sql}).

Several devices and keys in one request. A restricted key reads the keys
its scope lets it read (``read``) of its devices, and nothing else: the
keys it names must be among them; naming none means all of them.
"""

from __future__ import annotations

import math
import time
from typing import Any

from twisted.internet.interfaces import IReactorTime

from dashd.app.devices import Devices
from dashd.domain import access, timeseries
from dashd.domain.errors import Forbidden, Invalid
from dashd.domain.model import ApiKey
from dashd.store import IStore

# Buckets in one series, at most: (to - from) / bucket.
MAX_BUCKETS = 10000
# Devices in one request, at most.
MAX_DEVICES = 50
# Keys named in one request, at most.
MAX_KEYS = 64
MAX_RANGE_LIMIT = 5000  # as by position (one limit in the API's description)
DEFAULT_RANGE_LIMIT = 1000
# Times beyond this (seconds since the epoch, about the year 5138) are not times.
MAX_TIME = 1e11


class RangeStats:
    """What the metrics say of range queries (dashd_data_range_*): counts
    by kind and the seconds they took, for every dashd of the process."""

    buckets = 0
    raw = 0
    seconds = 0.0


class DataRanges:
    def __init__(self, store: IStore, devices: Devices, clock: IReactorTime) -> None:
        self._store = store
        self._devices = devices
        self._clock = clock

    def _time(self, value: float, name: str, now: float) -> float:
        """A time: seconds since the epoch, or (negative) seconds before now."""
        if not math.isfinite(value) or abs(value) > MAX_TIME:
            raise Invalid("%s must be seconds since the epoch, or negative: seconds before now"
                          % name, name)
        return now + value if value < 0 else value

    async def query(self, by: ApiKey, device_ids: list[str] | None, keys: list[str] | None,
                    start: float, end: float | None = None, bucket: int | None = None,
                    limit: int = DEFAULT_RANGE_LIMIT) -> dict[str, Any]:
        """
        The stored data of [start, end) (end None: now) of C{device_ids}
        (None: every device C{by} may see, at most L{MAX_DEVICES}) and
        C{keys} (dotted paths covering their sub-keys; None: all): in
        buckets of C{bucket} seconds, or (None) the first C{limit} raw
        points and where to continue.

        @raise Invalid: a bad range, bucket, limit or list.
        @raise Forbidden: a restricted key naming a key it may not read.
        @raise NotFound: a device the key may not see.
        """
        now = self._clock.seconds()
        start = self._time(start, "from", now)
        end = now if end is None else self._time(end, "to", now)
        if not start < end:
            raise Invalid("from must be before to (from %s, to %s)" % (_text(start), _text(end)),
                          "from")
        if bucket is not None:
            if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
                raise Invalid("bucket must be a whole number of seconds, at least 1", "bucket")
            if (end - start) / bucket > MAX_BUCKETS:
                raise Invalid(
                    "a range of %s s in buckets of %d s makes more than %d buckets: choose "
                    "wider buckets (at least %d s)"
                    % (_text(end - start), bucket, MAX_BUCKETS,
                       math.ceil((end - start) / MAX_BUCKETS)), "bucket")
        if not 1 <= limit <= MAX_RANGE_LIMIT:
            raise Invalid("limit must be between 1 and %d" % MAX_RANGE_LIMIT, "limit")
        if keys is not None:
            if not keys or len(keys) > MAX_KEYS:
                raise Invalid("key: name 1 to %d keys" % MAX_KEYS, "key")
            for k in keys:
                parts = k.split(".")
                if not k or len(k) > timeseries.MAX_KEY_LENGTH or not all(parts):
                    raise Invalid("key: %r is not a dotted path such as \"env.temp\"" % k[:64],
                                  "key")
        if device_ids is None:
            seen = await self._devices.list(by)
            if len(seen) > MAX_DEVICES:
                raise Invalid("this key sees %d devices: name at most %d with device="
                              % (len(seen), MAX_DEVICES), "device")
            device_ids = [d.id for d in seen]
        else:
            if not device_ids or len(device_ids) > MAX_DEVICES:
                raise Invalid("device: name 1 to %d devices" % MAX_DEVICES, "device")
            device_ids = list(dict.fromkeys(device_ids))
            for device_id in device_ids:
                await self._devices.visible(by, device_id, live=True)
        selection = []
        for device_id in device_ids:
            readable = access.readable_keys(by, device_id)
            wanted = keys
            if readable is not None:
                if keys is None:
                    wanted = readable
                else:
                    refused = [k for k in keys if not timeseries.covers(readable, k)]
                    if refused:
                        raise Forbidden("this key may not read %s of device %s"
                                        % (", ".join(refused), device_id))
                if not wanted:
                    continue
            selection.append((device_id, wanted))
        out: dict[str, Any] = {"from": start, "to": end, "bucket": bucket}
        started = time.monotonic()
        if bucket is not None:
            out["series"] = await self._store.query_buckets(selection, start, end, bucket)
            RangeStats.buckets += 1
        else:
            out["series"], out["next"] = await self._store.query_range(selection, start, end,
                                                                       limit)
            RangeStats.raw += 1
        RangeStats.seconds += time.monotonic() - started
        return out


def _text(seconds: float) -> str:
    return ("%.3f" % seconds).rstrip("0").rstrip(".")
