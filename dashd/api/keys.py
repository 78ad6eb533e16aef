"""/api/v2/keys: API keys; the secret is shown once, at creation."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from dashd import tokens
from dashd.api.base import ApiBase, app, name_value, object_body
from dashd.errors import BadRequest, Conflict, NotFound
from dashd.model import ApiKey
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
    }


class KeyRoutes(ApiBase):
    @app.route("/api/v2/keys", methods=["GET"])
    async def list_keys(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        keys = await self.fleet.store.list_keys(key.account_id)
        return self.json(request, [key_view(k) for k in keys])

    @app.route("/api/v2/keys", methods=["POST"])
    async def create_key(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, {"name", "kind", "expires"})
        name = name_value(body["name"]) if "name" in body else ""
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
        return self.json(request, view)

    @app.route("/api/v2/keys/<key_id>", methods=["DELETE"])
    async def delete_key(self, request: Any, key_id: str) -> bytes:
        key = await self.authenticate(request)
        try:
            deleted = await self.fleet.store.delete_key(key_id, key.account_id)
        except LastAdminKey as e:
            raise Conflict(str(e))
        if not deleted:
            raise NotFound("no such key: %s" % key_id)
        self.auth.forget(key_id)
        log.info("API key {id} revoked by {by}", id=key_id, by=key.id)
        return self.json(request, {"id": key_id, "deleted": True})
