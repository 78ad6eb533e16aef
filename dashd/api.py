"""
The REST API (``/api/v2``) and the two WebSocket doors, as one Klein app.

Every route authenticates first; every failure is
``{"error": {"code": N, "message": "..."}}`` with the status of
L{dashd.errors}. The routes are methods of L{Api}, which holds its
dependencies (no module globals), so tests can build one around any store.
"""

from __future__ import annotations

import json
import math
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from dashd import __version__, shadow, tokens
from dashd.auth import Authenticator, bearer_secret
from dashd.config import Config
from dashd.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    TooLarge,
)
from dashd.fleet import Fleet
from dashd.model import ApiKey, Device
from dashd.store import LastAdminKey, StoreError
from dashd.store import NotFound as StoreNotFound
from dashd.web import json_bytes
from dashd.websocket import DeviceFactory, Handover, NotifyFactory

from autobahn.twisted.resource import WebSocketResource

log = Logger()

MAX_NAME_LENGTH = 128
MAX_METHOD_LENGTH = 128


def device_view(device: Device, online: bool) -> dict[str, Any]:
    return {
        "id": device.id,
        "name": device.name,
        "online": online,
        "created": device.created,
        "last_seen": device.last_seen,
        "info": device.info,
        "shared_with": ",".join(device.shared_with),
        "shadow": shadow.view(device.shadow),
    }


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "kind": key.kind,
        "account_id": key.account_id,
        "created": key.created,
        "expires": key.expires,
    }


def _json_body(request: Any, default: Any = None) -> Any:
    raw = request.content.read()
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest("the request body is not valid JSON: %s" % e)


def _object_body(request: Any, allowed: set[str]) -> dict[str, Any]:
    body = _json_body(request, default={})
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(
            "unknown field(s): %s (allowed: %s)"
            % (", ".join(sorted(unknown)), ", ".join(sorted(allowed)))
        )
    return body


def _name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("%s must be a non-empty string" % field)
    if len(value) > MAX_NAME_LENGTH:
        raise BadRequest("%s must be at most %d characters" % (field, MAX_NAME_LENGTH))
    return value.strip()


def _shared_with(value: Any) -> tuple[str, ...]:
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
            if len(item) > MAX_NAME_LENGTH:
                raise BadRequest("shared_with holds an account ID that is too long")
            out.append(item)
    return tuple(out)


