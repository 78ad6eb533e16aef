"""/api/v2/devices/:id/rpc/:method: the REST to JSON-RPC bridge (requests
come in through L{dashd.api.door}, which calls L{RpcRoutes.rpc_call}; the
Klein route stays for HEAD and the OpenAPI description)."""

from __future__ import annotations

from typing import Any

from dashd.api.base import ApiBase, app, json_body, number_arg
from dashd.api.status import HttpError
from dashd.domain import calls


class RpcRoutes(ApiBase):
    @app.route("/api/v2/devices/<device_id>/rpc/<method>", methods=["GET", "POST"])
    async def call_device(self, request: Any, device_id: str, method: str) -> bytes:
        if request.method == b"HEAD":
            # (Added by the URL map for GET.) A call is not a read: nothing
            # may reach the device for a request that wants no answer.
            raise HttpError(405, "HEAD is not allowed on %s: a call is made with GET or POST"
                            % request.path.decode("latin-1"), {"Allow": "GET, POST"})
        return await self.rpc_call(request, device_id, method)

    async def rpc_call(self, request: Any, device_id: str, method: str) -> bytes:
        key = await self.authenticate(request)
        timeout = number_arg(
            request, "timeout", self.config["rpc.default_timeout"], self.config["rpc.max_timeout"]
        )
        params = json_body(request) if request.method == b"POST" else None
        if request.args.get(b"queue") and not self.devices.online(device_id):
            # ?queue=SECONDS: an offline device's call is queued for that
            # long (202 with the call), instead of 503.
            wait = number_arg(request, "queue", 1, self.config["calls.max_expires_in"])
            call = await self.application.calls.queue(
                key, device_id, method, params, expires_in=wait, timeout=timeout)
            request.setResponseCode(202)
            request.setHeader(b"Location", ("/api/v2/calls/%s" % call.id).encode("ascii"))
            return self.json(request, calls.view(call))
        if request.args.get(b"queue"):
            number_arg(request, "queue", 1, self.config["calls.max_expires_in"])
        result = await self.devices.call(key, device_id, method, params, timeout)
        return self.json(request, result)
