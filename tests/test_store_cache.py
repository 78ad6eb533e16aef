"""
The SQLite writer's cache of devices whose shadow it wrote
(dashd.store.sqlite._DeviceCache): a device's next report uses what the
last one wrote instead of reading the row, and every other way the row or
its sharing can change makes the next report read it again: REST writes,
sharing, deletion (also by cascade), last_seen, another connection to the
file, a job rolled back to its savepoint, a batch that failed.

Each test here fails with the invalidation it is named after taken out
(checked by hand when written: the stale cached device overwrites or hides
the other write).
"""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from dashd.domain import shadow, tokens
from dashd.domain.model import Account, ApiKey, Device
from dashd.jsontext import compact
from dashd.store import NotFound
from dashd.store import sqlite_records
from dashd.store.sqlite import InlineSQLiteStore, SQLiteStore


def report(**values):
    return shadow.ShadowUpdate({"reported": values})


@pytest.fixture
def inline(tmp_path):
    s = InlineSQLiteStore(str(tmp_path / "c.sqlite3"), synchronous="OFF")
    s.start()
    yield s
    s.stop()


def run(d: Deferred):
    """The result of a Deferred that has fired (the inline store's have)."""
    out = []
    d.addBoth(out.append)
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def account_and_device(store, shared_with=()):
    account = Account(tokens.new_id("a"), "acme", 1.0)
    key = ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0)
    run(store.bootstrap_admin_key(key, "h" * 64, account))
    device = Device(tokens.new_id("d"), account.id, "dev", 2.0, shared_with=shared_with)
    run(store.create_device(device, tokens.new_id("t")))
    return account, device


def test_a_report_keeps_the_device_and_the_next_one_uses_it(inline):
    _, device = account_and_device(inline)
    statements = []
    inline._conn.set_trace_callback(statements.append)
    stored, result = run(inline.update_shadow(device.id, report(n=1), 3.0))
    assert device.id in inline._cache and result.document["version"] == 1
    assert any(s.startswith("SELECT") and "FROM devices" in s for s in statements)
    del statements[:]
    stored, result = run(inline.update_shadow(device.id, report(n=2), 4.0))
    # No read of the row, its sharing, or anything else: one UPDATE.
    reads = [s for s in statements if s.startswith("SELECT") and "data_version" not in s]
    assert reads == []
    assert [s for s in statements if s.startswith("UPDATE")] == [
        s for s in statements if s.startswith("UPDATE devices SET shadow")]
    assert result.document["version"] == 2
    assert stored.shadow["state"]["reported"] == {"n": 2} and stored.name == "dev"
    assert run(inline.get_device(device.id)).shadow == stored.shadow


def test_a_rest_write_between_reports_is_not_overwritten(inline):
    _, device = account_and_device(inline)
    run(inline.update_shadow(device.id, report(n=1), 3.0))
    run(inline.update_device(device.id, "renamed", None,
                             shadow.ShadowUpdate({"desired": {"led": "on"}}), 4.0))
    stored, result = run(inline.update_shadow(device.id, report(n=2), 5.0))
    assert stored.name == "renamed"
    assert result.document["state"]["desired"] == {"led": "on"}
    assert result.document["version"] == 3
    kept = run(inline.get_device(device.id))
    assert kept.shadow["state"] == {"desired": {"led": "on"}, "reported": {"n": 2}}


def test_sharing_changed_between_reports_is_seen(inline):
    _, device = account_and_device(inline, shared_with=("b1",))
    stored, _ = run(inline.update_shadow(device.id, report(n=1), 3.0))
    assert stored.shared_with == ("b1",)
    run(inline.update_device(device.id, None, ("b2", "b3"), None, 4.0, {"b3": {"rpc": []}}))
    stored, _ = run(inline.update_shadow(device.id, report(n=2), 5.0))
    assert stored.shared_with == ("b2", "b3") and stored.share_scopes == {"b3": {"rpc": []}}


