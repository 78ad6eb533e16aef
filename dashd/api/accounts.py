"""
/api/v2/accounts: the accounts of this dashd (L{dashd.app.accounts}),
managed by admins of the operator account (the first one). Creating an
account creates its first admin key, whose secret is in the reply, once.
"""

from __future__ import annotations

from typing import Any

from dashd.api.base import ApiBase, app, object_body
from dashd.api.keys import key_view
from dashd.domain.model import Account


def account_view(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "created": account.created,
        "operator": account.operator,
    }


class AccountRoutes(ApiBase):
    @app.route("/api/v2/accounts", methods=["GET"])
    async def list_accounts(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        accounts = await self.accounts.list(key)
        return self.json(request, [account_view(a) for a in accounts])

    @app.route("/api/v2/accounts", methods=["POST"])
    async def create_account(self, request: Any) -> bytes:
        key = await self.authenticate(request)
        body = object_body(request, {"name"})
        account, admin, secret = await self.accounts.create(key, body.get("name"))
        view = account_view(account)
        view["admin_key"] = dict(key_view(admin), key=secret)
        return self.json(request, view)
