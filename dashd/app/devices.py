"""
Devices as people and tools manage them: see, register, rename, share,
change the shadow, call, rotate the token, delete. Each use case checks
what the caller may do (L{dashd.domain.access}) and has its live effects
wherever the device is connected: a rotated token or a deleted device
closes the device's connection (on whichever node holds it), a change of
``desired`` reaches the device as ``Shadow.Delta``. Subscribers hear
``device.created``, ``device.updated`` (name, sharing) and
``device.deleted``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Iterable

from twisted.logger import Logger

from dashd.app.accounts import Accounts
from dashd.app.fleet import Fleet
from dashd.channel import closecodes
from dashd.domain import access, query, shadow, timeseries, tokens
from dashd.domain.errors import Invalid, NotFound
from dashd.domain.model import UNSET, ApiKey, Device, check_name
from dashd.store import NotFound as NoSuchRecord
from dashd.store import StoreUnreachable

log = Logger()

MAX_METHOD_LENGTH = 128
# Devices a page of a query holds at most.
MAX_PAGE = 1000
# Device records kept for calls while the database is away (see visible).
RECENT_DEVICES = 10000


class Devices:
    def __init__(self, fleet: Fleet, accounts: Accounts) -> None:
        self._fleet = fleet
        self._store = fleet.store
        self._accounts = accounts
        # The records of online devices held by other nodes that calls read
        # lately (who may see and call them), for calls while the database
        # is away; at most RECENT_DEVICES, the least recently read go first.
        self._recent: OrderedDict[str, Device] = OrderedDict()

    def online(self, device_id: str) -> bool:
        return self._fleet.router.is_online(device_id)

    async def visible(self, by: ApiKey, device_id: str, live: bool = False) -> Device:
        """
        The device, if C{by} may see it. C{live}: the caller needs only who
        may see it (not its shadow), so an online device's record may come
        from its connection instead of a store read (or, in a cluster, be
        the record read lately of a device held by another node, kept until
        it changes: L{dashd.cluster.node.Cluster.remember}).
        """
        router = self._fleet.router
        device = router.record(device_id) if live else None
        if device is None:
            mark = router.record_mark()
            try:
                device = await self._store.get_device(device_id)
            except StoreUnreachable as unreachable:
                # The database is away: a call to a device connected to
                # another node goes on with the record read last (a change
                # of its sharing needs the database too), or with the one
                # its connection holds there.
                device = self._recent.get(device_id) if live and self.online(device_id) \
                    else None
                if device is None and live and self.online(device_id):
                    device = await self._fleet.router.remote_device(device_id)
                if device is None:
                    raise unreachable
            else:
                if live and device is not None:
                    # Held by another node: the cluster's router keeps it
                    # until it changes (no store read for the next calls).
                    router.remember(device, mark)
                    self._recent[device_id] = device
                    self._recent.move_to_end(device_id)
                    if len(self._recent) > RECENT_DEVICES:
                        self._recent.popitem(last=False)
        # A device the key may not see is answered exactly like a missing one.
        if device is None or not access.sees(by, device):
            raise NotFound("no such device: %s" % device_id)
        return device

    async def list(self, by: ApiKey, account_id: str | None = None) -> list[Device]:
        """The devices C{by} may see; dashctl (the console) sees every
        account's, or those of the account it names."""
        if access.is_console(by):
            if account_id is not None:
                accounts = [await self._accounts.resolve(by, account_id)]
            else:
                accounts = [a.id for a in await self._store.list_accounts()]
            seen: dict[str, Device] = {}
            for account in accounts:
                for device in await self._store.list_devices(account):
                    seen.setdefault(device.id, device)
            return list(seen.values())
        devices = await self._store.list_devices(by.account_id)
        return [d for d in devices if access.sees(by, d)]

    def selection(self, by: ApiKey, where: str | None, order: str = "created",
                  limit: int | None = None, cursor: str | None = None) -> query.Selection:
        """What C{by} asks for, as a store selects it: the query parsed and
        checked against what the key may see (L{dashd.domain.query}).
        @raise Invalid: a query that cannot be read (with its position),
            or one of fields the key may not see; a bad order, limit or
            cursor."""
        node = query.parse(where) if where is not None else None
        if node is not None:
            query.check_access(node, by.kind == access.RESTRICTED)
        order = query.check_order(order)
        if limit is not None and not 1 <= limit <= MAX_PAGE:
            raise Invalid("limit must be 1 to %d" % MAX_PAGE, "limit")
        after = _read_cursor(cursor, order) if cursor is not None else None
        devices = readable = None
        if by.kind == access.RESTRICTED:
            scope = (by.scope or {}).get("devices", {})
            devices = tuple(scope)
            readable = {d: list(acl.get("read", [])) for d, acl in scope.items()}
        online = None
        if query.uses_online(node):
            online = tuple(self._fleet.router.online_ids())
        return query.Selection(
            where=node, account_id=None if access.is_console(by) else by.account_id,
            devices=devices, readable=readable, online=online, order=order, limit=limit,
            after=after)

    async def select(self, by: ApiKey, where: str | None, order: str = "created",
                     limit: int | None = None, cursor: str | None = None,
                     ) -> tuple[list[Device], str | None]:
        """The devices C{by} sees that C{where} matches (every one if None),
        in C{order}: C{limit} of them (None: all) after C{cursor}; fire
        with them and the cursor of the next page (None: no more)."""
        selection = self.selection(by, where, order, limit, cursor)
        devices = await self._store.select_devices(selection)
        following = None
        if limit is not None and len(devices) > limit:
            devices = devices[:limit]
            last = devices[-1]
            following = _write_cursor(order, query.order_value(order, last), last.id)
        return devices, following

    async def count(self, by: ApiKey, where: str | None) -> int:
        """How many devices C{by} sees that C{where} matches."""
        return await self._store.count_devices(self.selection(by, where))

    async def get(self, by: ApiKey, device_id: str) -> tuple[Device, dict[str, Any] | None]:
        """The device and the status of its last firmware update (None for
        restricted keys, which may not read it)."""
        device, ota = await self._store.get_device_view(device_id)
        # A device the key may not see is answered exactly like a missing one.
        if device is None or not access.sees(by, device):
            raise NotFound("no such device: %s" % device_id)
        return device, ota if by.kind != access.RESTRICTED else None

    async def register(self, by: ApiKey, name: Any = UNSET, shared_with: Any = UNSET,
                       account_id: str | None = None) -> tuple[Device, str]:
        """A new device of the caller's account (dashctl may name another;
        its name is its ID unless given); fire with it and its token
        (shown this once, never stored)."""
        access.require_admin(by, "register devices")
        account = await self._accounts.resolve(by, account_id)
        name = check_name(name, "name") if name is not UNSET else None
        shares, scopes = ((), None)
        if shared_with is not UNSET:
            shares, scopes = access.parse_shares(shared_with)
            await self._check_accounts(shares)
        device_id = tokens.new_id("d")
        token = tokens.new_device_token(device_id)
        device = Device(id=device_id, account_id=account, name=name or device_id,
                        created=self._fleet.now(), shared_with=shares,
                        share_scopes=scopes or {})
        device = await self._store.create_device(device, tokens.hash_secret(token))
        log.info("device {id} registered by {by}", id=device.id, by=by.id)
        self._fleet.publish(device, "device.created", {"name": device.name})
        return device, token

    async def change(self, by: ApiKey, device_id: str, name: Any = UNSET,
                     shared_with: Any = UNSET, shadow_update: Any = UNSET) -> Device:
        """Rename, share, or change the shadow (C{shadow_update} as a
        client writes it: C{{"state": {"desired": ...}, "tags": ...,
        "version": N}}), in one transaction; what is not given is left
        alone."""
        device = before = await self.visible(by, device_id)
        new_name = None
        if name is not UNSET:
            access.require_owner(by, device, "rename a device")
            new_name = check_name(name, "name")
        shares = scopes = None
        if shared_with is not UNSET:
            access.require_owner(by, device, "change a device's sharing")
            shares, scopes = access.parse_shares(shared_with)
            await self._check_accounts(a for a in shares if a not in device.shared_with)
            if scopes is None:
                # Account IDs only: the shares that stay keep their scope.
                scopes = {a: s for a, s in device.share_scopes.items() if a in shares}
        update = None
        if shadow_update is not UNSET:
            update = shadow.parse_update(shadow_update, allow_tags=True)
            tags = update.patches.get("tags")
            if tags and "save" in tags:
                timeseries.check_save_list(tags["save"])
            access.check_shadow_update(by, device, update)
        try:
            device, result = await self._store.update_device(
                device_id, new_name, shares, update, self._fleet.now(), share_scopes=scopes)
        except NoSuchRecord:
            raise NotFound("no such device: %s" % device_id)
        if new_name is not None or shares is not None:
            self._fleet.router.device_changed(device)
            # Told to those who saw it before too (an account it is no
            # longer shared with drops it from its list).
            seen_by = tuple(dict.fromkeys(before.shared_with + device.shared_with))
            self._fleet.publish(replace(device, shared_with=seen_by), "device.updated",
                                {"name": device.name, "shared_with": list(device.shared_with)})
        if result is not None:
            self._fleet.shadow_changed(device, result)
        return device

    async def _check_accounts(self, accounts: Iterable[str]) -> None:
        """@raise Invalid: one of C{accounts} does not exist."""
        for account in accounts:
            if await self._store.get_account(account) is None:
                raise Invalid("shared_with names account %s, which does not exist" % account,
                              "shared_with")

    async def rotate_token(self, by: ApiKey, device_id: str) -> tuple[Device, str]:
        """A new token for the device; the old one opens nothing from now
        on, and a connection opened with it is closed. Fire with the device
        and its token."""
        device = await self.visible(by, device_id)
        access.require_owner(by, device, "rotate a device's token")
        token = tokens.new_device_token(device_id)
        if not await self._store.set_device_token(device_id, tokens.hash_secret(token)):
            raise NotFound("no such device: %s" % device_id)
        self._fleet.router.disconnect(device_id, closecodes.TOKEN_ROTATED, "device token rotated")
        log.info("device {id}: token rotated by {by}", id=device_id, by=by.id)
        return device, token

    async def delete(self, by: ApiKey, device_id: str) -> Device:
        """Delete the device; a connection it holds is closed."""
        device = await self.visible(by, device_id)
        access.require_owner(by, device, "delete a device")
        if not await self._store.delete_device(device_id):
            raise NotFound("no such device: %s" % device_id)
        self._fleet.router.disconnect(device_id, closecodes.DELETED, "device deleted")
        log.info("device {id} deleted by {by}", id=device_id, by=by.id)
        self._fleet.publish(device, "device.deleted", None)
        return device

    async def call(self, by: ApiKey, device_id: str, method: str, params: Any,
                   timeout: float) -> Any:
        """Call C{method} on the device and fire with its result."""
        if len(method) > MAX_METHOD_LENGTH:
            raise Invalid("method names are at most %d characters" % MAX_METHOD_LENGTH, "method")
        device = await self.visible(by, device_id, live=True)
        access.check_rpc(by, device, method)
        return await self._fleet.call(device, method, params, timeout)


def _write_cursor(order: str, value: Any, device_id: str) -> str:
    raw = json.dumps([order, value, device_id], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _read_cursor(cursor: str, order: str) -> tuple[Any, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        got, value, device_id = json.loads(raw)
    except (ValueError, binascii.Error, TypeError):
        raise Invalid("cursor is not one this API gave", "cursor") from None
    if got != order or not isinstance(device_id, str) or isinstance(value, bool) \
            or not isinstance(value, (str, int, float)):
        raise Invalid("cursor is not one this API gave for order=%s" % order, "cursor")
    return value, device_id