def test_a_deleted_device_is_not_found_by_its_next_report(inline):
    _, device = account_and_device(inline)
    run(inline.update_shadow(device.id, report(n=1), 3.0))
    assert run(inline.delete_device(device.id)) is True
    assert device.id not in inline._cache
    with pytest.raises(NotFound):
        run(inline.update_shadow(device.id, report(n=2), 4.0))


def test_any_job_s_write_to_the_row_drops_it(inline):
    """Not only the store's own methods: whatever statement of the writer's
    connection changes a device's row (a job added later, a migration)."""
    _, device = account_and_device(inline)
    run(inline.update_shadow(device.id, report(n=1), 3.0))

    def rename(conn):
        conn.execute("UPDATE devices SET name = 'other' WHERE id = ?", (device.id,))

    run(inline._submit(rename))
    assert device.id not in inline._cache
    stored, _ = run(inline.update_shadow(device.id, report(n=2), 4.0))
    assert stored.name == "other"


def test_last_seen_and_info_written_between_reports_are_seen(inline):
    _, device = account_and_device(inline)
    run(inline.update_shadow(device.id, report(n=1), 3.0))
    run(inline.touch(device.id, 7.0))
    stored, _ = run(inline.update_shadow(device.id, report(n=2), 8.0))
    assert stored.last_seen == 7.0
    # record_info keeps a kept device up to date (and keeps it).
    run(inline.record_info(device.id, {"fw_version": "2.0"}, None, 9.0))
    assert device.id in inline._cache
    stored, _ = run(inline.update_shadow(device.id, report(n=3), 10.0))
    assert stored.info == {"fw_version": "2.0"} and stored.last_seen == 9.0
    assert stored.shadow["state"]["reported"] == {"n": 3}


def test_record_info_does_not_add_devices(inline):
    """Only devices whose shadow is written are kept: an idle fleet's
    heartbeats cost no memory here."""
    _, device = account_and_device(inline)
    run(inline.record_info(device.id, {"fw_version": "2.0"}, None, 9.0))
    assert len(inline._cache) == 0


def test_a_write_by_another_connection_is_seen(inline):
    _, device = account_and_device(inline)
    stored, _ = run(inline.update_shadow(device.id, report(n=1), 3.0))
    other = sqlite3.connect(inline.path, isolation_level=None)
    try:
        doc = dict(stored.shadow, state={"desired": {"x": 1}, "reported": {"n": 1}})
        other.execute("UPDATE devices SET shadow = ?, name = 'elsewhere' WHERE id = ?",
                      (compact(doc), device.id))
    finally:
        other.close()
    stored, result = run(inline.update_shadow(device.id, report(n=2), 4.0))
    assert stored.name == "elsewhere"
    assert result.document["state"] == {"desired": {"x": 1}, "reported": {"n": 2}}


def test_a_report_whose_job_is_rolled_back_is_not_kept(inline, monkeypatch):
    account, device = account_and_device(inline)
    run(inline.update_shadow(device.id, shadow.ShadowUpdate({"tags": {"save": ["n"]}}), 2.0))
    run(inline.update_shadow(device.id, report(n=1), 3.0, save_data=True))
    assert len(run(inline.query_data(account.id, device.id, 0, 10, None))) == 1

    def fail(*args, **kwargs):
        raise sqlite3.OperationalError("disk on fire")

    # The device's row is written, then its data point fails: the job's
    # own savepoint is rolled back, and nothing of it may be kept either.
    monkeypatch.setattr(sqlite_records, "save_reported", fail)
    with pytest.raises(Exception, match="disk on fire"):
        run(inline.update_shadow(device.id, report(n=2), 4.0, save_data=True))
    monkeypatch.undo()
    assert run(inline.get_device(device.id)).shadow["version"] == 2
    stored, result = run(inline.update_shadow(device.id, report(n=3), 5.0, save_data=True))
    assert result.document["version"] == 3
    assert len(run(inline.query_data(account.id, device.id, 0, 10, None))) == 2
    assert run(inline.get_device(device.id)).shadow == stored.shadow


def update_job(store, device_id, update, now):
    """The store job update_shadow would submit, not run."""
    jobs = []
    real_submit = store._submit
    store._submit = lambda job, **kw: jobs.append(job) or Deferred()
    try:
        store.update_shadow(device_id, update, now)
    finally:
        store._submit = real_submit
    return jobs[0]


