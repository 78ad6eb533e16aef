"""
What is particular to the PostgreSQL store: its migrations, several nodes
(stores) writing to one database at once, ordering and grouping of a
device's writes, and
the password of its URL, which it never logs.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

import backends
from dashd.domain import shadow, tokens
from dashd.domain.model import Account, ApiKey, Device
from dashd.store import IStore, LastAdminKey, StoreError
from dashd.store.postgres import PostgresStore, migrate, migrations, redact


@pytest.fixture
def database():
    url = backends.create_database()
    yield url
    backends.drop_database(url)


def _schema(conn) -> list[tuple]:
    return conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = 'public'"
        " ORDER BY table_name, ordinal_position").fetchall()


def test_migrations_are_numbered_applied_once_and_step_by_step_equals_at_once(database):
    numbers = [n for n, _ in migrations()]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1
    with psycopg.connect(database, autocommit=True) as conn:
        assert migrate(conn) == (0, numbers[-1])
        assert migrate(conn) == (numbers[-1], numbers[-1])
        at_once = _schema(conn)
    assert {r[0] for r in at_once} >= {"accounts", "api_keys", "devices", "device_shares"}
    stepwise = backends.create_database()
    try:
        with psycopg.connect(stepwise, autocommit=True) as conn:
            for n in numbers:
                assert migrate(conn, upto=n)[1] == n
            assert _schema(conn) == at_once
    finally:
        backends.drop_database(stepwise)


def test_nodes_starting_together_migrate_once(database):
    outcomes = []

    def start() -> None:
        with psycopg.connect(database, autocommit=True) as conn:
            outcomes.append(migrate(conn))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    last = migrations()[-1][0]
    assert sorted(outcomes) == [(0, last)] + [(last, last)] * 3


def test_interface_and_redaction(database):
    store = PostgresStore(database, reactor)
    assert verifyObject(IStore, store)
    assert redact("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact("postgresql://h/db") == "postgresql://h/db"


@pytest_twisted.ensureDeferred
async def test_the_password_of_its_url_is_never_logged(database):
    """What the store logs (here, the schema it migrated on start) and the
    error it raises (here, for a port nobody listens on) show the URL with
    *** for its password. (The machine's PostgreSQL trusts local clients:
    a password in the URL is accepted and ignored.)"""
    secret = "pw-" + tokens.new_id("s")
    parts = urlsplit(database)
    url = urlunsplit(parts._replace(netloc="%s:%s@%s:%d" % (
        parts.username, secret, parts.hostname, parts.port)))
    unreachable = urlunsplit(parts._replace(netloc="%s:%s@%s:%d" % (
        parts.username, secret, parts.hostname, backends.free_port())))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        store = PostgresStore(url, reactor)
        store.start()
        await store.stop()
        with pytest.raises(StoreError) as refused:
            PostgresStore(unreachable, reactor, timeout=1).start()
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = "\n".join(formatEvent(e) or "" for e in events)
    assert "schema migrated from version 0" in logged
    assert "%s:***@" % parts.username in logged and secret not in logged
    assert "cannot open the PostgreSQL store" in str(refused.value)
    assert "%s:***@" % parts.username in str(refused.value)
    assert secret not in str(refused.value)


def _two_nodes(url: str) -> tuple[PostgresStore, PostgresStore]:
    one, two = PostgresStore(url, reactor), PostgresStore(url, reactor)
    one.start()
    two.start()
    return one, two


@pytest_twisted.ensureDeferred
async def test_two_nodes_updating_one_shadow_lose_nothing(database):
    one, two = _two_nodes(database)
    try:
        account = Account(tokens.new_id("a"), "acme", 1.0)
        key = ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0)
        await one.bootstrap_admin_key(key, "h" * 64, account)
        # The second node finds the key there: it creates none.
        again = ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0)
        assert await two.bootstrap_admin_key(again, "i" * 64, account) is None
        device = Device(tokens.new_id("d"), account.id, "dev", 2.0)
        await one.create_device(device, "t" * 64)
        writes = []
        for i in range(100):
            store = one if i % 2 else two
            writes.append(store.update_shadow(
                device.id, shadow.ShadowUpdate({"reported": {"k%d" % i: i}}), 3.0))
        await gatherResults(writes)
        stored = await two.get_device(device.id)
        assert stored.shadow["version"] == 100
        assert stored.shadow["state"]["reported"] == {"k%d" % i: i for i in range(100)}

        # A stale version is refused whichever node writes.
        with pytest.raises(shadow.VersionConflict):
            await one.update_shadow(device.id, shadow.ShadowUpdate({"reported": {"x": 1}},
                                                                   version=3), 4.0)
    finally:
        await one.stop()
        await two.stop()


@pytest_twisted.ensureDeferred
async def test_two_nodes_cannot_revoke_the_last_two_admin_keys_together(database):
    one, two = _two_nodes(database)
    try:
        account = Account(tokens.new_id("a"), "acme", 1.0)
        first = ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0)
        second = ApiKey(tokens.new_id("k"), account.id, "second", "admin", 1.0)
        await one.bootstrap_admin_key(first, "h" * 64, account)
        await one.create_key(second, "j" * 64)
        outcomes = []
        for d in (one.delete_key(first.id, account.id, 0.0), two.delete_key(second.id, account.id, 0.0)):
            try:
                outcomes.append(await d)
            except LastAdminKey as e:
                outcomes.append(e)
        assert sum(1 for o in outcomes if o is True) == 1
        assert sum(1 for o in outcomes if isinstance(o, LastAdminKey)) == 1
        assert len(await two.list_keys(account.id)) == 1
    finally:
        await one.stop()
        await two.stop()


@pytest_twisted.ensureDeferred
async def test_a_device_s_writes_apply_in_order_and_bad_ones_fail_alone(database):
    store = PostgresStore(database, reactor)
    store.start()
    try:
        account = Account(tokens.new_id("a"), "acme", 1.0)
        await store.bootstrap_admin_key(
            ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0), "h" * 64, account)
        device = Device(tokens.new_id("d"), account.id, "dev", 2.0)
        await store.create_device(device, "t" * 64)
        ds = []
        for i in range(300):
            update = shadow.ShadowUpdate({"reported": {"i": i}})
            if i == 150:
                update = shadow.ShadowUpdate({"reported": {"i": -1}}, version=1)  # stale
            ds.append(store.update_shadow(device.id, update, 3.0))
        outcomes = []
        for d in ds:
            try:
                outcomes.append(await d)
            except shadow.VersionConflict as e:
                outcomes.append(e)
        assert isinstance(outcomes[150], shadow.VersionConflict)
        versions = [o[1].document["version"] for i, o in enumerate(outcomes) if i != 150]
        assert versions == list(range(1, 300))
        stored = await store.get_device(device.id)
        assert stored.shadow["state"]["reported"] == {"i": 299}
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_device_s_queued_writes_share_transactions(database):
    """The writes that queue up behind a device's running one run together:
    300 submitted at once take the first alone, then batches of 100. Seen
    in the rows they stored, each marked with the transaction that wrote it
    (a column this test adds, whose default is txid_current(): the
    top-level transaction, which the jobs' savepoints share)."""
    with psycopg.connect(database, autocommit=True) as conn:
        migrate(conn)
        conn.execute("ALTER TABLE data_points ADD COLUMN tx bigint DEFAULT txid_current()")
    store = PostgresStore(database, reactor)
    store.start()
    try:
        account = Account(tokens.new_id("a"), "acme", 1.0)
        await store.bootstrap_admin_key(
            ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0), "h" * 64, account)
        device = Device(tokens.new_id("d"), account.id, "dev", 2.0)
        await store.create_device(device, "t" * 64)
        await store.update_shadow(device.id, shadow.ShadowUpdate({"tags": {"save": ["i"]}}), 3.0)
        await gatherResults([
            store.update_shadow(device.id, shadow.ShadowUpdate({"reported": {"i": i}}), 4.0,
                                save_data=True)
            for i in range(300)])
        with psycopg.connect(database, autocommit=True) as conn:
            rows, transactions = conn.execute(
                "SELECT count(*), count(DISTINCT tx) FROM data_points"
                " WHERE device_id = %s", (device.id,)).fetchone()
        assert (rows, transactions) == (300, 1 + 3)
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_value_postgresql_cannot_hold_is_refused_alone(database):
    store = PostgresStore(database, reactor)
    store.start()
    try:
        account = Account(tokens.new_id("a"), "acme", 1.0)
        await store.bootstrap_admin_key(
            ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0), "h" * 64, account)
        device = Device(tokens.new_id("d"), account.id, "dev", 2.0)
        await store.create_device(device, "t" * 64)
        # PostgreSQL text holds no NUL: such a name is refused, clearly, alone.
        with pytest.raises(StoreError, match="refused the value"):
            await store.update_device(device.id, "bad\x00name", None, None, 4.0)
        assert (await store.get_device(device.id)).name == "dev"
        assert await store.get_device("d\x00") is None
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_devices_short_jobs_waiting_together_share_a_commit(database):
    """What a device connecting costs (credentials, connection, first info)
    may share a transaction with other devices' such jobs while they wait
    for a connection of the pool: a reconnect storm costs a commit per
    group, not three per device. Other jobs keep their own, and a device's
    jobs keep their order."""
    store = PostgresStore(database, reactor, pool_size=1)
    store.start()
    try:
        def txid(cur):
            return cur.execute("SELECT txid_current()").fetchone()[0]

        def slow(cur):
            cur.execute("SELECT pg_sleep(0.3)")
            return txid(cur)

        busy = store._run(slow)  # the only connection is taken meanwhile
        merged = [store._run(txid, order="d%d" % i, merge=True) for i in range(5)]
        alone = store._run(txid, order="other")
        later = store._run(txid, order="d0", merge=True)  # behind d0's first job
        first = await busy
        ids = await gatherResults(merged)
        own, after = await alone, await later
        assert len(set(ids)) == 1 and ids[0] != first
        assert own not in ids and own != first
        assert after not in ids  # d0's second job ran after its first committed
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_different_devices_reports_waiting_together_share_a_commit(database):
    """Device reports (shadow updates) are such short jobs too: a thousand
    devices reporting at once cost a commit per group, not one each."""
    with psycopg.connect(database, autocommit=True) as conn:
        migrate(conn)
        conn.execute("ALTER TABLE data_points ADD COLUMN tx bigint DEFAULT txid_current()")
    store = PostgresStore(database, reactor, pool_size=1)
    store.start()
    try:
        account = Account(tokens.new_id("a"), "acme", 1.0)
        await store.bootstrap_admin_key(
            ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0), "h" * 64, account)
        devices = [Device(tokens.new_id("d"), account.id, "d%d" % i, 2.0) for i in range(20)]
        for device in devices:
            await store.create_device(device, tokens.new_id("t"))
            await store.update_shadow(device.id, shadow.ShadowUpdate({"tags": {"save": ["i"]}}),
                                      3.0)
        busy = store._run(lambda cur: cur.execute("SELECT pg_sleep(0.3)"))
        reports = [store.update_shadow(d.id, shadow.ShadowUpdate({"reported": {"i": 1}}), 4.0,
                                       save_data=True) for d in devices]
        await busy
        versions = [result.document["version"] for _, result in await gatherResults(reports)]
        assert versions == [2] * len(devices)
        with psycopg.connect(database, autocommit=True) as conn:
            rows, transactions = conn.execute(
                "SELECT count(*), count(DISTINCT tx) FROM data_points").fetchone()
        assert (rows, transactions) == (len(devices), 1)
    finally:
        await store.stop()
