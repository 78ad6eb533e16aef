"""
/api/v2/keys: the account's API keys (L{dashd.app.keys}), /api/v2/whoami
and /api/v2/audit. A key's secret is shown once, at creation; only its hash
is kept. Revoking a key closes the notification streams opened with it at
once.
"""

from __future__ import annotations

from typing import Any

from dashd.api.base import ApiBase, app, int_arg, object_body
from dashd.domain import access
from dashd.domain.model import UNSET, ApiKey


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "kind": key.kind,
        "account_id": key.account_id,
        "created": key.created,
        "expires": key.expires,
        "scope": key.scope,
    }


class KeyRoutes(ApiBase):
    @app.route("/api/v2/whoami", methods=["GET"])
    async def whoami(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        key, account = await self.keys.whoami(key)
        # Whether its admins manage accounts (the dashboard offers the page),
        # and the account's name (the dashboard's header shows it).
        return self.json(request, dict(
            key_view(key), operator=bool(account is not None and account.operator),
            account_name=account.name if account is not None else None))

    @app.route("/api/v2/keys", methods=["GET"])
    async def list_keys(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        return self.json(request, [key_view(k) for k in await self.keys.list(key)])

    @app.route("/api/v2/keys", methods=["POST"])
    async def create_key(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        access.require_admin(key, "manage keys")
        body = object_body(request, {"name", "kind", "scope", "expires"})
        new, secret = await self.keys.create(
            key, name=body.get("name", UNSET), kind=body.get("kind", access.ADMIN),
            scope=body.get("scope", UNSET), expires=body.get("expires"))
        return self.json(request, dict(key_view(new), key=secret))

    @app.route("/api/v2/keys/<key_id>", methods=["DELETE"])
    async def delete_key(self, request: Any, key_id: str) -> bytes:
        key = await self.authenticate(request)
        await self.keys.revoke(key, key_id)
        return self.json(request, {"id": key_id, "deleted": True})

    @app.route("/api/v2/audit", methods=["GET"])
    async def audit(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        access.require_admin(key, "read the audit log")
        start = int_arg(request, "start", 0)
        limit = int_arg(request, "limit", 100)
        entries, following = await self.records.audit(key, start, limit)
        return self.json(request, {"entries": entries, "next": following})
