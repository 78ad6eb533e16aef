"""
What every part of the REST API shares: the one Klein app the route mixins
register on, reading credentials, bodies and query arguments, JSON replies,
the views of records, and the one error handler (L{dashd.api.status}).

A route parses the request, calls one use case of the application
(L{dashd.app.application.Application}) and renders what it returns; who may
do what, and every rule about values, is the application's.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

from klein import Klein
from twisted.internet.address import UNIXAddress
from twisted.python.failure import Failure

from dashd.api import status
from dashd.api.site import json_bytes
from dashd.app.application import Application
from dashd.config import Config
from dashd.domain import access, shadow
from dashd.domain.errors import Invalid, Unauthenticated
from dashd.domain.model import ApiKey, Device
from dashd.jsontext import loads

# The one Klein app: each area of the API is a mixin class whose routes
# register here; dashd.api.Api inherits them all.
app = Klein()


def bearer_secret(request: Any) -> str | None:
    """
    The secret a request carries: ``Authorization: Bearer SECRET`` or
    ``?access_token=SECRET``.

    @raise Unauthenticated: the Authorization header is there but malformed.
    """
    header = request.getHeader(b"authorization")
    if header is not None:
        scheme, _, value = header.decode("latin-1").strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise Unauthenticated("the Authorization header must be \"Bearer SECRET\"")
        return value
    values = request.args.get(b"access_token")
    if values:
        try:
            secret = values[0].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise Unauthenticated("the access_token is not valid UTF-8")
        return secret or None
    return None


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
        "share_scopes": device.share_scopes,
        "shadow": shadow.view(device.shadow),
    }


def json_body(request: Any, default: Any = None) -> Any:
    raw = request.content.read()
    if not raw.strip():
        return default
    try:
        return loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise Invalid("the request body is not valid JSON: %s" % e)


def object_body(request: Any, allowed: set[str]) -> dict[str, Any]:
    body = json_body(request, default={})
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise Invalid(
            "unknown field(s): %s (allowed: %s)"
            % (", ".join(sorted(unknown)), ", ".join(sorted(allowed)))
        )
    return body


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
        raise Invalid(
            "%s must be a number of seconds greater than 0 and at most %g" % (name, maximum), name
        )
    return value


def int_arg(request: Any, name: str, default: int) -> int:
    """An integer query argument (its range is the use case's to check)."""
    values = request.args.get(name.encode("ascii"))
    if not values:
        return default
    try:
        return int(values[0])
    except ValueError:
        raise Invalid("%s must be an integer" % name, name)


def _ip(text: str) -> Any:
    """The IP address C{text} names (an IPv4-mapped IPv6 address as the IPv4
    one), or None."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


_NODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _forwarded_for(values: list[bytes]) -> list[str]:
    """The ``for=`` nodes of ``Forwarded`` headers (RFC 7239), in order,
    without quotes, brackets or ports."""
    out = []
    for value in values:
        for element in value.decode("latin-1").split(","):
            node = "unknown"
            for pair in element.split(";"):
                name, _, given = pair.strip().partition("=")
                if name.strip().lower() == "for":
                    node = given.strip().strip('"')
            if node.startswith("["):
                node = node[1:].partition("]")[0]
            elif node.count(":") == 1:
                node = node.partition(":")[0]
            out.append(node)
    return out


class ClientAddresses:
    """
    Who a request comes from: its peer's address, unless the peer is one of
    the trusted proxies (``http.trusted_proxies``; ``"unix"`` for peers on a
    unix: endpoint); then the address the proxies say they forward for, in
    the header they set (``http.forwarded_header``: X-Forwarded-For or
    Forwarded): the nearest hop that is not a trusted proxy, read from the
    right. A client's own header is never believed: the peer must be
    trusted, and only the hops trusted proxies added count.
    """

    # Peers' hosts whose trust was decided, at most this many (then
    # forgotten all at once and decided again).
    MAX_PEERS = 4096

    def __init__(self, trusted: list[str], header: str = "X-Forwarded-For") -> None:
        self._unix = "unix" in trusted
        self._networks = [ipaddress.ip_network(n, strict=False) for n in trusted if n != "unix"]
        self._header = header.lower().encode("ascii")
        # Whether a peer's host is a trusted proxy, by host: parsing the
        # address was most of what every authenticated request paid here.
        self._peers: dict[str, bool] = {}

    def _trusted(self, address: Any) -> bool:
        return address is not None and any(address in n for n in self._networks)

    def _trusted_peer(self, host: str) -> bool:
        trusted = self._peers.get(host)
        if trusted is None:
            if len(self._peers) >= self.MAX_PEERS:
                self._peers.clear()
            trusted = self._peers[host] = self._trusted(_ip(host))
        return trusted

    def __call__(self, request: Any) -> str | None:
        peer = request.getClientAddress()
        host = getattr(peer, "host", None)
        if host is None:
            if not self._unix or not isinstance(peer, UNIXAddress):
                return None
        elif not self._networks or not self._trusted_peer(host):
            return host
        values = request.requestHeaders.getRawHeaders(self._header) or []
        if self._header == b"forwarded":
            hops = _forwarded_for(values)
        else:
            hops = [h.strip() for v in values for h in v.decode("latin-1").split(",")]
        for hop in reversed(hops):
            address = _ip(hop)
            if address is None:
                # Obfuscated, "unknown" or garbage: that hop is the client.
                return hop if _NODE.match(hop) else "unknown"
            if not self._trusted(address):
                return str(address)
            host = str(address)
        return host


def text_arg(request: Any, name: str) -> str | None:
    """A query argument as text (None if not given)."""
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("%s is not valid UTF-8" % name, name) from None


class ApiBase:
    app = app

    def __init__(
        self,
        application: Application,
        config: Config,
        reactor: Any,
        device_factory: Any = None,
        notify_factory: Any = None,
        metrics: Any = None,
        readiness: Any = None,
    ) -> None:
        self.application = application
        self.config = config
        self.reactor = reactor
        # The WebSocket factories of the two doors (dashd.api.channels), the
        # metrics and the readiness /readyz reports (dashd.api.ops).
        self.device_factory = device_factory
        self.notify_factory = notify_factory
        self.metrics = metrics
        self.readiness = readiness
        # The client's address, through trusted proxies.
        self.client_address = ClientAddresses(config["http.trusted_proxies"],
                                              config["http.forwarded_header"])
        self.devices = application.devices
        self.keys = application.keys
        self.accounts = application.accounts
        self.records = application.records
        self.firmware = application.firmware

    def resource(self) -> Any:
        return self.app.resource()

    async def authenticate(self, request: Any) -> ApiKey:
        key = getattr(request, "dashd_key", None)
        if key is not None:
            # Authenticated already, from its headers (an upload's gate).
            return key
        secret = bearer_secret(request)
        if secret is None and request.getCookie(b"dashd_session"):
            # A dashboard session (dashd.api.session), with its CSRF header.
            from dashd.api.session import session_key

            key = await session_key(self, request)
        else:
            key = await self.application.auth.api_key(secret, self.client_address(request))
        # For the audit log, once the request is answered.
        request.dashd_key = key
        return key

    def json(self, request: Any, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        # The newline keeps a shell prompt (or the next curl) off the line.
        return json_bytes(value) + b"\n"

    def view(self, key: ApiKey, device: Device, **extra: Any) -> dict[str, Any]:
        """The device (and C{extra} fields) as this key may see it."""
        view = device_view(device, self.devices.online(device.id))
        view.update(extra)
        return access.device_view_for(key, view)

    @app.handle_errors
    def failed(self, request: Any, failure: Failure) -> bytes | None:
        return status.render(request, failure)
