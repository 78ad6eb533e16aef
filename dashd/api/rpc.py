"""/api/v2/devices/:id/rpc/:method: the REST to JSON-RPC bridge (requests
come in through L{dashd.api.door}, which calls L{RpcRoutes.rpc_call}; the
Klein route stays for HEAD and the OpenAPI description)."""

from __future__ import annotations

from typing import Any

from dashd.domain import access
from dashd.api.base import ApiBase, app, json_body, number_arg
from dashd.errors import BadRequest

MAX_METHOD_LENGTH = 128


class RpcRoutes(ApiBase):
    @app.route("/api/v2/devices/<device_id>/rpc/<method>", methods=["GET", "POST"])
    async def call_device(self, request: Any, device_id: str, method: str) -> bytes:
        return await self.rpc_call(request, device_id, method)

    async def rpc_call(self, request: Any, device_id: str, method: str) -> bytes:
        key = await self.authenticate(request)
        if len(method) > MAX_METHOD_LENGTH:
            raise BadRequest("method names are at most %d characters" % MAX_METHOD_LENGTH)
        timeout = number_arg(
            request, "timeout", self.config["rpc.default_timeout"], self.config["rpc.max_timeout"]
        )
        params = json_body(request) if request.method == b"POST" else None
        device = await self.visible_device(key, device_id, live=True)
        access.check_rpc(key, device, method)
        result = await self.fleet.call(device, method, params, timeout)
        return self.json(request, result)
