"""
Stored data and the device history:

- ``GET /devices/:id/data``, ``GET /devices/data``, ``GET /data``: the
  points saved for one device (``tags.save``, see L{dashd.domain.timeseries}), or
  for every device the key may see (the last two are the same), oldest
  first. ``skip`` (negative: counted from the end; default: the last
  ``limit``), ``limit`` (1-5000, default 100), ``filter`` (a substring of the
  key or of the JSON value).
- ``POST /logs {"start": OFFSET, "limit"?, "device_id"?}``: the stored log
  lines and notifications (L{dashd.app.history}), oldest first, from OFFSET
  (negative: that many before the end); the reply's ``next`` is the offset
  of the following page.
"""

from __future__ import annotations

import re
from typing import Any

from dashd.api.base import ApiBase, app, object_body
from dashd.app import records
from dashd.domain.errors import Invalid

DATA_ARGS = ("skip", "limit", "filter", "access_token")
_INTEGER = re.compile(r"-?[0-9]{1,19}\Z")


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
    async def _data(self, request: Any, device_id: str | None) -> bytes:
        key = await self.authenticate(request)
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
