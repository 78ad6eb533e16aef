"""
Account names are unique, whatever their case (issue 19 item 9): in the
stores (SQLite and PostgreSQL), and over REST with a 409 that says why.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from dashd.domain import tokens
from dashd.domain.errors import Conflict
from dashd.domain.model import Account, ApiKey

import backends
from support import SECRETS, Client


@pytest.fixture(params=backends.STORES)
def store(request, tmp_path):
    from test_store import open_store

    s, cleanup = open_store(request.param, tmp_path)
    yield s
    pytest_twisted.blockon(s.stop())
    cleanup()


def _account(name: str) -> tuple[Account, ApiKey, str]:
    account = Account(tokens.new_id("a"), name, 1.0)
    key = ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0)
    return account, key, tokens.hash_secret(tokens.new_api_key(key.id))


@pytest_twisted.ensureDeferred
async def test_the_stores_refuse_a_name_taken(store):
    await store.create_account(*_account("Greenhouses"))
    for name in ("Greenhouses", "greenhouses", "GREENHOUSES"):
        with pytest.raises(Conflict) as e:
            await store.create_account(*_account(name))
        assert "account names must be unique" in str(e.value)
    await store.create_account(*_account("Greenhouses 2"))
    assert sorted(a.name for a in await store.list_accounts()) == ["Greenhouses", "Greenhouses 2"]


@pytest_twisted.ensureDeferred
async def test_rest_answers_409(server, admin: Client):
    reply = await admin.post("/api/v2/accounts", {"name": "Unique Farms"})
    assert reply.status == 200, reply
    SECRETS.add(reply.body["admin_key"]["key"])
    reply = await admin.post("/api/v2/accounts", {"name": "  unique farms "})
    assert reply.status == 409
    assert reply.error["message"] == (
        "an account named 'unique farms' exists already: account names must be unique")
