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

from dashd.domain import access
from dashd.api.base import ApiBase, app, object_body
from dashd.errors import BadRequest, Forbidden

MAX_DATA_LIMIT = 5000
DEFAULT_DATA_LIMIT = 100
MAX_LOGS_LIMIT = 1000
DEFAULT_LOGS_LIMIT = 100
MAX_FILTER_LENGTH = 256
DATA_ARGS = ("skip", "limit", "filter", "access_token")
_INTEGER = re.compile(r"-?[0-9]{1,19}\Z")


def _int(value: Any, name: str, minimum: int, maximum: int) -> int:
    if isinstance(value, (bytes, str)):
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if not _INTEGER.match(text):
            raise BadRequest("%s must be an integer, not %r" % (name, text[:32]))
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("%s must be an integer" % name)
    if not minimum <= value <= maximum:
        raise BadRequest("%s must be between %d and %d" % (name, minimum, maximum))
    return value


class DataRoutes(ApiBase):
    async def _data(self, request: Any, device_id: str | None) -> bytes:
        key = await self.authenticate(request)
        if key.kind == access.RESTRICTED:
            raise Forbidden("restricted keys may not read stored data")
        unknown = sorted(a.decode("latin-1") for a in request.args
                         if a.decode("latin-1") not in DATA_ARGS)
        if unknown:
            raise BadRequest("unknown query argument(s): %s (allowed: skip, limit, filter)"
                             % ", ".join(unknown))
        args = {k.decode("latin-1"): v[0] for k, v in request.args.items()}
        limit = DEFAULT_DATA_LIMIT
        if "limit" in args:
            limit = _int(args["limit"], "limit", 1, MAX_DATA_LIMIT)
        skip = -limit
        if "skip" in args:
            skip = _int(args["skip"], "skip", -(2**62), 2**62)
        text = None
        if "filter" in args:
            try:
                text = args["filter"].decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest("filter is not valid UTF-8")
            if not text or len(text) > MAX_FILTER_LENGTH:
                raise BadRequest("filter must be 1 to %d characters" % MAX_FILTER_LENGTH)
        if device_id is not None:
            await self.visible_device(key, device_id)
        points = await self.fleet.store.query_data(key.account_id, device_id, skip, limit, text)
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
        if key.kind == access.RESTRICTED:
            raise Forbidden("restricted keys may not read device logs")
        body = object_body(request, {"start", "limit", "device_id"})
        for name in ("start", "limit"):
            if isinstance(body.get(name), str):
                raise BadRequest("%s must be an integer" % name)
        start = _int(body.get("start", 0), "start", -(2**62), 2**62)
        limit = _int(body.get("limit", DEFAULT_LOGS_LIMIT), "limit", 1, MAX_LOGS_LIMIT)
        device_id = body.get("device_id")
        if "device_id" in body:
            if not isinstance(device_id, str):
                raise BadRequest("device_id must be a string")
            await self.visible_device(key, device_id)
        events, following = await self.fleet.store.query_events(
            key.account_id, device_id, start, limit
        )
        return self.json(request, {"events": events, "next": following})