def test_what_a_job_kept_goes_when_the_job_fails_after(inline):
    """A job that kept a device and then failed (here a shadow update
    followed, in the same job, by an error): its savepoint is rolled back,
    and what it kept is dropped with it."""
    _, device = account_and_device(inline)
    run(inline.update_shadow(device.id, report(n=1), 3.0))
    jobs = [update_job(inline, device.id, report(n=2), 4.0)]

    def update_then_fail(conn):
        jobs[0](conn)
        raise ValueError("changed its mind")

    with pytest.raises(ValueError):
        run(inline._submit(update_then_fail))
    assert run(inline.get_device(device.id)).shadow["version"] == 1
    _, result = run(inline.update_shadow(device.id, report(n=3), 5.0))
    assert result.document["version"] == 2


def test_a_failed_batch_keeps_nothing(inline):
    """Jobs that succeeded in a batch whose transaction is then lost: what
    they kept goes with it."""
    _, device = account_and_device(inline)
    run(inline.update_shadow(device.id, report(n=1), 3.0))
    jobs = [update_job(inline, device.id, report(n=2), 4.0)]

    def lose_the_transaction(conn):
        conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("the disk went away")

    results = inline._run_batch(inline._conn, [(jobs[0], Deferred()), (lose_the_transaction,
                                                                      Deferred())])
    assert all(hasattr(r, "raiseException") for _, r in results)
    assert len(inline._cache) == 0
    _, result = run(inline.update_shadow(device.id, report(n=3), 5.0))
    assert result.document["version"] == 2
    assert result.document["state"]["reported"] == {"n": 3}


def test_the_cache_is_bounded(tmp_path):
    s = InlineSQLiteStore(str(tmp_path / "b.sqlite3"), synchronous="OFF", cache_size=2)
    s.start()
    try:
        _, a = account_and_device(s)
        b = Device(tokens.new_id("d"), a.account_id, "b", 2.0)
        c = Device(tokens.new_id("d"), a.account_id, "c", 2.0)
        for d in (b, c):
            run(s.create_device(d, tokens.new_id("t")))
        for d in (a, b, a, c):
            run(s.update_shadow(d.id, report(n=1), 3.0))
        # b was written longest ago.
        assert len(s._cache) == 2 and a.id in s._cache and c.id in s._cache
        _, result = run(s.update_shadow(b.id, report(n=2), 4.0))
        assert result.document["version"] == 2
    finally:
        s.stop()


@pytest_twisted.ensureDeferred
async def test_reports_and_rest_writes_in_one_batch_of_the_writer_thread(tmp_path):
    """The writer thread's batches: device reports and REST writes of the
    same devices queued together (one transaction), in order."""
    store = SQLiteStore(str(tmp_path / "w.sqlite3"), reactor)
    store.start()
    try:
        account = Account(tokens.new_id("a"), "acme", 1.0)
        await store.bootstrap_admin_key(
            ApiKey(tokens.new_id("k"), account.id, "admin", "admin", 1.0), "h" * 64, account)
        devices = [Device(tokens.new_id("d"), account.id, "d%d" % i, 2.0) for i in range(20)]
        for d in devices:
            await store.create_device(d, tokens.new_id("t"))
        pending = []
        for n in range(1, 6):
            for i, d in enumerate(devices):
                pending.append(store.update_shadow(d.id, report(n=n), 3.0 + n))
                if i % 3 == n % 3:
                    pending.append(store.update_device(
                        d.id, None, None, shadow.ShadowUpdate({"desired": {"n": n}}), 3.0 + n))
        for d in pending:
            await d
        for d in devices:
            kept = await store.get_device(d.id)
            assert kept.shadow["state"]["reported"] == {"n": 5}
            desired = kept.shadow["state"]["desired"]
            writes = [n for n in range(1, 6) if devices.index(d) % 3 == n % 3]
            assert desired == {"n": writes[-1]}
            assert kept.shadow["version"] == 5 + len(writes)
    finally:
        await store.stop()
