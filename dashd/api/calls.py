"""Queued calls (L{dashd.app.calls}): ``POST /api/v2/devices/:id/calls``
queues one (202), ``GET /api/v2/devices/:id/calls`` lists a device's,
``GET`` and ``DELETE /api/v2/calls/:id`` read and cancel one. The bridge's
``?queue=SECONDS`` is in L{dashd.api.rpc}."""

from __future__ import annotations

from typing import Any

from dashd.api.base import ApiBase, app, int_arg, object_body, text_arg
from dashd.domain import calls
from dashd.domain.errors import Invalid
from dashd.domain.model import UNSET

_FIELDS = {"method", "params", "expires_in", "expires_at", "timeout", "retry"}


class CallRoutes(ApiBase):
    @app.route("/api/v2/devices/<device_id>/calls", methods=["POST"])
    async def queue_call(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, _FIELDS)
        if "method" not in body:
            raise Invalid("method is required: the device's method to call", "method")
        call = await self.application.calls.queue(
            key, device_id, body["method"], body.get("params"),
            body.get("expires_in", UNSET), body.get("expires_at", UNSET),
            body.get("timeout", UNSET), body.get("retry", UNSET))
        request.setResponseCode(202)
        request.setHeader(b"Location", ("/api/v2/calls/%s" % call.id).encode("ascii"))
        return self.json(request, calls.view(call))

    @app.route("/api/v2/devices/<device_id>/calls", methods=["GET"])
    async def list_calls(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        state = text_arg(request, "state")
        states = tuple(s.strip() for s in state.split(",")) if state is not None else None
        cursor = text_arg(request, "cursor")
        before = None
        if cursor is not None:
            if not cursor.isdigit():
                raise Invalid("cursor is not one this API gave", "cursor")
            before = int(cursor)
        found, following = await self.application.calls.list(
            key, device_id, states, int_arg(request, "limit", 50), before)
        if following is not None:
            request.setHeader(b"X-Next-Cursor", str(following).encode("ascii"))
        return self.json(request, [calls.view(c) for c in found])

    @app.route("/api/v2/calls/<call_id>", methods=["GET"])
    async def get_call(self, request: Any, call_id: str) -> bytes:
        key = await self.authenticate(request)
        call, _ = await self.application.calls.get(key, call_id)
        return self.json(request, calls.view(call))

    @app.route("/api/v2/calls/<call_id>", methods=["DELETE"])
    async def cancel_call(self, request: Any, call_id: str) -> bytes:
        key = await self.authenticate(request)
        call, _ = await self.application.calls.cancel(key, call_id)
        # For the audit log: the device the call was for.
        request.dashd_device_id = call.device_id
        return self.json(request, calls.view(call))
