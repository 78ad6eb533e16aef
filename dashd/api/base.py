"""
What every part of the REST API shares: the one Klein app the route mixins
register on, authentication, body parsing, JSON replies and the error
handlers that turn every failure into
``{"error": {"code": N, "message": "..."}}``.
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

from dashd.domain import access, shadow
from dashd.app.auth import Authenticator, bearer_secret
from dashd.config import Config
from dashd.errors import (
    ApiError,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from dashd.app.fleet import Fleet
from dashd.domain.model import ApiKey, Device
from dashd.store import StoreError
from dashd.api.site import json_bytes

log = Logger()

# The one Klein app: each area of the API is a mixin class whose routes
# register here; dashd.api.Api inherits them all.
app = Klein()

MAX_NAME_LENGTH = 128


def device_view(device: Device, online: bool) -> dict[str, Any]:
    return {
        "id": device.id,
        "name": device.name,
        "account_id": device.account_id,
        "online": online,
        "created": device.created,
        "last_seen": device.last_seen,
        "info": device.info,
        "shared_with": ",".join(device.shared_with),
        "shadow": shadow.view(device.shadow),
    }


def json_body(request: Any, default: Any = None) -> Any:
    raw = request.content.read()
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest("the request body is not valid JSON: %s" % e)


def object_body(request: Any, allowed: set[str]) -> dict[str, Any]:
    body = json_body(request, default={})
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(
            "unknown field(s): %s (allowed: %s)"
            % (", ".join(sorted(unknown)), ", ".join(sorted(allowed)))
        )
    return body


def name_value(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("%s must be a non-empty string" % field)
    if len(value) > MAX_NAME_LENGTH:
        raise BadRequest("%s must be at most %d characters" % (field, MAX_NAME_LENGTH))
    return value.strip()


def number_arg(request: Any, name: str, default: float, maximum: float) -> float:
    """A query argument that must be a number in (0, maximum]."""
    values = request.args.get(name.encode("ascii"))
    if not values:
        return float(default)
    try:
        value = float(values[0])
    except ValueError:
        value = math.nan
    if not (0 < value <= maximum):
        raise BadRequest(
            "%s must be a number of seconds greater than 0 and at most %g" % (name, maximum)
        )
    return value


def client_address(request: Any) -> str | None:
    peer = request.getClientAddress()
    return getattr(peer, "host", None)


def int_arg(request: Any, name: str, default: int, minimum: int, maximum: int) -> int:
    """An integer query argument within [minimum, maximum]."""
    values = request.args.get(name.encode("ascii"))
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise BadRequest("%s must be an integer" % name)
    if not minimum <= value <= maximum:
        raise BadRequest("%s must be between %d and %d" % (name, minimum, maximum))
    return value


class ApiBase:
    app = app

    def __init__(self, fleet: Fleet, auth: Authenticator, config: Config, reactor: Any) -> None:
        self.fleet = fleet
        self.auth = auth
        self.config = config
        self.reactor = reactor

    def resource(self) -> Any:
        return self.app.resource()

    async def authenticate(self, request: Any) -> ApiKey:
        key = await self.auth.api_key(bearer_secret(request), client_address(request))
        # For the audit log, once the request is answered.
        request.dashd_key = key
        return key

    async def visible_device(self, key: ApiKey, device_id: str, live: bool = False) -> Device:
        """
        The device, if the key may see it. C{live}: the caller needs only who
        may see it (not its shadow), so an online device's record may come
        from its connection instead of a store read.
        """
        device = self.fleet.router.device(device_id) if live else None
        if device is None:
            device = await self.fleet.store.get_device(device_id)
        # A device the key may not see is answered exactly like a missing one.
        if device is None or not access.sees(key, device):
            raise NotFound("no such device: %s" % device_id)
        return device

    def json(self, request: Any, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        # The newline keeps a shell prompt (or the next curl) off the line.
        return json_bytes(value) + b"\n"

    def view(self, key: ApiKey, device: Device) -> dict[str, Any]:
        """The device as this key may see it."""
        view = device_view(device, self.fleet.router.is_online(device.id))
        return access.device_view_for(key, view)

    # Errors

    @app.handle_errors(ApiError)
    def api_error(self, request: Any, failure: Failure) -> bytes:
        error = failure.value
        request.dashd_error = error.message
        request.setResponseCode(error.status)
        for name, value in error.headers.items():
            request.setHeader(name, value)
        return self.json(request, error.body())

    @app.handle_errors(WerkzeugNotFound)
    def no_route(self, request: Any, failure: Failure) -> bytes:
        request.setResponseCode(404)
        path = request.path.decode("latin-1", "replace")
        return self.json(request, NotFound("no such route: %s" % path).body())

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
        return self.json(request, error.body())

    @app.handle_errors(StoreError)
    def store_error(self, request: Any, failure: Failure) -> bytes:
        request.dashd_error = failure.getErrorMessage()
        request.setResponseCode(503)
        request.setHeader(b"retry-after", b"5")
        return self.json(request, ServiceUnavailable(failure.getErrorMessage()).body())

    @app.handle_errors
    def unexpected(self, request: Any, failure: Failure) -> bytes | None:
        if failure.check(CancelledError):
            return None
        log.failure("unhandled error on {uri}", failure, uri=request.path)
        request.dashd_error = "internal error"
        request.setResponseCode(500)
        return self.json(request, InternalError("internal error").body())