class Api:
    app = Klein()

    def __init__(
        self,
        fleet: Fleet,
        auth: Authenticator,
        config: Config,
        reactor: Any,
    ) -> None:
        self.fleet = fleet
        self.auth = auth
        self.config = config
        self.device_factory = DeviceFactory(config, reactor)
        self.notify_factory = NotifyFactory(config, reactor)

    def resource(self) -> Any:
        return self.app.resource()

    # Helpers

    async def _key(self, request: Any) -> ApiKey:
        return await self.auth.api_key(bearer_secret(request))

    async def _visible_device(self, key: ApiKey, device_id: str) -> Device:
        device = await self.fleet.store.get_device(device_id)
        # A device the key may not see is answered exactly like a missing one.
        if device is None or not key.can_see(device.account_id, device.shared_with):
            raise NotFound("no such device: %s" % device_id)
        return device

    def _json(self, request: Any, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        # The newline keeps a shell prompt (or the next curl) off the line.
        return json_bytes(value) + b"\n"

    def _view(self, device: Device) -> dict[str, Any]:
        return device_view(device, self.fleet.router.is_online(device.id))

    def _timeout(self, request: Any) -> float:
        values = request.args.get(b"timeout")
        if not values:
            return float(self.config["rpc.default_timeout"])
        maximum = float(self.config["rpc.max_timeout"])
        try:
            timeout = float(values[0])
        except ValueError:
            timeout = math.nan
        if not (0 < timeout <= maximum):
            raise BadRequest(
                "timeout must be a number of seconds greater than 0 and at most %g" % maximum
            )
        return timeout

    # Errors

    @app.handle_errors(ApiError)
    def api_error(self, request: Any, failure: Failure) -> bytes:
        error = failure.value
        request.setResponseCode(error.status)
        for name, value in error.headers.items():
            request.setHeader(name, value)
        return self._json(request, error.body())

    @app.handle_errors(WerkzeugNotFound)
    def no_route(self, request: Any, failure: Failure) -> bytes:
        request.setResponseCode(404)
        return self._json(request, NotFound("no such route: %s" % request.path.decode("latin-1", "replace")).body())

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def bad_method(self, request: Any, failure: Failure) -> bytes:
        error = MethodNotAllowed(
            "%s is not allowed on %s"
            % (request.method.decode("latin-1"), request.path.decode("latin-1", "replace"))
        )
        request.setResponseCode(405)
        allowed = getattr(failure.value, "valid_methods", None)
        if allowed:
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        return self._json(request, error.body())

    @app.handle_errors(StoreError)
    def store_error(self, request: Any, failure: Failure) -> bytes:
        request.setResponseCode(503)
        request.setHeader(b"retry-after", b"5")
        return self._json(request, ServiceUnavailable(failure.getErrorMessage()).body())

    @app.handle_errors
    def unexpected(self, request: Any, failure: Failure) -> bytes | None:
        if failure.check(CancelledError):
            return None
        log.failure("unhandled error on {uri}", failure, uri=request.path)
        request.setResponseCode(500)
        return self._json(request, InternalError("internal error").body())

    # The WebSocket doors

    @app.route("/api/v2/rpc", branch=False)
    async def device_channel(self, request: Any) -> Any:
        try:
            device = await self.auth.device(bearer_secret(request))
        except ApiError as e:
            peer = request.getClientAddress()
            log.warn(
                "device channel refused for {host}: {why}",
                host=getattr(peer, "host", peer),
                why=e.message,
            )
            raise
        return WebSocketResource(Handover(self.device_factory, device=device, fleet=self.fleet))

    @app.route("/api/v2/notify", branch=False)
    async def notify_channel(self, request: Any) -> Any:
        key = await self._key(request)
        return WebSocketResource(Handover(self.notify_factory, key=key, hub=self.fleet.hub))

    # Devices

    @app.route("/api/v2/devices", methods=["GET"])
    async def list_devices(self, request: Any) -> bytes:
        key = await self._key(request)
        devices = await self.fleet.store.list_devices(key.account_id)
        return self._json(request, [self._view(d) for d in devices])

    @app.route("/api/v2/devices", methods=["POST"])
    async def register_device(self, request: Any) -> bytes:
        key = await self._key(request)
        body = _object_body(request, {"name", "shared_with"})
        name = _name(body["name"]) if "name" in body else None
        shared_with = _shared_with(body["shared_with"]) if "shared_with" in body else ()
        device, token = await self.fleet.register_device(key.account_id, name, shared_with)
        view = self._view(device)
        view["token"] = token
        return self._json(request, view)

    @app.route("/api/v2/devices/<device_id>", methods=["GET"])
    async def get_device(self, request: Any, device_id: str) -> bytes:
        key = await self._key(request)
        device = await self._visible_device(key, device_id)
        return self._json(request, self._view(device))

    @app.route("/api/v2/devices/<device_id>", methods=["POST"])
    async def change_device(self, request: Any, device_id: str) -> bytes:
        key = await self._key(request)
        body = _object_body(request, {"name", "shared_with", "shadow"})
        device = await self._visible_device(key, device_id)
        name = _name(body["name"]) if "name" in body else None
        shared_with = None
        if "shared_with" in body:
            if device.account_id != key.account_id:
                raise Forbidden("only the device's owner may change its sharing")
            shared_with = _shared_with(body["shared_with"])
        update = None
        if "shadow" in body:
            try:
                update = shadow.parse_update(body["shadow"], allow_tags=True)
            except shadow.InvalidShadowUpdate as e:
                raise BadRequest(str(e))
        try:
            device = await self.fleet.update_device(device_id, name, shared_with, update)
        except shadow.VersionConflict as e:
            raise Conflict(str(e))
        except shadow.ShadowTooLarge as e:
            raise TooLarge(str(e))
        except StoreNotFound:
            raise NotFound("no such device: %s" % device_id)
        return self._json(request, self._view(device))

    @app.route("/api/v2/devices/<device_id>", methods=["DELETE"])
    async def delete_device(self, request: Any, device_id: str) -> bytes:
        key = await self._key(request)
        device = await self._visible_device(key, device_id)
        if device.account_id != key.account_id:
            raise Forbidden("only the device's owner may delete it")
        if not await self.fleet.delete_device(device_id):
            raise NotFound("no such device: %s" % device_id)
        return self._json(request, {"id": device_id, "deleted": True})

    @app.route("/api/v2/devices/<device_id>/rpc/<method>", methods=["GET", "POST"])
    async def call_device(self, request: Any, device_id: str, method: str) -> bytes:
        key = await self._key(request)
        if len(method) > MAX_METHOD_LENGTH:
            raise BadRequest("method names are at most %d characters" % MAX_METHOD_LENGTH)
        timeout = self._timeout(request)
        params = _json_body(request) if request.method == b"POST" else None
        device = await self._visible_device(key, device_id)
        result = await self.fleet.call(device, method, params, timeout)
        return self._json(request, result)

    # Keys

    @app.route("/api/v2/keys", methods=["GET"])
    async def list_keys(self, request: Any) -> bytes:
        key = await self._key(request)
        keys = await self.fleet.store.list_keys(key.account_id)
        return self._json(request, [key_view(k) for k in keys])

    @app.route("/api/v2/keys", methods=["POST"])
    async def create_key(self, request: Any) -> bytes:
        key = await self._key(request)
        body = _object_body(request, {"name", "kind", "expires"})
        name = _name(body["name"]) if "name" in body else ""
        kind = body.get("kind", "admin")
        if kind != "admin":
            raise BadRequest("kind must be \"admin\"")
        expires = body.get("expires")
        now = self.fleet.now()
        if expires is not None:
            if isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= now:
                raise BadRequest("expires must be a Unix time in the future")
            expires = float(expires)
        key_id = tokens.new_id("k")
        secret = tokens.new_api_key(key_id)
        new = ApiKey(
            id=key_id, account_id=key.account_id, name=name, kind=kind, created=now, expires=expires
        )
        new = await self.fleet.store.create_key(new, tokens.hash_secret(secret))
        log.info("API key {id} created by {by}", id=new.id, by=key.id)
        view = key_view(new)
        view["key"] = secret
        return self._json(request, view)

    @app.route("/api/v2/keys/<key_id>", methods=["DELETE"])
    async def delete_key(self, request: Any, key_id: str) -> bytes:
        key = await self._key(request)
        try:
            deleted = await self.fleet.store.delete_key(key_id, key.account_id)
        except LastAdminKey as e:
            raise Conflict(str(e))
        if not deleted:
            raise NotFound("no such key: %s" % key_id)
        self.auth.forget(key_id)
        log.info("API key {id} revoked by {by}", id=key_id, by=key.id)
        return self._json(request, {"id": key_id, "deleted": True})

    # Anything else

    @app.route("/", methods=["GET"])
    def root(self, request: Any) -> bytes:
        return self._json(request, {"name": "dashd", "version": __version__, "api": "/api/v2"})
