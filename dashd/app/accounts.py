"""
Accounts: every device and key belongs to one. Admins of the operator
account (the first one) manage the others; creating an account creates its
first admin key, whose secret is shown once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dashd.app.keys import mint
from dashd.domain import access, tokens
from dashd.domain.errors import Forbidden, Invalid, NotFound
from dashd.domain.model import Account, ApiKey, check_name
from dashd.store import IStore

log = Logger()


class Accounts:
    def __init__(self, store: IStore, clock: IReactorTime) -> None:
        self._store = store
        self._clock = clock

    async def resolve(self, by: ApiKey, account_id: str | None) -> str:
        """The account C{by} acts in: its own; dashctl (the console) names
        one, or acts in the first."""
        if not access.is_console(by):
            if account_id is not None and account_id != by.account_id:
                raise Forbidden("this key may act in its own account only")
            return by.account_id
        accounts = await self._store.list_accounts()
        if account_id is None:
            if not accounts:
                raise Invalid("the store holds no account yet (start dashd once)")
            return accounts[0].id
        if account_id not in [a.id for a in accounts]:
            raise NotFound("no such account: %s (accounts: %s)"
                           % (account_id, ", ".join(a.id for a in accounts) or "none"))
        return account_id

    async def _operator(self, by: ApiKey) -> None:
        access.require_admin(by, "manage accounts")
        if access.is_console(by):
            return
        account = await self._store.get_account(by.account_id)
        if account is None or not account.operator:
            raise Forbidden("only admin keys of the operator account may manage accounts")

    async def list(self, by: ApiKey) -> list[Account]:
        await self._operator(by)
        return await self._store.list_accounts()

    async def create(self, by: ApiKey, name: Any) -> tuple[Account, ApiKey, str]:
        """A new account and its first admin key; fire with both and the
        key's secret."""
        await self._operator(by)
        now = self._clock.seconds()
        account = Account(id=tokens.new_id("a"), name=check_name(name, "name"), created=now)
        admin, secret = mint(account.id, "admin", access.ADMIN, now)
        await self._store.create_account(account, admin, tokens.hash_secret(secret))
        log.info("account {id} created by key {by}", id=account.id, by=by.id)
        return account, admin, secret
