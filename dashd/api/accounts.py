"""
/api/v2/accounts: the accounts of this dashd, managed by admins of the
operator account (the first one). Creating an account creates its first
admin key, whose secret is in the reply, once.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from dashd.domain import access, tokens
from dashd.api.base import ApiBase, app, name_value, object_body
from dashd.errors import Forbidden
from dashd.api.keys import key_view
from dashd.domain.model import Account, ApiKey

log = Logger()


def account_view(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "created": account.created,
        "operator": account.operator,
    }


class AccountRoutes(ApiBase):
    async def _operator(self, request: Any) -> ApiKey:
        key = await self.authenticate(request)
        access.require_admin(key, "manage accounts")
        account = await self.fleet.store.get_account(key.account_id)
        if account is None or not account.operator:
            raise Forbidden("only admin keys of the operator account may manage accounts")
        return key

    @app.route("/api/v2/accounts", methods=["GET"])
    async def list_accounts(self, request: Any) -> bytes:
        await self._operator(request)
        accounts = await self.fleet.store.list_accounts()
        return self.json(request, [account_view(a) for a in accounts])

    @app.route("/api/v2/accounts", methods=["POST"])
    async def create_account(self, request: Any) -> bytes:
        key = await self._operator(request)
        body = object_body(request, {"name"})
        if "name" not in body:
            name_value(None)
        now = self.fleet.now()
        account = Account(id=tokens.new_id("a"), name=name_value(body["name"]), created=now)
        key_id = tokens.new_id("k")
        secret = tokens.new_api_key(key_id)
        admin = ApiKey(id=key_id, account_id=account.id, name="admin", kind=access.ADMIN,
                       created=now)
        await self.fleet.store.create_account(account, admin, tokens.hash_secret(secret))
        log.info("account {id} created by key {by}", id=account.id, by=key.id)
        view = account_view(account)
        view["admin_key"] = dict(key_view(admin), key=secret)
        return self.json(request, view)
