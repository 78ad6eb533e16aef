"""
Stored data and the device history:

- ``GET /devices/:id/data``, ``GET /devices/data``, ``GET /data``: the
  points saved for one device (``tags.save``, see L{dashd.domain.timeseries}), or
  for every device the key may see (the last two are the same), oldest
  first. ``skip`` (negative: counted from the end; default: the last
  ``limit``), ``limit`` (1-5000, default 100), ``filter`` (a substring of the
  key or of the JSON value).
  With ``from`` (and ``to``, ``bucket``, ``key``, ``device``): a time range
  instead (L{dashd.app.ranges}), its raw points or, with ``bucket``, in
  buckets with their count, min, max and avg, as series a device and key.
- ``POST /logs {"start": OFFSET, "limit"?, "device_id"?}``: the stored log
  lines and notifications (L{dashd.app.history}), oldest first, from OFFSET
  (negative: that many before the end); the reply's ``next`` is the offset
  of the following page.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from dashd.api.base import ApiBase, app, object_body
from dashd.app import ranges, records
from dashd.app.ranges import DataRanges
from dashd.domain.model import ApiKey
from dashd.domain.errors import Invalid

DATA_ARGS = ("skip", "limit", "filter", "access_token")
RANGE_ARGS = ("from", "to", "bucket", "key", "device", "limit", "access_token")
_INTEGER = re.compile(r"-?[0-9]{1,19}\Z")
_NUMBER = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,9})?\Z")


def _time(raw: bytes, name: str) -> float:
    """A time of a query: seconds since the epoch (fractions allowed),
    negative: seconds before now, or an ISO 8601 date and time (UTC unless
    it says)."""
    text = raw.decode("latin-1")
    if _NUMBER.match(text):
        return float(text)
    try:
        when = datetime.datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return when.timestamp()
    except (ValueError, OverflowError):
        raise Invalid("%s must be seconds since the epoch (negative: before now) or an ISO 8601 "
                      "time such as 2026-11-29T05:00:00Z, not %r" % (name, text[:40]), name)


def _names(request: Any, name: str) -> list[str] | None:
    """A list argument: repeated, or comma-separated (None: not given)."""
    values = request.args.get(name.encode("ascii"))
    if values is None:
        return None
    out: list[str] = []
    for value in values:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("%s is not valid UTF-8" % name, name)
        out.extend(part.strip() for part in text.split(","))
    return out


def _int(value: Any, name: str) -> int:
    """An integer from a query argument or a JSON body (its range is the
    use case's to check)."""
    if isinstance(value, (bytes, str)):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if not _INTEGER.match(text):
            raise Invalid("%s must be an integer, not %r" % (name, text[:32]), name)
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid("%s must be an integer" % name, name)
    return value


class DataRoutes(ApiBase):
    _ranges: DataRanges | None = None

    async def _range(self, request: Any, key: ApiKey, device_id: str | None) -> bytes:
        names = RANGE_ARGS if device_id is None else tuple(a for a in RANGE_ARGS if a != "device")
        unknown = sorted(a.decode("latin-1") for a in request.args
                         if a.decode("latin-1") not in names)
        if unknown:
            raise Invalid("unknown query argument(s) with from: %s (allowed: %s)"
                          % (", ".join(unknown), ", ".join(names[:-1])))
        args = {k.decode("latin-1"): v[0] for k, v in request.args.items()}
        if "from" not in args:
            raise Invalid("from is required with to and bucket (the start of the range)", "from")
        if self._ranges is None:
            self._ranges = DataRanges(self.application.fleet.store, self.devices,
                                      self.application.clock)
        devices = [device_id] if device_id is not None else _names(request, "device")
        result = await self._ranges.query(
            key, devices, _names(request, "key"), _time(args["from"], "from"),
            _time(args["to"], "to") if "to" in args else None,
            _int(args["bucket"], "bucket") if "bucket" in args else None,
            _int(args["limit"], "limit") if "limit" in args else ranges.DEFAULT_RANGE_LIMIT)
        return self.json(request, result)

    async def _data(self, request: Any, device_id: str | None) -> bytes:
        key = await self.authenticate(request)
        if any(a in request.args for a in (b"from", b"to", b"bucket", b"key", b"device")):
            return await self._range(request, key, device_id)
        unknown = sorted(a.decode("latin-1") for a in request.args
                         if a.decode("latin-1") not in DATA_ARGS)
        if unknown:
            raise Invalid("unknown query argument(s): %s (allowed: skip, limit, filter)"
                          % ", ".join(unknown))
        args = {k.decode("latin-1"): v[0] for k, v in request.args.items()}
        limit = _int(args["limit"], "limit") if "limit" in args else records.DEFAULT_DATA_LIMIT
        skip = _int(args["skip"], "skip") if "skip" in args else None
        text = None
        if "filter" in args:
            try:
                text = args["filter"].decode("utf-8")
            except UnicodeDecodeError:
                raise Invalid("filter is not valid UTF-8", "filter")
        points = await self.records.data(key, device_id, skip, limit, text)
        return self.json(request, points)

    @app.route("/api/v2/devices/<device_id>/data", methods=["GET"])
    def device_data(self, request: Any, device_id: str) -> Any:
        return self._data(request, device_id)

    @app.route("/api/v2/devices/data", methods=["GET"])
    def fleet_data(self, request: Any) -> Any:
        return self._data(request, None)

    @app.route("/api/v2/data", methods=["GET"])
    def all_data(self, request: Any) -> Any:
        return self._data(request, None)

    @app.route("/api/v2/logs", methods=["POST"])
    async def logs(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, {"start", "limit", "device_id"})
        for name in ("start", "limit"):
            if isinstance(body.get(name), str):
                raise Invalid("%s must be an integer" % name, name)
        start = _int(body.get("start", 0), "start")
        limit = _int(body.get("limit", records.DEFAULT_LOGS_LIMIT), "limit")
        device_id = body.get("device_id")
        if "device_id" in body and not isinstance(device_id, str):
            raise Invalid("device_id must be a string", "device_id")
        events, following = await self.records.logs(key, device_id, start, limit)
        return self.json(request, {"events": events, "next": following})
