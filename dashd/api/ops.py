"""
What operators and their tools read: ``/healthz``, ``/readyz``,
``/metrics`` (Prometheus) and ``/api/v2/openapi.json``.

- ``/healthz`` (liveness) answers 200 whenever the process answers at all.
- ``/readyz`` (readiness) answers 200 once dashd serves (the store is open
  and answers a query within 2 s, every port is bound, it is not stopping)
  and 503 with the reason otherwise.
- ``/metrics`` is open to the networks in ``metrics.allow`` (by default
  loopback only, where a local Prometheus or node agent scrapes) and
  needs an API key from anywhere else: the figures tell how big the fleet
  is and how it behaves, which is not for everyone who can reach a
  device port on the internet.

Health and the OpenAPI description need no key: they reveal nothing about
devices or keys, and load balancers and tools read them without one.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from dashd import __version__
from dashd.api import openapi
from dashd.api.base import ApiBase, app, bearer_secret, json_bytes
from dashd.domain.errors import Unauthenticated, Unavailable
from dashd.ops.lbagent import why_not_ready

class OpsRoutes(ApiBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics_allow = [
            ipaddress.ip_network(n, strict=False) for n in self.config["metrics.allow"]
        ]
        self._openapi = json_bytes(openapi.document(self.config, __version__)) + b"\n"

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Any) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        return self.json(request, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    async def readyz(self, request: Any) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        # The same answer as the load balancer's agent (dashd.ops.lbagent).
        why = await why_not_ready(self.readiness, self.application.ping, self.reactor)
        if why:
            raise Unavailable("not ready: %s" % why, retry_after=5)
        return self.json(request, {"status": "ready"})

    @app.route("/metrics", methods=["GET"])
    async def metrics_page(self, request: Any) -> bytes:
        if not self._allowed_without_key(request):
            if bearer_secret(request) is None:
                raise Unauthenticated(
                    "/metrics needs an API key from this address (Authorization: Bearer KEY); "
                    "metrics.allow lists the networks that need none"
                )
            await self.authenticate(request)
        if self.metrics is None:
            raise Unavailable("metrics are not set up")
        from dashd.ops.metrics import CONTENT_TYPE

        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return self.metrics.render()

    def _allowed_without_key(self, request: Any) -> bool:
        # Through a trusted proxy, the client it forwards for: the proxy's
        # own address would let everyone in.
        host = self.client_address(request)
        if not host or not self._metrics_allow:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        return any(address in network for network in self._metrics_allow)

    @app.route("/api/v2/openapi.json", methods=["GET"])
    def openapi_document(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return self._openapi
