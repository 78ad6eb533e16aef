"""
/api/v2/keys: the account's API keys, and /api/v2/whoami. A key's secret is
shown once, at creation; only its hash is kept. Revoking a key closes the
notification streams opened with it at once.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from dashd.domain import access, tokens
from dashd.api.base import ApiBase, app, int_arg, name_value, object_body
from dashd.errors import BadRequest, Conflict, NotFound
from dashd.domain.model import KEY_KINDS, ApiKey
from dashd.store import LastAdminKey

log = Logger()


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
        view = key_view(key)
        # Whether its admins manage accounts (the dashboard offers the page).
        account = await self.fleet.store.get_account(key.account_id)
        view["operator"] = bool(account is not None and account.operator)
        return self.json(request, view)

    @app.route("/api/v2/keys", methods=["GET"])
    async def list_keys(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        access.require_admin(key, "manage keys")
        keys = await self.fleet.store.list_keys(key.account_id)
        return self.json(request, [key_view(k) for k in keys])

    @app.route("/api/v2/keys", methods=["POST"])
    async def create_key(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        access.require_admin(key, "manage keys")
        body = object_body(request, {"name", "kind", "scope", "expires"})
        name = name_value(body["name"]) if "name" in body else ""
        kind = body.get("kind", access.ADMIN)
        if kind not in KEY_KINDS:
            raise BadRequest("kind must be one of %s" % ", ".join(KEY_KINDS))
        scope = None
        if kind == access.RESTRICTED:
            if "scope" not in body:
                raise BadRequest("a restricted key needs a scope naming its devices")
            scope = access.parse_scope(body["scope"])
            for device_id in scope["devices"]:
                # Only devices this account may see can be handed to a customer.
                device = await self.fleet.store.get_device(device_id)
                if device is None or not access.sees(key, device):
                    raise BadRequest("scope names an unknown device: %s" % device_id)
        elif "scope" in body:
            raise BadRequest("only restricted keys have a scope")
        expires = body.get("expires")
        now = self.fleet.now()
        if expires is not None:
            if isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= now:
                raise BadRequest("expires must be a Unix time in the future")
            expires = float(expires)
        key_id = tokens.new_id("k")
        secret = tokens.new_api_key(key_id)
        new = ApiKey(
            id=key_id,
            account_id=key.account_id,
            name=name,
            kind=kind,
            created=now,
            expires=expires,
            scope=scope,
        )
        new = await self.fleet.store.create_key(new, tokens.hash_secret(secret))
        log.info("API key {id} ({kind}) created by {by}", id=new.id, kind=kind, by=key.id)
        view = key_view(new)
        view["key"] = secret
        return self.json(request, view)

    @app.route("/api/v2/keys/<key_id>", methods=["DELETE"])
    async def delete_key(self, request: Any, key_id: str) -> bytes:
        key = await self.authenticate(request)
        access.require_admin(key, "manage keys")
        try:
            deleted = await self.fleet.store.delete_key(key_id, key.account_id, self.fleet.now())
        except LastAdminKey as e:
            raise Conflict(str(e))
        if not deleted:
            raise NotFound("no such key: %s" % key_id)
        self.auth.forget(key_id)
        self.fleet.hub.revoke(key_id)
        log.info("API key {id} revoked by {by}", id=key_id, by=key.id)
        return self.json(request, {"id": key_id, "deleted": True})

    @app.route("/api/v2/audit", methods=["GET"])
    async def audit(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        access.require_admin(key, "read the audit log")
        start = int_arg(request, "start", 0, -(2**62), 2**62)
        limit = int_arg(request, "limit", 100, 1, 1000)
        entries, following = await self.fleet.store.query_audit(key.account_id, start, limit)
        return self.json(request, {"entries": entries, "next": following})
