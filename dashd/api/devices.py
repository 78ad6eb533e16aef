"""/api/v2/devices: register, list, read, change and delete devices, and
rotate their tokens."""

from __future__ import annotations

import re
from typing import Any

from twisted.logger import Logger
from werkzeug.routing import BaseConverter

from dashd.domain import access, shadow, timeseries
from dashd.api.base import ApiBase, app, name_value, object_body
from dashd.errors import BadRequest, Conflict, NotFound, TooLarge
from dashd.store import NotFound as StoreNotFound

log = Logger()


ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class DeviceIdConverter(BaseConverter):
    """A device ID as the last part of a path: anything but ``data``, so that
    ``/devices/data`` (the stored data of every device, dashd.api.data) is
    not also a device, whose POST and DELETE would then be advertised."""

    regex = "(?!data$)[^/]+"


app.url_map.converters["device"] = DeviceIdConverter


def shared_with_value(value: Any) -> tuple[str, ...]:
    """mDash's comma-separated account IDs (a JSON list is accepted too)."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise BadRequest("shared_with must be a string of comma-separated account IDs")
    out: list[str] = []
    for item in items:
        if item and item not in out:
            if not ACCOUNT_ID.match(item):
                raise BadRequest(
                    "shared_with holds %r, which is not an account ID (letters, digits, "
                    "'_', '.', ':' and '-', at most 64)" % item[:70]
                )
            out.append(item)
    return tuple(out)


class DeviceRoutes(ApiBase):
    @app.route("/api/v2/devices", methods=["GET"])
    async def list_devices(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        devices = await self.fleet.store.list_devices(key.account_id)
        return self.json(request, [self.view(key, d) for d in devices if access.sees(key, d)])

    @app.route("/api/v2/devices", methods=["POST"])
    async def register_device(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        access.require_admin(key, "register devices")
        body = object_body(request, {"name", "shared_with"})
        name = name_value(body["name"]) if "name" in body else None
        shared_with = shared_with_value(body["shared_with"]) if "shared_with" in body else ()
        device, token = await self.fleet.register_device(key.account_id, name, shared_with)
        view = self.view(key, device)
        view["token"] = token
        return self.json(request, view)

    @app.route("/api/v2/devices/<device:device_id>", methods=["GET"])
    async def get_device(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        device = await self.visible_device(key, device_id)
        view = self.view(key, device)
        if key.kind != access.RESTRICTED:
            # The status of its last firmware update (dashd.app.firmware), or null.
            view["ota"] = await self.fleet.store.get_ota_status(device_id)
        return self.json(request, view)

    @app.route("/api/v2/devices/<device:device_id>", methods=["POST"])
    async def change_device(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, {"name", "shared_with", "shadow"})
        device = await self.visible_device(key, device_id)
        name = None
        if "name" in body:
            access.require_owner(key, device, "rename a device")
            name = name_value(body["name"])
        shared_with = None
        if "shared_with" in body:
            access.require_owner(key, device, "change a device's sharing")
            shared_with = shared_with_value(body["shared_with"])
        update = None
        if "shadow" in body:
            try:
                update = shadow.parse_update(body["shadow"], allow_tags=True)
                tags = update.patches.get("tags")
                if tags and "save" in tags:
                    timeseries.check_save_list(tags["save"])
            except (shadow.InvalidShadowUpdate, timeseries.InvalidSaveList) as e:
                raise BadRequest(str(e))
            access.check_shadow_update(key, device, update)
        try:
            device = await self.fleet.update_device(device_id, name, shared_with, update)
        except shadow.VersionConflict as e:
            raise Conflict(str(e))
        except shadow.ShadowTooLarge as e:
            raise TooLarge(str(e))
        except StoreNotFound:
            raise NotFound("no such device: %s" % device_id)
        return self.json(request, self.view(key, device))

    @app.route("/api/v2/devices/<device:device_id>", methods=["DELETE"])
    async def delete_device(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        device = await self.visible_device(key, device_id)
        access.require_owner(key, device, "delete a device")
        if not await self.fleet.delete_device(device_id):
            raise NotFound("no such device: %s" % device_id)
        log.info("device {id} deleted by key {key}", id=device_id, key=key.id)
        return self.json(request, {"id": device_id, "deleted": True})

    @app.route("/api/v2/devices/<device_id>/token", methods=["POST"])
    async def rotate_token(self, request: Any, device_id: str) -> bytes:
        key = await self.authenticate(request)
        object_body(request, set())
        device = await self.visible_device(key, device_id)
        access.require_owner(key, device, "rotate a device's token")
        token = await self.fleet.rotate_token(device_id)
        if token is None:
            raise NotFound("no such device: %s" % device_id)
        log.info("device {id}: token rotated by key {key}", id=device_id, key=key.id)
        return self.json(request, {"id": device_id, "token": token})
