"""
API keys: made (L{mint}, the one place a key's secret is made),
listed, created and revoked. A key's secret is shown once, at creation;
only its hash is kept. Revoking a key takes effect at once on every node:
the key is forgotten by the authenticator's cache and the notification
streams opened with it are closed (through the hub, which in a cluster
tells the other nodes).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dashd.app.auth import Authenticator
from dashd.channel.hub import IHub
from dashd.domain import access, tokens
from dashd.domain.errors import Invalid, NotFound
from dashd.domain.model import KEY_KINDS, UNSET, Account, ApiKey, check_name
from dashd.store import IStore

if TYPE_CHECKING:
    from dashd.app.accounts import Accounts

log = Logger()


def mint(account_id: str, name: str, kind: str, created: float,
         expires: float | None = None, scope: dict[str, Any] | None = None,
         ) -> tuple[ApiKey, str]:
    """A new key record and its secret, not stored yet: the one place a
    key's secret is made."""
    key_id = tokens.new_id("k")
    secret = tokens.new_api_key(key_id)
    key = ApiKey(id=key_id, account_id=account_id, name=name, kind=kind, created=created,
                 expires=expires, scope=scope)
    return key, secret


class Keys:
    def __init__(self, store: IStore, accounts: "Accounts", auth: Authenticator, hub: IHub,
                 clock: IReactorTime) -> None:
        self._store = store
        self._accounts = accounts
        self._auth = auth
        self._hub = hub
        self._clock = clock

    async def bootstrap(self) -> tuple[ApiKey, str] | None:
        """On the very first start (no key at all in the store): the first
        admin key, of a new operator account. None if there are keys."""
        now = self._clock.seconds()
        account = Account(id=tokens.new_id("a"), name="default", created=now)
        key, secret = mint(account.id, "admin", access.ADMIN, now)
        created = await self._store.bootstrap_admin_key(key, tokens.hash_secret(secret), account)
        if created is None:
            return None
        return created, secret

    async def whoami(self, by: ApiKey) -> tuple[ApiKey, Account | None]:
        """The key itself, and its account (whose operator flag says if its
        admins manage accounts)."""
        return by, await self._store.get_account(by.account_id)

    async def list(self, by: ApiKey, account_id: str | None = None) -> list[ApiKey]:
        access.require_admin(by, "manage keys")
        account = await self._accounts.resolve(by, account_id)
        return await self._store.list_keys(account)

    async def create(
        self,
        by: ApiKey,
        name: Any = UNSET,
        kind: Any = access.ADMIN,
        scope: Any = UNSET,
        expires: Any = None,
        account_id: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key of the caller's account (dashctl may name another;
        C{expires}: a Unix time, None for never); fire with it and its
        secret, shown this once."""
        access.require_admin(by, "manage keys")
        account = await self._accounts.resolve(by, account_id)
        name = check_name(name, "name") if name is not UNSET else ""
        if kind not in KEY_KINDS:
            raise Invalid("kind must be one of %s" % ", ".join(KEY_KINDS), "kind")
        if kind == access.RESTRICTED:
            if scope is UNSET:
                raise Invalid("a restricted key needs a scope naming its devices", "scope")
            scope = access.parse_scope(scope)
            for device_id in scope["devices"]:
                # Only devices this account may see can be handed to a customer.
                device = await self._store.get_device(device_id)
                if device is None or not access.account_sees(account, device):
                    raise Invalid("scope names an unknown device: %s" % device_id, "scope")
        elif scope is not UNSET:
            raise Invalid("only restricted keys have a scope", "scope")
        else:
            scope = None
        now = self._clock.seconds()
        if expires is not None:
            if isinstance(expires, bool) or not isinstance(expires, (int, float)):
                raise Invalid("expires must be a Unix time in the future", "expires")
            try:
                expires = float(expires)
            except OverflowError:
                expires = math.inf
            if not math.isfinite(expires) or expires <= now:
                raise Invalid("expires must be a Unix time in the future", "expires")
        key, secret = mint(account, name, kind, now, expires, scope)
        key = await self._store.create_key(key, tokens.hash_secret(secret))
        log.info("API key {id} ({kind}) created by {by}", id=key.id, kind=kind, by=by.id)
        return key, secret

    async def revoke(self, by: ApiKey, key_id: str) -> ApiKey:
        """Delete the key now; it opens nothing from here on, anywhere.
        @raise LastAdminKey: it is the account's last admin key that has
            not expired."""
        access.require_admin(by, "manage keys")
        found = await self._store.key_credentials(key_id)
        if found is None or not access.manages_account(by, found[0].account_id):
            raise NotFound("no such key: %s" % key_id)
        key = found[0]
        # Expired admin keys open nothing: they do not count as the last one.
        if not await self._store.delete_key(key_id, key.account_id, self._clock.seconds()):
            raise NotFound("no such key: %s" % key_id)
        self._auth.forget(key_id)
        self._hub.revoke(key_id)
        log.info("API key {id} revoked by {by}", id=key_id, by=by.id)
        return key
