"""/api/v2/devices: register, list, read, change and delete devices, and
rotate their tokens (L{dashd.app.devices})."""

from __future__ import annotations

from typing import Any

from werkzeug.routing import BaseConverter

from dashd.api import auditdetail
from dashd.api.base import ApiBase, app, int_arg, object_body, text_arg
from dashd.domain.model import UNSET


class DeviceIdConverter(BaseConverter):
    """A device ID as the last part of a path: anything but ``data`` and
    ``count``, so that ``/devices/data`` (the stored data of every device,
    dashd.api.data) and ``/devices/count`` are not also devices, whose POST
    and DELETE would then be advertised."""

    regex = "(?!(?:data|count)$)[^/]+"


app.url_map.converters["device"] = DeviceIdConverter


class DeviceRoutes(ApiBase):
    @app.route("/api/v2/devices", methods=["GET"])
    async def list_devices(self, request: Any) -> bytes:
        """Every device the key sees, or those ?where= selects (the device
        query language, dashd.domain.query), in ?order=, a page of ?limit=
        at a time: the next page's ?cursor= is in the X-Next-Cursor header."""
        key = await self.authenticate(request)
        where, order = text_arg(request, "where"), text_arg(request, "order")
        cursor = text_arg(request, "cursor")
        limit = int_arg(request, "limit", 0) if request.args.get(b"limit") else None
        devices, following = await self.devices.select(
            key, where, order if order is not None else "created", limit, cursor)
        if following is not None:
            request.setHeader(b"X-Next-Cursor", following.encode("ascii"))
        return self.json(request, [self.view(key, d) for d in devices])

    @app.route("/api/v2/devices/count", methods=["GET"])
    async def count_devices(self, request: Any) -> bytes:
        """How many devices the key sees that ?where= selects."""
        key = await self.authenticate(request)
        count = await self.devices.count(key, text_arg(request, "where"))
        return self.json(request, {"count": count})

    @app.route("/api/v2/devices", methods=["POST"])
    async def register_device(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, {"name", "shared_with"})
        device, token = await self.devices.register(
            key, body.get("name", UNSET), body.get("shared_with", UNSET))
        auditdetail.note(request, {"name": [None, device.name]})
        view = self.view(key, device)
        view["token"] = token
        return self.json(request, view)

    @app.route("/api/v2/devices/<device:device_id>", methods=["GET"])
    async def get_device(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        device, ota = await self.devices.get(key, device_id)
        # With the status of its last firmware update (dashd.app.firmware),
        # or null (restricted keys' views have no such field).
        return self.json(request, self.view(key, device, ota=ota))

    @app.route("/api/v2/devices/<device:device_id>", methods=["POST"])
    async def change_device(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, {"name", "shared_with", "shadow"})
        old_name = None
        if "name" in body:  # for the audit log: "renamed X to Y"
            old_name = (await self.devices.visible(key, device_id, live=True)).name
        auditdetail.note(request, auditdetail.device_change(body, old_name))
        device = await self.devices.change(
            key, device_id, body.get("name", UNSET), body.get("shared_with", UNSET),
            body.get("shadow", UNSET))
        return self.json(request, self.view(key, device))

    @app.route("/api/v2/devices/<device:device_id>", methods=["DELETE"])
    async def delete_device(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        await self.devices.delete(key, device_id)
        return self.json(request, {"id": device_id, "deleted": True})

    @app.route("/api/v2/devices/<device_id>/token", methods=["POST"])
    async def rotate_token(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        object_body(request, set())
        _, token = await self.devices.rotate_token(key, device_id)
        return self.json(request, {"id": device_id, "token": token})
