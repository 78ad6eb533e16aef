"""
The stores: the same tests on SQLite (a real file) and PostgreSQL (a
database of this test's own on the machine's server), and on the SQLite
store that runs its jobs inline (for unit tests on a Clock, see
tests/clocked.py), then what is particular to each: SQLite's migrations and
group commit, PostgreSQL's migrations and concurrent writers
(tests/test_store_postgres.py), the inline store's Deferreds.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from dashd.domain import shadow, tokens
from dashd.domain.model import Account, ApiKey, Device
from dashd.store import IStore, LastAdminKey, NotFound, StoreError
from dashd.store import sqlite as sqlite_store
from dashd.store.sqlite import InlineSQLiteStore, SQLiteStore, migrate, migrations

import backends
from support import within


def open_store(backend, tmp_path, **kwargs):
    """A started store of that backend, empty, and what cleans it up."""
    if backend == "sqlite":
        s = SQLiteStore(str(tmp_path / "s.sqlite3"), reactor, **kwargs)
        s.start()
        return s, lambda: None
    if backend == "inline":
        # As the unit tests use it: a job a transaction, so no fsyncs.
        kwargs.setdefault("synchronous", "OFF")
        s = InlineSQLiteStore(str(tmp_path / "s.sqlite3"), **kwargs)
        s.start()
        return s, lambda: None
    from dashd.store.postgres import PostgresStore

    url = backends.create_database()
    s = PostgresStore(url, reactor, **kwargs)
    s.start()
    return s, lambda: backends.drop_database(url)


# The backends, and the inline SQLite store of the unit tests: the same
# results.
STORES = backends.STORES + ["inline"]


@pytest.fixture(params=STORES)
def store(request, tmp_path):
    s, cleanup = open_store(request.param, tmp_path)
    yield s
    pytest_twisted.blockon(s.stop())
    cleanup()


def test_interface(store):
    assert verifyObject(IStore, store)


def test_migrations_are_numbered_and_applied_once(tmp_path):
    numbers = [n for n, _ in migrations()]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1
    conn = sqlite3.connect(str(tmp_path / "m.sqlite3"), isolation_level=None)
    assert migrate(conn) == (0, numbers[-1])
    assert migrate(conn) == (numbers[-1], numbers[-1])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"accounts", "api_keys", "devices", "device_shares"} <= tables


async def _account_and_device(store):
    account = Account(tokens.new_id("a"), "acme", 1.0)
    key = ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0)
    stored = await store.bootstrap_admin_key(key, "h" * 64, account)
    assert stored.account_id == account.id
    device = Device(tokens.new_id("d"), account.id, "dev", 2.0, shared_with=("b1",))
    await store.create_device(device, "t" * 64)
    return account, key, device


@pytest_twisted.ensureDeferred
async def test_devices_keys_and_sharing(store):
    account, key, device = await _account_and_device(store)
    # Only the first start creates a key.
    again = await store.bootstrap_admin_key(
        ApiKey(tokens.new_id("k"), "x", "admin", "admin", 1.0), "i" * 64, account)
    assert again is None
    found, token_hash = await store.device_credentials(device.id)
    assert found == device and token_hash == "t" * 64
    assert [d.id for d in await store.list_devices(account.id)] == [device.id]
    assert [d.id for d in await store.list_devices("b1")] == [device.id]
    assert await store.list_devices("zz") == []
    with pytest.raises(LastAdminKey):
        await store.delete_key(key.id, account.id, now=0.0)
    assert await store.delete_key("knope", account.id, now=0.0) is False


@pytest_twisted.ensureDeferred
async def test_credentials_asked_together(store):
    """Credentials asked in one turn (read with one statement on
    PostgreSQL): each gets its own, the same device twice both, an unknown
    or impossible ID None; a token change is seen once committed."""
    account, _, device = await _account_and_device(store)
    other = Device(tokens.new_id("d"), account.id, "other", 3.0)
    await store.create_device(other, "o" * 64)
    asked = [device.id, other.id, "dnosuchdevice", device.id, "d\x00"]
    found = await gatherResults([store.device_credentials(i) for i in asked])
    assert [f and (f[0].id, f[1]) for f in found] == [
        (device.id, "t" * 64), (other.id, "o" * 64), None, (device.id, "t" * 64), None]
    assert found[0][0] == device
    assert await store.set_device_token(other.id, "n" * 64) is True
    assert (await store.device_credentials(other.id))[1] == "n" * 64
    assert await store.delete_device(other.id) is True
    assert await store.device_credentials(other.id) is None


class TracedSQLite:
    """A SQLite store whose connections report every statement they run
    (sqlite3's trace callback), to count the writer's transactions; and a
    way to hold its writer thread up, so that the jobs submitted meanwhile
    are all waiting when it takes its next batch."""

    def __init__(self, path: str, monkeypatch, **kwargs) -> None:
        self.statements: list[str] = []
        real = sqlite_store.connect

        def connect(*args, **kw):
            conn = real(*args, **kw)
            conn.set_trace_callback(self.statements.append)
            return conn

        monkeypatch.setattr(sqlite_store, "connect", connect)
        self.store = SQLiteStore(path, reactor, **kwargs)
        self.store.start()

    def commits(self) -> int:
        return sum(1 for s in self.statements if s.strip().upper() == "COMMIT")

    async def hold_writer(self, **touches):
        """Occupy the writer with a job of its own until the returned
        function is called; that function fires once the job is done.
        C{touches}: what the job may change (see C{SQLiteStore._submit})."""
        started, release = threading.Event(), threading.Event()

        def job(conn):
            started.set()
            release.wait(10)

        d = self.store._submit(job, **touches)
        assert await deferToThread(started.wait, 10)

        def let_go():
            release.set()
            return d

        return let_go


@pytest.fixture
def traced(tmp_path, monkeypatch):
    t = TracedSQLite(str(tmp_path / "t.sqlite3"), monkeypatch)
    yield t
    pytest_twisted.blockon(t.store.stop())


@pytest_twisted.ensureDeferred
async def test_a_failing_job_does_not_spoil_its_batch(store):
    _, _, device = await _account_and_device(store)
    update = shadow.ShadowUpdate({"reported": {"n": 1}})
    stale = shadow.ShadowUpdate({"reported": {"n": 2}}, version=999)
    # Queued together: on SQLite they share a transaction (see the next test).
    results = [
        store.update_shadow(device.id, update, 3.0),
        store.update_shadow(device.id, stale, 3.0),
        store.update_shadow("dmissing", update, 3.0),
        store.update_shadow(device.id, shadow.ShadowUpdate({"tags": {"t": 1}}), 3.0),
    ]
    outcomes = []
    for d in results:
        try:
            outcomes.append(await d)
        except Exception as e:
            outcomes.append(e)
    assert outcomes[0][1].document["version"] == 1
    assert isinstance(outcomes[1], shadow.VersionConflict)
    assert isinstance(outcomes[2], NotFound)
    assert outcomes[3][1].document["version"] == 2
    stored = await store.get_device(device.id)
    assert stored.shadow["state"]["reported"] == {"n": 1} and stored.shadow["tags"] == {"t": 1}


@pytest_twisted.ensureDeferred
async def test_failing_jobs_share_the_transaction_of_the_good_ones(traced):
    """The same batch on SQLite, shown to be one transaction: its failing
    jobs leave nothing written, and one COMMIT keeps the rest. (Shadow
    updates fail before they write and take no savepoint; other jobs are
    rolled back to theirs.)"""
    store = traced.store
    _, _, device = await _account_and_device(store)
    let_go = await traced.hold_writer()
    before = traced.commits()
    seen = len(traced.statements)
    update = shadow.ShadowUpdate({"reported": {"n": 1}})
    results = [
        store.update_shadow(device.id, update, 3.0),
        store.update_shadow(device.id, shadow.ShadowUpdate({"reported": {"n": 2}}, version=9), 3.0),
        store.update_shadow("dmissing", update, 3.0),
        store.update_shadow(device.id, shadow.ShadowUpdate({"tags": {"t": 1}}), 3.0),
    ]
    await let_go()
    outcomes = []
    for d in results:
        try:
            outcomes.append(await d)
        except Exception as e:
            outcomes.append(e)
    assert [type(o) for o in outcomes[1:3]] == [shadow.VersionConflict, NotFound]
    # The job that held the writer, then the four in one transaction.
    assert traced.commits() - before == 2
    assert not any(s.startswith("ROLLBACK TO") for s in traced.statements[seen:])
    stored = await store.get_device(device.id)
    assert stored.shadow["state"]["reported"] == {"n": 1} and stored.shadow["tags"] == {"t": 1}


@pytest_twisted.ensureDeferred
async def test_connected_and_info_return_what_a_read_would(store):
    """device_connected and record_info hand back the record as stored,
    without a second read: it must be what get_device then returns."""
    _, _, device = await _account_and_device(store)
    connected, pull = await store.device_connected(device.id, 5.0)
    assert connected == await store.get_device(device.id)
    assert connected.last_seen == 5.0 and connected.shared_with == ("b1",)
    assert pull is None
    assert await store.device_connected("dnosuchdevice", 5.0) is None
    # With a pull record (a device that stores data, dashd.app.datapull).
    assert await store.set_data_pull(device.id, "mdash.dashd.x", 0, 5.0, None) is True
    assert await store.set_data_pull(device.id, "mdash.dashd.y", 0, 5.0, None) is False
    assert (await store.device_connected(device.id, 5.5))[1] == {"file": "mdash.dashd.x",
                                                                 "stored": 0}
    update = shadow.ShadowUpdate({"reported": {"ota": {"fw_version": "1.2"}}})
    recorded, result = await store.record_info(device.id, {"fw_version": "1.2"}, update, 6.0)
    assert result.changed
    assert recorded == await store.get_device(device.id)
    assert recorded.info == {"fw_version": "1.2"} and recorded.last_seen == 6.0
    again, result = await store.record_info(device.id, {"uptime": 3}, None, 7.0)
    assert result is None and again == await store.get_device(device.id)


@pytest_twisted.ensureDeferred
async def test_info_of_a_device_back_with_its_firmware(store):
    """A device reconnecting with the firmware it had (the info's identity
    and the shadow's reported.ota unchanged: PostgreSQL writes it in one
    statement) is recorded as one that changed firmware is: the record as
    stored, the firmware facts that the queries read."""
    from dashd.domain import query as q

    account, _, device = await _account_and_device(store)
    firmware = {"app": "a", "arch": "esp32", "fw_version": "1.0", "fw_id": "20261129-1"}

    def ota(fw):
        return shadow.ShadowUpdate({"reported": {"ota": dict(fw)}}, stamp=False)

    async def matching(text):
        selection = q.Selection(where=q.parse(text), account_id=account.id)
        return [d.id for d in await store.select_devices(selection)]

    first, result = await store.record_info(device.id, dict(firmware, ram_free=1), ota(firmware),
                                            6.0)
    assert result.changed
    version = first.shadow["version"]
    from dashd.store import postgres

    reads = []
    real = postgres._get_device
    postgres._get_device = lambda *a, **kw: reads.append(a) or real(*a, **kw)
    try:
        again, result = await store.record_info(device.id, dict(firmware, ram_free=2),
                                                ota(firmware), 7.0)
    finally:
        postgres._get_device = real
    assert not reads  # (PostgreSQL: no read before the write)
    assert not (result and result.changed)
    assert again == await store.get_device(device.id)
    assert again.info == dict(firmware, ram_free=2) and again.last_seen == 7.0
    assert again.shadow["version"] == version
    assert again.shadow["state"]["reported"]["ota"] == firmware
    assert await matching('info.fw_version = "1.0"') == [device.id]
    # A new firmware: the shadow and the facts follow.
    newer = dict(firmware, fw_version="1.1", fw_id="20261129-2")
    updated, result = await store.record_info(device.id, dict(newer, ram_free=3), ota(newer), 8.0)
    assert result.changed and updated == await store.get_device(device.id)
    assert updated.shadow["state"]["reported"]["ota"] == newer
    assert updated.shadow["version"] == version + 1
    assert await matching('info.fw_version = "1.0"') == []
    assert await matching('info.fw_version = "1.1"') == [device.id]
    # The shadow's ota changed elsewhere (not by the info): applied again.
    await store.update_shadow(device.id, shadow.ShadowUpdate(
        {"reported": {"ota": {"fw_id": "other"}}}), 8.5)
    fixed, result = await store.record_info(device.id, dict(newer), ota(newer), 9.0)
    assert result.changed and fixed.shadow["state"]["reported"]["ota"] == newer


@pytest_twisted.ensureDeferred
async def test_many_writes_are_kept_in_order(store):
    _, _, device = await _account_and_device(store)
    ds = [store.update_shadow(device.id, shadow.ShadowUpdate({"reported": {"i": i}}), 4.0)
          for i in range(2000)]
    await gatherResults(ds)
    stored = await store.get_device(device.id)
    assert stored.shadow["version"] == 2000 and stored.shadow["state"]["reported"] == {"i": 1999}


@pytest_twisted.ensureDeferred
async def test_many_writes_are_grouped(traced):
    """Group commit: the jobs that wait while the writer is busy are
    committed together, up to a batch of 1000: 2500 of them in 3
    transactions, not 2500 fsyncs."""
    store = traced.store
    _, _, device = await _account_and_device(store)
    let_go = await traced.hold_writer()
    before = traced.commits()
    ds = [store.update_shadow(device.id, shadow.ShadowUpdate({"reported": {"i": i}}), 4.0)
          for i in range(2500)]
    await let_go()
    await gatherResults(ds)
    # The job that held the writer, then batches of 1000, 1000 and 500.
    assert traced.commits() - before == 1 + 3
    stored = await store.get_device(device.id)
    assert stored.shadow["version"] == 2500 and stored.shadow["state"]["reported"] == {"i": 2499}


@pytest_twisted.ensureDeferred
async def test_the_jobs_of_one_reactor_turn_are_one_batch(traced):
    """The jobs submitted in one reactor turn reach the idle writer
    together, once the turn ends: one transaction, one commit (not a
    wake-up of the writer, and maybe a commit, each)."""
    store = traced.store
    _, _, device = await _account_and_device(store)
    before = traced.commits()
    ds = [store.update_shadow(device.id, shadow.ShadowUpdate({"reported": {"i": i}}), 4.0)
          for i in range(20)]
    assert store.queue_depth() == 20
    results = await gatherResults(ds)
    assert [r[1].document["version"] for r in results] == list(range(1, 21))
    assert traced.commits() - before == 1
    assert store.queue_depth() == 0


@pytest_twisted.ensureDeferred
async def test_a_device_view_waits_only_for_writes_it_could_see(traced):
    """GET /api/v2/devices/ID's reads (get_device_view) on SQLite: behind a
    writer busy with what changes no device record (a fleet job's calls),
    the view reads the last commit at once; behind a write of that device,
    or one that may change any device, it waits for it and sees it."""
    store = traced.store
    account, _, device = await _account_and_device(store)
    other = Device(tokens.new_id("d"), account.id, "other", 2.0)
    await store.create_device(other, "u" * 64)

    async def still_waiting(d) -> bool:
        # Long enough for a read that did not wait to have come back.
        await deferLater(reactor, 0.3, lambda: None)
        return not d.called

    let_go = await traced.hold_writer(touches=None)
    seen, ota = await within(store.get_device_view(device.id), 5)
    assert seen.id == device.id and ota is None
    report = store.update_shadow(device.id, shadow.ShadowUpdate({"reported": {"n": 1}}), 4.0)
    after_report = store.get_device_view(device.id)
    assert (await within(store.get_device_view(other.id), 5))[0].id == other.id
    assert await still_waiting(after_report)
    await let_go()
    await report
    seen, _ = await within(after_report, 5)
    assert seen.shadow["state"]["reported"]["n"] == 1

    let_go = await traced.hold_writer()
    anything = store.get_device_view(other.id)
    assert await still_waiting(anything)
    await let_go()
    assert (await within(anything, 5))[0].id == other.id


@pytest.mark.parametrize("backend", STORES)
@pytest_twisted.ensureDeferred
async def test_closed_store_fails_clearly(tmp_path, backend):
    s, cleanup = open_store(backend, tmp_path)
    await s.stop()
    cleanup()
    with pytest.raises(StoreError, match="closed"):
        await s.get_device("d")


@pytest.mark.parametrize("backend", backends.STORES)
@pytest_twisted.ensureDeferred
async def test_overloaded_store_fails_fast(tmp_path, backend):
    s, cleanup = open_store(backend, tmp_path, queue_size=5)
    try:
        ds = [s.get_device("d%d" % i) for i in range(50)]
        outcomes = []
        for d in ds:
            try:
                outcomes.append(await d)
            except StoreError as e:
                outcomes.append(e)
        refused = [o for o in outcomes if isinstance(o, StoreError)]
        assert refused and "overloaded" in str(refused[0])
    finally:
        await s.stop()
        cleanup()


def test_migration_2_keeps_data_and_marks_the_operator(tmp_path):
    """Upgrade a version-1 database holding data; compare with a fresh one."""
    path = str(tmp_path / "v1.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    first = [m for m in migrations() if m[0] == 1][0][1]
    conn.executescript("BEGIN;" + first + "PRAGMA user_version = 1; COMMIT;")
    conn.execute("INSERT INTO accounts VALUES ('a1', 'first', 1.0)")
    conn.execute("INSERT INTO accounts VALUES ('a2', 'second', 2.0)")
    conn.execute("INSERT INTO api_keys VALUES ('k1', 'a1', 'admin', 'admin', 'h1', 1.0, NULL)")
    conn.execute("INSERT INTO devices VALUES ('d1', 'a2', 'dev', 't1', 3.0, NULL, '{}', ?)",
                 ('{"state":{"desired":{},"reported":{}},"tags":{},"version":0,"timestamp":null}',))
    assert migrate(conn)[0] == 1
    assert conn.execute("SELECT id, operator FROM accounts ORDER BY id").fetchall() == [
        ("a1", 1), ("a2", 0)]
    assert conn.execute("SELECT scope FROM api_keys").fetchall() == [(None,)]
    assert conn.execute("SELECT name FROM devices").fetchall() == [("dev",)]

    fresh = sqlite3.connect(str(tmp_path / "fresh.sqlite3"), isolation_level=None)
    migrate(fresh)
    schema = "SELECT type, name, tbl_name FROM sqlite_master ORDER BY name"
    assert conn.execute(schema).fetchall() == fresh.execute(schema).fetchall()
    columns = {t: conn.execute("PRAGMA table_info(%s)" % t).fetchall()
               for t in ("accounts", "api_keys", "devices", "device_shares")}
    assert columns == {t: fresh.execute("PRAGMA table_info(%s)" % t).fetchall()
                       for t in columns}


@pytest_twisted.ensureDeferred
async def test_expired_admin_keys_do_not_count_as_the_last_one(store):
    account, key, _ = await _account_and_device(store)
    old = ApiKey(tokens.new_id("k"), account.id, "old", "admin", 1.0, expires=5.0)
    await store.create_key(old, "o" * 64)
    with pytest.raises(LastAdminKey):
        await store.delete_key(key.id, account.id, now=10.0)
    assert await store.delete_key(key.id, account.id, now=4.0) is True


@pytest_twisted.ensureDeferred
async def test_an_expired_admin_key_may_be_revoked_beside_the_last_live_one(store):
    """It opens nothing: removing it leaves the live one, so it is not the
    last admin key (it was refused as such)."""
    account, key, _ = await _account_and_device(store)
    old = ApiKey(tokens.new_id("k"), account.id, "old", "admin", 1.0, expires=5.0)
    await store.create_key(old, "o" * 64)
    assert await store.delete_key(old.id, account.id, now=10.0) is True
    with pytest.raises(LastAdminKey):
        await store.delete_key(key.id, account.id, now=10.0)


@pytest_twisted.ensureDeferred
async def test_a_cancelled_caller_does_not_stop_the_others(store):
    """Klein cancels the Deferred of a request whose client went away; the
    results of the rest of that batch must still be delivered."""
    _, _, device = await _account_and_device(store)
    ds = [store.get_device(device.id) for _ in range(50)]
    ds[10].cancel()
    ds[10].addErrback(lambda f: f.trap(Exception))
    results = [await d for i, d in enumerate(ds) if i != 10]
    assert all(r.id == device.id for r in results)


@pytest_twisted.ensureDeferred
async def test_audit_entries_page_and_expire(store):
    account, key, device = await _account_and_device(store)
    assert await store.append_audit([{
        "t": 100.0 + i, "account_id": account.id, "key_id": key.id, "method": "POST",
        "path": "/api/v2/devices/" + device.id, "device_id": device.id, "status": 200,
        "error": None,
    } for i in range(4)]) == 4
    assert await store.append_audit([{
        "t": 104.0, "account_id": account.id, "key_id": key.id, "method": "POST",
        "path": "/api/v2/devices/" + device.id, "device_id": device.id, "status": 500,
        "error": "boom",
    }]) == 1
    entries, following = await store.query_audit(account.id, -2, 10)
    assert [e["timestamp"] for e in entries] == [103.0, 104.0]
    assert following == entries[-1]["offset"] + 1
    assert (await store.query_audit("other", 0, 10)) == ([], 0)
    assert await store.prune_audit(102.5, 2) == 2
    assert await store.prune_audit(102.5, 10) == 1
    entries, _ = await store.query_audit(account.id, 0, 10)
    assert [e["timestamp"] for e in entries] == [103.0, 104.0]


@pytest.mark.parametrize("setting, level", [(None, 2), ("FULL", 2), ("NORMAL", 1)])
@pytest_twisted.ensureDeferred
async def test_store_synchronous_reaches_the_writer_connection(tmp_path, setting, level):
    """store.synchronous, from the configuration file to the connection the
    writer commits on (PRAGMA synchronous: 2 is FULL, 1 NORMAL); FULL by
    default."""
    from dashd import config as configuration
    from dashd.assembly import make_store

    path = tmp_path / "dashd.toml"
    path.write_text('data_dir = "%s"\n' % (tmp_path / "data")
                    + ('[store]\nsynchronous = "%s"\n' % setting if setting else ""))
    store = make_store(configuration.load(str(path)), reactor)
    store.start()
    try:
        assert await store._submit(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]) \
            == level
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_long_reads_do_not_hold_up_writes(tmp_path):
    """Stored data, history and audit queries run on the reader's own
    connection and thread: while one of them takes long (here, held in the
    middle of its read transaction), writes are committed, and the other
    queries wait behind it, not the writes."""
    store = SQLiteStore(str(tmp_path / "r.sqlite3"), reactor)
    store.start()
    try:
        account, _, device = await _account_and_device(store)
        started, release = threading.Event(), threading.Event()

        def long_read(conn):
            if not conn.in_transaction:
                conn.execute("BEGIN")  # a read transaction, held open
            count = conn.execute("SELECT count(*) FROM devices").fetchone()[0]
            started.set()
            release.wait(10)
            return count

        held = store._read(long_read)
        assert await deferToThread(started.wait, 10)
        queries = [store.query_data(account.id, None, 0, 10, None),
                   store.query_events(account.id, None, 0, 10),
                   store.query_audit(account.id, 0, 10)]
        try:
            for i in range(3):
                await within(store.update_shadow(
                    device.id, shadow.ShadowUpdate({"reported": {"i": i}}), 5.0), 3)
            await within(store.create_device(
                Device(tokens.new_id("d"), account.id, "new", 6.0), "u" * 64), 3)
            assert not any(q.called for q in queries)
        finally:
            release.set()
        assert await within(held, 5) == 1  # its snapshot: before the new device
        await within(gatherResults(queries), 5)
        assert len(await store.list_devices(account.id)) == 2
    finally:
        await store.stop()


# The inline store (tests/clocked.py)


def test_inline_store_runs_jobs_at_once_with_no_thread(tmp_path):
    """Every Deferred has fired when the method returns, and no thread
    was started to make it so."""
    import threading

    threads = set(threading.enumerate())
    s = InlineSQLiteStore(str(tmp_path / "i.sqlite3"))
    s.start()
    assert verifyObject(IStore, s) and s.is_open
    account = Account("a1", "acme", 1.0)
    key = ApiKey("k1", "a1", "admin", "admin", 1.0)
    d = s.bootstrap_admin_key(key, "h" * 64, account)
    assert d.called and d.result == key
    device = Device("d1", "a1", "dev", 2.0)
    s.create_device(device, "t" * 64)
    d = s.update_shadow("d1", shadow.ShadowUpdate({"reported": {"n": 1}}), 3.0, save_data=True)
    assert d.called and d.result[1].document["version"] == 1
    # The reader's connection sees what was committed.
    d = s.query_data("a1", "d1", 0, 10, None)
    assert d.called and isinstance(d.result, list)
    # Errors as the writer thread gives them: the job's own, rolled back to
    # its savepoint; the transaction goes on for the next job.
    d = s.update_shadow("d1", shadow.ShadowUpdate({"reported": {"n": 2}}, version=9), 4.0)
    assert d.called and d.result.check(shadow.VersionConflict)
    d.addErrback(lambda f: None)
    d = s.delete_key("k1", "a1", now=5.0)
    assert d.called and d.result.check(LastAdminKey)
    d.addErrback(lambda f: None)
    d = s.get_device("d1")
    assert d.result.shadow["version"] == 1 and d.result.shadow["state"]["reported"] == {"n": 1}
    # None started (one of an earlier test's may have ended meanwhile).
    assert set(threading.enumerate()) - threads == set()
    stopped = s.stop()
    assert stopped.called and not s.is_open
    d = s.get_device("d1")
    assert d.called and d.result.check(StoreError)
    d.addErrback(lambda f: None)


@pytest_twisted.ensureDeferred
async def test_the_store_files_are_owner_only(tmp_path):
    """dashd.sqlite3 and its -wal and -shm files followed the umask (0644 in
    a data directory made by hand): like admin.key, they are 0600, also
    when an older dashd left them readable."""
    data = tmp_path / "by-hand"
    data.mkdir(mode=0o755)
    old_umask = os.umask(0o022)
    try:
        path = str(data / "dashd.sqlite3")
        s = SQLiteStore(path, reactor)
        s.start()
        account, key, _ = await _account_and_device(s)
        for name in ("dashd.sqlite3", "dashd.sqlite3-wal", "dashd.sqlite3-shm"):
            assert stat.S_IMODE(os.stat(data / name).st_mode) == 0o600, name
        await s.stop()
        for name in ("dashd.sqlite3", "dashd.sqlite3-wal", "dashd.sqlite3-shm"):
            if (data / name).exists():
                os.chmod(data / name, 0o644)
        s = SQLiteStore(path, reactor)
        s.start()
        assert (await s.get_account(account.id)) is not None
        for name in ("dashd.sqlite3", "dashd.sqlite3-wal", "dashd.sqlite3-shm"):
            assert stat.S_IMODE(os.stat(data / name).st_mode) == 0o600, name
        await s.stop()
    finally:
        os.umask(old_umask)


@pytest_twisted.ensureDeferred
async def test_only_a_sharees_audit_entries_are_copied_to_the_owners_log(store):
    """One batch: the owner's call, a sharee's (b1) and a stranger's (c1) on
    the shared device, the sharee's on a device not shared with it, and one
    about no device: the owner's log gets the sharee's entry on the shared
    device too, and nothing else (SQLite reads the batch's devices' shares
    once instead of trying a copy an entry)."""
    account, key, device = await _account_and_device(store)
    other = Device(tokens.new_id("d"), account.id, "other", 2.0)
    await store.create_device(other, "u" * 64)

    def entry(t: float, account_id: str, device_id: str | None) -> dict:
        return {"t": t, "account_id": account_id, "key_id": "k-" + account_id, "method": "GET",
                "path": "/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id,
                "device_id": device_id, "status": 200, "error": None, "detail": None}

    assert await store.append_audit([
        entry(1.0, account.id, device.id), entry(2.0, "b1", device.id),
        entry(3.0, "c1", device.id), entry(4.0, "b1", other.id),
        dict(entry(5.0, "b1", None), path="/api/v2/keys"),
    ]) == 5
    owner, _ = await store.query_audit(account.id, 0, 10)
    assert [(e["timestamp"], e["key_account"]) for e in owner] == [
        (1.0, account.id), (2.0, "b1")]
    sharee, _ = await store.query_audit("b1", 0, 10)
    assert [e["timestamp"] for e in sharee] == [2.0, 4.0, 5.0]
    stranger, _ = await store.query_audit("c1", 0, 10)
    assert [e["timestamp"] for e in stranger] == [3.0]
