"""The two WebSocket doors: /api/v2/rpc for devices, /api/v2/notify for
subscribers. Both authenticate before the upgrade."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from dashd.api.base import ApiBase, app, bearer_secret, object_body
from dashd.channel.websocket import Handover
from dashd.domain.errors import Unauthenticated, Unavailable
from dashd.domain.model import Device

log = Logger()


class ChannelRoutes(ApiBase):
    # The Klein routes stay for the OpenAPI description; requests come in
    # through dashd.api.door, which calls the two methods after them.

    @app.route("/api/v2/rpc", branch=False)
    async def device_channel(self, request: Any) -> Any:
        return await self.device_channel_resource(request)

    @app.route("/api/v2/notify", branch=False)
    async def notify_channel(self, request: Any) -> Any:
        return await self.notify_channel_resource(request)

    def device_channel_resource(self, request: Any) -> Deferred[Any]:
        # Refusals are logged (and counted per address) by the authenticator.
        # A Deferred chain, not a coroutine: a refusal awaited in a coroutine
        # leaves the failure and the frames in a reference cycle, and a
        # fleet with a wrong token is refused all day.
        try:
            secret = bearer_secret(request)
        except Unauthenticated:
            return fail()
        d = self.application.auth.device(secret, self.client_address(request))
        return d.addCallback(self._device_channel)

    def _device_channel(self, device: Device) -> Any:
        return WebSocketResource(Handover(self.device_factory, device=device,
                                          fleet=self.application.fleet))

    async def notify_channel_resource(self, request: Any) -> Any:
        tickets = request.args.get(b"ticket")
        if tickets and self.application.tickets is not None:
            # A ticket stands for its key, once (dashd.app.tickets).
            ticket = tickets[0].decode("latin-1")
            key = await self.application.tickets.redeem(ticket, self.client_address(request))
            request.dashd_key = key
        else:
            key = await self.authenticate(request)
        return WebSocketResource(Handover(self.notify_factory, key=key,
                                          hub=self.application.fleet.hub))

    @app.route("/api/v2/notify/ticket", methods=["POST"])
    async def notify_ticket(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        object_body(request, set())
        if self.application.tickets is None:
            raise Unavailable("this dashd has no notification stream")
        ticket, expires = await self.application.tickets.issue(key)
        request.setHeader(b"cache-control", b"no-store")
        return self.json(request, {"ticket": ticket, "expires": expires,
                                   "url": "/api/v2/notify?ticket=" + ticket})
