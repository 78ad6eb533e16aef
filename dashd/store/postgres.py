"""
The store on PostgreSQL, for cluster mode (``store.url =
"postgresql://..."``): every node of a cluster shares one database.

Same tables and the same behaviour as L{dashd.store.sqlite} (the same store
and end-to-end tests run on both); the schema is in ``migrations_pg/*.sql``,
one numbered file per change, applied in order inside one transaction that
holds an advisory lock (so nodes starting together migrate once) and
recorded in ``dashd_schema``.

The driver is psycopg 3 with psycopg_pool, both maintained by the
PostgreSQL driver's authors. Each method is a I{job}: a function of a cursor,
run in its own transaction on a thread of a pool of C{pool_size} threads, each
holding at most one connection, so the reactor thread never waits on the
database. A job's Deferred fires after its transaction committed, on the
reactor thread (PostgreSQL's commit is durable with the default
``synchronous_commit``). Concurrent writers on several nodes are serialised
by row locks: a shadow update reads its device ``FOR UPDATE``, deleting an
admin key locks its account.

Faults give clear errors instead of hanging: getting a connection, and every
statement, is bounded by C{timeout}; a database that cannot be reached
fails the request with L{StoreError} ("the database is unreachable"), which
the REST API answers with 503. Broken connections are found and replaced
when they are taken from the pool, so the store recovers by itself when the
database comes back.

To add a store method: write its job (a function of a cursor, using the
helpers below) and return C{self._run(job)}; nothing else changes.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout, TooManyRequests
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from dashd.domain import query, shadow
from dashd.domain.model import Account, ApiKey, Device
from dashd.domain.errors import Conflict
from dashd.store import (ACCOUNT_NAME_TAKEN, IStore, LastAdminKey, NotFound, StoreError,
                         StoreUnreachable, calls_sql, firmware_sql, jobs_sql, postgres_records,
                         query_sql, ranges_sql, sessions_sql)
from dashd.store.delivery import Deliveries, deliver
from dashd.store.postgres_records import json_param, json_text_param

log = Logger()

Cursor = psycopg.Cursor[Any]


class DatabaseUnreachable(StoreUnreachable):
    """PostgreSQL cannot be reached (or did not answer in time)."""

Job = Callable[[Cursor], Any]

# pg_advisory_xact_lock keys: migrations, and creating the first admin key.
_MIGRATION_LOCK = 0x64617368  # "dash"
_BOOTSTRAP_LOCK = 0x64617369
_ACCOUNT_NAMES_LOCK = 0x6461736e  # account names are unique

# Seconds between two jobs let through to a database found away (the others
# fail at once meanwhile).
PROBE_INTERVAL = 1.0

# Errors after which a job is run again (its transaction was rolled back).
_RETRY = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
_RETRIES = 3


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://..."
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc="%s:***@%s" % (user, netloc)))


def migrations() -> list[tuple[int, str]]:
    """The numbered PostgreSQL migrations shipped with the package, in order."""
    found = []
    for entry in resources.files("dashd.store").joinpath("migrations_pg").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text("utf-8")))
    found.sort()
    return found


def migrate(conn: psycopg.Connection[Any], upto: int | None = None) -> tuple[int, int]:
    """Apply the migrations the database has not seen (up to C{upto});
    return (from, to). Safe to run from several nodes at once."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS dashd_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM dashd_schema").fetchone()
        if row is None:
            conn.execute("INSERT INTO dashd_schema (version) VALUES (0)")
            current = 0
        else:
            current = row[0]
        version = current
        for number, script in migrations():
            if number <= version or (upto is not None and number > upto):
                continue
            # A Python step runs where the script says "-- python step".
            first, _, rest = script.partition("\n-- python step")
            rest = rest.partition("\n")[2]  # the rest of the marker's comment line
            conn.execute(first.encode("utf-8"))  # several statements, no parameters
            step = _AFTER_MIGRATION.get(number)
            if step is not None:
                with conn.cursor() as cur:
                    step(cur)
            if rest.strip():
                conn.execute(rest.encode("utf-8"))
            version = number
        if version != current:
            conn.execute("UPDATE dashd_schema SET version = %s", (version,))
    return current, version


def _index_devices(cur: Cursor) -> None:
    """Fill the index of device queries (empty, its indexes not built yet)
    for the devices there are, a batch at a time."""
    last = ""
    while True:
        batch = _all(cur, "SELECT id, info, shadow FROM devices WHERE id > %s ORDER BY id"
                          " LIMIT 5000", (last,))
        if not batch:
            return
        with cur.copy("COPY device_facts (device_id, section, path, type, text, num, version)"
                      " FROM STDIN") as copy:
            for device_id, info, doc in batch:
                for row in query.facts(info, doc.get("tags") or {}):
                    copy.write_row((device_id,) + row)
        last = batch[-1][0]


# Python steps of migrations, run in their transaction after their SQL.
_AFTER_MIGRATION: dict[int, Callable[[Cursor], None]] = {6: _index_devices}


def _write_facts(cur: Cursor, device_id: str, info: dict[str, Any] | None,
                 tags: dict[str, Any] | None) -> None:
    """Rewrite the device's rows of the query index for the sections given."""
    for section, value in (("info", info), ("tags", tags)):
        if value is None:
            continue
        cur.execute("DELETE FROM device_facts WHERE device_id = %s AND section = %s",
                    (device_id, section))
    rows = query.facts(info, tags)
    if rows:
        cur.executemany(
            "INSERT INTO device_facts (device_id, section, path, type, text, num, version)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(device_id,) + row for row in rows])


def _firmware(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in query.INDEXED_INFO if k in info}


def schema_version(url: str, timeout: float = 10.0) -> int:
    """The schema version of the database at C{url} (0: no dashd store)."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout))) as conn:
            found = conn.execute("SELECT to_regclass('dashd_schema')").fetchone()
            if found is None or found[0] is None:
                return 0
            row = conn.execute("SELECT version FROM dashd_schema").fetchone()
            return row[0] if row else 0
    except psycopg.Error as e:
        raise StoreError("cannot open the PostgreSQL store %s: %s"
                         % (redact(url), _first_line(e))) from None


@implementer(IStore)
class PostgresStore:
    def __init__(
        self,
        url: str,
        reactor: Any,
        pool_size: int = 8,
        timeout: float = 10.0,
        queue_size: int = 50000,
        shadow_limits: tuple[int, int] = (shadow.DEFAULT_MAX_BYTES, shadow.DEFAULT_MAX_DEPTH),
        migrate: bool = True,
    ) -> None:
        self.url = url
        self._migrate = migrate
        self.shadow_limits = shadow_limits
        self._reactor = reactor
        # Results delivered a slice of time at a time (dashd.store.delivery).
        self._deliveries = Deliveries(reactor)
        self._pool_size = pool_size
        self._timeout = timeout
        self._queue_size = queue_size
        self._pool: ConnectionPool[Any] | None = None
        self._threads: ThreadPool | None = None
        self._in_flight = 0
        # order key -> jobs waiting for the one of that key that runs now
        self._waiting: dict[str, deque[tuple[Job, Deferred[Any], bool]]] = {}
        # Batches waiting for a store thread, and transactions running.
        self._ready: deque[_Ready] = deque()
        self._running = 0
        self._pump_soon = False
        # Devices' credentials asked in this reactor turn, read together
        # (see device_credentials).
        self._credentials_wanted: list[tuple[str, Deferred[Any]]] = []
        self._closing = False
        self._healthy = True
        # While the database is away: why, and the store's own job that
        # finds out whether it is back (no request ever waits for that).
        self._down_reason = ""
        self._probe_call: Any = None
        self._stopped: Deferred[None] | None = None
        # Called on the reactor with the seconds each job took, from its
        # submission to its durable result (dashd.ops.metrics sets it).
        self.latency_observer: Callable[[float], None] | None = None

    @property
    def is_open(self) -> bool:
        return self._pool is not None and not self._closing

    def queue_depth(self) -> int:
        """Jobs submitted and not finished yet."""
        return self._in_flight

    def _connection_kwargs(self) -> dict[str, Any]:
        ms = int(self._timeout * 1000)
        return {
            "autocommit": True,  # every job opens its own transaction
            "connect_timeout": max(1, int(self._timeout)),
            "application_name": "dashd",
            # Bound every statement and lock wait; find dead peers on idle
            # connections.
            "options": "-c statement_timeout=%d -c lock_timeout=%d "
                       "-c idle_in_transaction_session_timeout=%d" % (ms, ms, ms * 3),
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }

    # Life cycle

    def start(self) -> None:
        if self._pool is not None:
            return
        # psycopg_pool warns (on stderr) at every failed reconnection attempt,
        # each second while the database is away; this store says it once
        # when the database goes and once when it is back.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        pool: ConnectionPool[Any] = ConnectionPool(
            self.url,
            kwargs=self._connection_kwargs(),
            min_size=1,
            max_size=self._pool_size,
            open=False,
            # A connection broken while idle (database restarted) is found
            # and replaced when it is taken, instead of failing a job.
            check=ConnectionPool.check_connection,
            timeout=self._timeout,
            max_waiting=self._queue_size,
            # psycopg_pool retries a lost connection with a doubling pause
            # until this many seconds have passed, then starts afresh on the
            # next request: keep it short, so that the pause (and the time
            # to notice the database is back) stays a few seconds.
            reconnect_timeout=max(2.0, self._timeout),
            name="dashd",
        )
        try:
            pool.open(wait=True, timeout=self._timeout)
            before = after = 0
            if self._migrate:
                with pool.connection(timeout=self._timeout) as conn:
                    before, after = migrate(conn)
        except (PoolTimeout, psycopg.Error) as e:
            pool.close(timeout=1)
            why = _first_line(e)
            if isinstance(e, PoolTimeout):
                # "pool initialization incomplete" says nothing: ask once
                # more, directly, for the reason (refused, unknown host...).
                try:
                    psycopg.connect(self.url, **self._connection_kwargs()).close()
                except psycopg.Error as direct:
                    why = _first_line(direct)
            unreachable = isinstance(e, (PoolTimeout, psycopg.OperationalError))
            raise (DatabaseUnreachable if unreachable else StoreError)(
                "cannot open the PostgreSQL store %s: %s" % (redact(self.url), why)
            ) from None
        latest = migrations()[-1][0]
        if before > latest:
            # Not ours to write to: a newer dashd's schema is unknown here.
            pool.close(timeout=1)
            raise StoreError(
                "the store %s was written by a newer dashd (schema %d, this dashd knows %d): "
                "run that version, or restore a backup made for this one"
                % (redact(self.url), before, latest))
        if before != after:
            log.info(
                "store {url}: schema migrated from version {before} to {after}",
                url=redact(self.url), before=before, after=after,
            )
        self._pool = pool
        self._threads = ThreadPool(minthreads=0, maxthreads=self._pool_size,
                                   name="dashd-postgresql")
        self._threads.start()

    def stop(self) -> Deferred[None]:
        if self._pool is None:
            return succeed(None)
        if self._stopped is None:
            self._stopped = Deferred()
            self._closing = True
            if self._probe_call is not None and self._probe_call.active():
                self._probe_call.cancel()
            self._probe_call = None
            self._maybe_stopped()
        return self._stopped

    def _maybe_stopped(self) -> None:
        if not self._closing or self._in_flight or self._stopped is None or self._pool is None:
            return
        pool, threads, stopped = self._pool, self._threads, self._stopped
        self._pool = None
        self._threads = None
        assert threads is not None
        threads.stop()  # idle by now: nothing in flight
        # Closing the pool joins its worker threads: do it off the reactor.
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), pool.close, 5)
        d.addErrback(lambda f: log.failure("closing the PostgreSQL pool", f))
        d.addBoth(lambda _: stopped.callback(None))

    # Running jobs

    def _run(self, job: Job, order: str | None = None, merge: bool = False,
             probe: bool = False) -> Deferred[Any]:
        """Run C{job} in a transaction on a store thread; fire with its result
        after the commit. Jobs with the same C{order} key (a device ID) run
        one after the other, in the order they were submitted, as they do on
        SQLite: a device's pipelined updates apply in the order it sent them.
        Those that queue up behind a running one then run together in one
        transaction, each in its own savepoint (one commit for a burst).

        C{merge}: a short job on one device's row (what a device connecting
        costs: its credentials, its connection, its first info), which may
        share its transaction with other devices' such jobs when they wait
        for a connection of the pool together: a reconnect storm (a node's
        devices coming to the others) then costs a commit per group of
        devices rather than three per device."""
        if self._pool is None or self._closing or self._threads is None:
            return fail(StoreError("the store is closed"))
        if not self._healthy and not probe:
            # The database was away at the last try: fail at once rather than
            # after store.timeout; the store's probe (L{_probe}) finds out
            # when it is back. A request's job as the probe would make that
            # request wait store.timeout.
            return fail(DatabaseUnreachable(self._down_reason))
        if self._in_flight >= self._queue_size:
            return fail(StoreError("the store is overloaded; try again shortly"))
        self._in_flight += 1
        d: Deferred[Any] = Deferred()
        observer = self.latency_observer
        if observer is not None:
            started = time.monotonic()

            def observe(result: Any) -> Any:
                observer(time.monotonic() - started)
                return result

            d.addBoth(observe)
        if order is None:
            self._dispatch([(job, d)], None, merge)
        elif order in self._waiting:
            self._waiting[order].append((job, d, merge))
        else:
            self._waiting[order] = deque()
            self._dispatch([(job, d)], order, merge)
        return d

    def _dispatch(self, batch: list[tuple[Job, Deferred[Any]]], order: str | None,
                  merge: bool = False) -> None:
        """Queue a batch (one order key's jobs, or one job) for a store
        thread; at most pool_size transactions run at once. A short device
        job (C{merge}) while others run waits for the end of the reactor
        turn, so that those of the devices handled in the same turn (a
        reconnect storm) share a transaction."""
        self._ready.append(_Ready(batch, order, merge))
        if merge and self._running:
            if not self._pump_soon:
                self._pump_soon = True
                self._reactor.callLater(0, self._pump_now)
            return
        self._pump()

    def _pump_now(self) -> None:
        self._pump_soon = False
        self._pump()

    def _pump(self) -> None:
        while self._ready and self._running < self._pool_size:
            first = self._ready.popleft()
            group = [first]
            if first.merge:
                # Other devices' short jobs waiting too: one transaction.
                count, kept = len(first.batch), deque()
                while self._ready and count < _BATCH_SIZE:
                    ready = self._ready.popleft()
                    if ready.merge and count + len(ready.batch) <= _BATCH_SIZE:
                        group.append(ready)
                        count += len(ready.batch)
                    else:
                        kept.append(ready)
                kept.extend(self._ready)
                self._ready = kept
                # Rows locked in one order by every group of this node (a
                # device's jobs are never in two groups at once).
                group.sort(key=_order_key)
            self._running += 1
            self._start(group)

    def _start(self, group: list[_Ready]) -> None:
        assert self._threads is not None and self._pool is not None
        jobs = [job for ready in group for job, _ in ready.batch]
        running = deferToThreadPool(self._reactor, self._threads, self._in_thread, self._pool,
                                    jobs)

        def done(outcomes: Any) -> None:
            self._running -= 1
            self._in_flight -= len(jobs)
            if isinstance(outcomes, Failure):
                outcomes = [outcomes] * len(jobs)
            self._note_health(outcomes[-1])
            start = 0
            for ready in group:
                mine = outcomes[start:start + len(ready.batch)]
                start += len(ready.batch)
                order = ready.order
                if order is not None:
                    waiting = self._waiting[order]
                    if waiting:
                        count = min(len(waiting), _BATCH_SIZE)
                        taken = [waiting.popleft() for _ in range(count)]
                        self._dispatch([(job, d) for job, d, _ in taken], order,
                                       all(m for _, _, m in taken))
                    else:
                        del self._waiting[order]
                # Delivered a slice of time at a time, in order (a group's
                # callbacks in one go held the reactor; dashd.store.delivery).
                # One cancelled meanwhile (its HTTP client went away, say) is
                # skipped there: the work is done and durable all the same.
                self._deliveries.add(
                    (d, Failure(outcome.error) if isinstance(outcome, _Raised) else outcome)
                    for (_, d), outcome in zip(ready.batch, mine))
            # After the results: the stop, if it waits for them.
            self._deliveries.add([(None, self._maybe_stopped)])
            self._pump()

        running.addBoth(done)

    def _note_health(self, result: Any) -> None:
        """Say in the log, once, when the database goes away and comes back."""
        if isinstance(result, Failure) and result.check(DatabaseUnreachable):
            self._down_reason = result.getErrorMessage()
            if self._healthy:
                self._healthy = False
                log.warn("store {url}: {error}; requests get 503 until it is back",
                         url=redact(self.url), error=result.getErrorMessage())
                self._schedule_probe()
        elif not self._healthy and not isinstance(result, (Failure, _Raised)):
            self._healthy = True
            log.info("store {url}: the database answers again", url=redact(self.url))

    def _schedule_probe(self) -> None:
        if self._probe_call is None and not self._healthy and not self._closing:
            self._probe_call = self._reactor.callLater(PROBE_INTERVAL, self._probe)

    def _probe(self) -> None:
        """While the database is away: try it, once a PROBE_INTERVAL."""
        self._probe_call = None
        if self._healthy or self._closing or self._pool is None:
            return
        d = self._run(lambda cur: _one(cur, "SELECT 1"), probe=True)
        d.addErrback(lambda _: None)  # _note_health has seen the outcome
        d.addBoth(lambda _: self._schedule_probe())

    def _in_thread(self, pool: ConnectionPool[Any], jobs: list[Job]) -> list[Any]:
        """Run the jobs in one transaction; their results, or L{_Raised} for
        those that raised (their changes undone, the others' kept)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                with pool.connection(timeout=self._timeout) as conn:
                    with conn.transaction():
                        with conn.cursor() as cur:
                            if len(jobs) == 1:
                                return [_attempt(jobs[0], cur)]
                            return [_attempt_alone(job, cur) if getattr(job, "one_statement", False)
                                    else _attempt(job, cur, conn) for job in jobs]
            except _RETRY:
                if attempt >= _RETRIES:
                    raise StoreError("the store is busy (write conflicts); try again") from None
            except TooManyRequests as e:
                raise StoreError("the store is overloaded: %s" % _first_line(e)) from None
            except PoolTimeout as e:
                raise DatabaseUnreachable("the database is unreachable: %s"
                                          % _first_line(e)) from None
            except pg_errors.QueryCanceled:
                raise DatabaseUnreachable("the database did not answer within %g s"
                                          % self._timeout) from None
            except psycopg.OperationalError as e:
                # Connection lost, server shut down: the transaction did not
                # commit (or, if the commit itself was cut off, nobody was told
                # it did).
                raise DatabaseUnreachable("the database is unreachable: %s"
                                          % _first_line(e)) from None
            except psycopg.Error as e:
                log.error("store job failed: {error}", error=_first_line(e))
                raise StoreError("the store failed") from None
            except _Rollback as e:
                # A single job raised: its transaction is rolled back.
                return [e.raised]

    # Accounts and keys

    def bootstrap_admin_key(
        self, key: ApiKey, secret_hash: str, account: Account
    ) -> Deferred[ApiKey | None]:
        def job(cur: Cursor) -> ApiKey | None:
            # Nodes starting together: only one creates the key.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_BOOTSTRAP_LOCK,))
            if _one(cur, "SELECT 1 FROM api_keys LIMIT 1"):
                return None
            row = _one(cur, "SELECT id FROM accounts ORDER BY created, seq LIMIT 1")
            account_id = row[0] if row else account.id
            if not row:
                _insert_account(cur, replace(account, operator=True))
            stored = replace(key, account_id=account_id)
            _insert_key(cur, stored, secret_hash)
            return stored

        return self._run(job)

    def create_account(self, account: Account, key: ApiKey, secret_hash: str) -> Deferred[Account]:
        def job(cur: Cursor) -> Account:
            # Account names are unique (see the SQLite store); the lock makes
            # the check and the insert one step across nodes.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ACCOUNT_NAMES_LOCK,))
            if _one(cur, "SELECT 1 FROM accounts WHERE lower(name) = lower(%s)", (account.name,)):
                raise Conflict(ACCOUNT_NAME_TAKEN % account.name)
            _insert_account(cur, account)
            _insert_key(cur, key, secret_hash)
            return account

        return self._run(job)

    def list_accounts(self) -> Deferred[list[Account]]:
        def job(cur: Cursor) -> list[Account]:
            rows = _all(cur, "SELECT id, name, created, operator FROM accounts"
                             " ORDER BY created, seq")
            return [_account(r) for r in rows]

        return self._run(job)

    def get_account(self, account_id: str) -> Deferred[Account | None]:
        def job(cur: Cursor) -> Account | None:
            row = _one(cur, "SELECT id, name, created, operator FROM accounts WHERE id = %s",
                       (account_id,))
            return _account(row) if row else None

        return self._run(job)

    def create_key(self, key: ApiKey, secret_hash: str) -> Deferred[ApiKey]:
        def job(cur: Cursor) -> ApiKey:
            _insert_key(cur, key, secret_hash)
            return key

        return self._run(job)

    def key_credentials(self, key_id: str) -> Deferred[tuple[ApiKey, str] | None]:
        def job(cur: Cursor) -> tuple[ApiKey, str] | None:
            row = _one(cur, "SELECT %s, secret_hash FROM api_keys WHERE id = %%s" % _KEY_COLUMNS,
                       (key_id,))
            return (_key(row), row[-1]) if row else None

        return self._run(job)

    def list_keys(self, account_id: str) -> Deferred[list[ApiKey]]:
        def job(cur: Cursor) -> list[ApiKey]:
            rows = _all(cur, "SELECT %s FROM api_keys WHERE account_id = %%s"
                             " ORDER BY created, id" % _KEY_COLUMNS, (account_id,))
            return [_key(r) for r in rows]

        return self._run(job)

    def delete_key(self, key_id: str, account_id: str, now: float) -> Deferred[bool]:
        def job(cur: Cursor) -> bool:
            # Two nodes revoking an account's last two admin keys at once
            # must not both succeed: lock the account first.
            cur.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (account_id,))
            row = _one(cur, "SELECT kind, expires FROM api_keys WHERE id = %s AND account_id = %s",
                       (key_id, account_id))
            if row is None:
                return False
            # An expired admin key opens nothing: removing it leaves as many
            # live ones.
            if row[0] == "admin" and (row[1] is None or row[1] > now):
                (admins,) = _one(
                    cur,
                    "SELECT count(*) FROM api_keys WHERE account_id = %s AND kind = 'admin'"
                    " AND (expires IS NULL OR expires > %s)",
                    (account_id, now),
                )
                if admins <= 1:
                    raise LastAdminKey(
                        "%s is the account's last admin key; create another first" % key_id
                    )
            cur.execute("DELETE FROM api_keys WHERE id = %s", (key_id,))
            return True

        return self._run(job)

    # Devices

    def create_device(self, device: Device, token_hash: str) -> Deferred[Device]:
        def job(cur: Cursor) -> Device:
            cur.execute(
                "INSERT INTO devices (id, account_id, name, token_hash, created,"
                " last_seen, info, shadow) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (device.id, device.account_id, device.name, token_hash, device.created,
                 device.last_seen, json_param(device.info), json_param(device.shadow)),
            )
            _set_shares(cur, device.id, device.shared_with, device.share_scopes)
            _write_facts(cur, device.id, device.info, device.shadow.get("tags") or {})
            return device

        return self._run(job, order=device.id)

    def get_device(self, device_id: str) -> Deferred[Device | None]:
        return self._run(lambda cur: _get_device(cur, device_id), order=device_id)

    def get_device_view(self, device_id: str) -> Deferred[tuple[Device | None, Any]]:
        def job(cur: Any) -> tuple[Device | None, Any]:
            device = _get_device(cur, device_id)
            if device is None:
                return None, None
            return device, postgres_records.get_ota_status(cur, device_id)

        return self._run(job, order=device_id)

    def device_credentials(self, device_id: str) -> Deferred[tuple[Device, str] | None]:
        """
        The credentials asked in one reactor turn are read with one
        statement (a node taking over a dead node's devices reads thousands
        in a few seconds, one statement each before). Such a read is not
        queued behind the device's other jobs on this node: it sees what is
        committed, as a read from another node would; a change of the
        token or a deletion answers its client only once committed.
        """
        d: Deferred[tuple[Device, str] | None] = Deferred()
        if not self._credentials_wanted:
            self._reactor.callLater(0, self._read_credentials)
        self._credentials_wanted.append((device_id, d))
        return d

    def _read_credentials(self) -> None:
        wanted, self._credentials_wanted = self._credentials_wanted, []
        ids = sorted({device_id for device_id, _ in wanted if "\x00" not in device_id})

        @_one_statement
        def job(cur: Cursor) -> dict[str, tuple[Device, str]]:
            if not ids:
                return {}
            rows = _all(cur, "SELECT %s, token_hash FROM devices WHERE id = ANY(%%s)"
                             % _ONE_DEVICE_COLUMNS, (ids,))
            return {row[0]: (_device(cur, row, _shares_column(row[7])), row[-1])
                    for row in rows}

        def read(found: Any) -> None:
            # Each asker its credentials (or the failure), unless cancelled.
            for device_id, d in wanted:
                deliver(d, found if isinstance(found, Failure) else found.get(device_id))

        self._run(job, merge=True).addBoth(read)

    def list_devices(self, account_id: str) -> Deferred[list[Device]]:
        def job(cur: Cursor) -> list[Device]:
            rows = _all(
                cur,
                "SELECT %s FROM devices WHERE account_id = %%s OR id IN"
                " (SELECT device_id FROM device_shares WHERE account_id = %%s)"
                " ORDER BY created, id" % _DEVICE_COLUMNS,
                (account_id, account_id),
            )
            shares = _shares_of(cur, [r[0] for r in rows])
            return [_device(cur, r, shares.get(r[0], _NO_SHARES)) for r in rows]

        return self._run(job)

    def update_device(
        self,
        device_id: str,
        name: str | None,
        shared_with: tuple[str, ...] | None,
        shadow_update: shadow.ShadowUpdate | None,
        now: float,
        share_scopes: dict[str, Any] | None = None,
    ) -> Deferred[tuple[Device, shadow.UpdateResult | None]]:
        def job(cur: Cursor) -> tuple[Device, shadow.UpdateResult | None]:
            device = _get_device(cur, device_id, lock=True)
            if device is None:
                raise NotFound(device_id)
            result = None
            if shadow_update is not None:
                result = self._apply_shadow(cur, device, shadow_update, now)
            if name is not None:
                cur.execute("UPDATE devices SET name = %s WHERE id = %s", (name, device_id))
            if shared_with is not None:
                _set_shares(cur, device_id, shared_with, share_scopes or {})
            return _get_device(cur, device_id), result

        return self._run(job, order=device_id)

    def update_shadow(
        self, device_id: str, update: shadow.ShadowUpdate, now: float, save_data: bool = False
    ) -> Deferred[tuple[Device, shadow.UpdateResult]]:
        def job(cur: Cursor) -> tuple[Device, shadow.UpdateResult]:
            device = _get_device(cur, device_id, lock=True)
            if device is None:
                raise NotFound(device_id)
            result = self._apply_shadow(cur, device, update, now)
            if save_data and update.patches.get("reported"):
                # In the same transaction: a point is durable exactly when
                # the report is acknowledged.
                postgres_records.save_reported(cur, device_id, device.account_id,
                                        result.document["tags"], update.patches["reported"],
                                        now)
            return replace(device, shadow=result.document), result

        # A device's report: a short job on its row, so different devices'
        # reports waiting together share a commit (as on SQLite).
        return self._run(job, order=device_id, merge=True)

    def _apply_shadow(
        self, cur: Cursor, device: Device, update: shadow.ShadowUpdate, now: float
    ) -> shadow.UpdateResult:
        # The caller read the device FOR UPDATE: no other node changes the
        # shadow between this read and the write.
        max_bytes, max_depth = self.shadow_limits
        result = shadow.apply_update(device.shadow, update, now, max_bytes, max_depth)
        if result.stamped:
            cur.execute("UPDATE devices SET shadow = %s WHERE id = %s",
                        (json_text_param(shadow.encoded(result)), device.id))
            tags = result.document.get("tags") or {}
            if tags != (device.shadow.get("tags") or {}):
                _write_facts(cur, device.id, None, tags)
        return result

    def record_info(
        self,
        device_id: str,
        info: dict[str, Any],
        shadow_update: shadow.ShadowUpdate | None,
        now: float,
    ) -> Deferred[tuple[Device, shadow.UpdateResult | None]]:
        unchanged = _unchanged_firmware(info, shadow_update)

        def job(cur: Cursor) -> tuple[Device, shadow.UpdateResult | None]:
            if unchanged is not None:
                # A device coming back with the firmware it had (a node's
                # devices reconnecting elsewhere): its firmware facts and
                # the shadow's reported.ota stay as they are, so one
                # statement, where the row says so, writes the info.
                sql, params = unchanged
                row = _one(cur, sql, (json_param(info), now, device_id) + params)
                if row is not None:
                    return _device(cur, row, _shares_column(row[7])), None
            device = _get_device(cur, device_id, lock=True)
            if device is None:
                raise NotFound(device_id)
            result = None
            if shadow_update is not None:
                result = self._apply_shadow(cur, device, shadow_update, now)
            # The record as written, in the same round trip.
            row = _one(cur, "UPDATE devices SET info = %%s, last_seen = %%s WHERE id = %%s"
                            " RETURNING %s" % _ONE_DEVICE_COLUMNS,
                       (json_param(info), now, device_id))
            if _firmware(info) != _firmware(device.info):
                _write_facts(cur, device_id, info, None)
            return _device(cur, row, _shares_column(row[7])), result

        return self._run(job, order=device_id, merge=True)

    def device_connected(
        self, device_id: str, now: float
    ) -> Deferred[tuple[Device, dict[str, Any] | None] | None]:
        @_one_statement
        def job(cur: Cursor) -> tuple[Device, dict[str, Any] | None] | None:
            # One round trip (a reconnect storm makes thousands of these).
            if "\x00" in device_id:
                return None
            row = _one(cur, _CONNECTED, (now, device_id))
            if row is None:
                return None
            pull = {"file": row[8][0], "stored": row[8][1]} if row[8] is not None else None
            return _device(cur, row, _shares_column(row[7])), pull

        return self._run(job, order=device_id, merge=True)

    def touch(self, device_id: str, now: float) -> Deferred[None]:
        def job(cur: Cursor) -> None:
            cur.execute("UPDATE devices SET last_seen = %s WHERE id = %s", (now, device_id))

        return self._run(job, order=device_id, merge=True)

    def set_device_token(self, device_id: str, token_hash: str) -> Deferred[bool]:
        def job(cur: Cursor) -> bool:
            cur.execute("UPDATE devices SET token_hash = %s WHERE id = %s",
                        (token_hash, device_id))
            return cur.rowcount > 0

        return self._run(job, order=device_id)

    def delete_device(self, device_id: str) -> Deferred[bool]:
        def job(cur: Cursor) -> bool:
            cur.execute("DELETE FROM devices WHERE id = %s", (device_id,))
            return cur.rowcount > 0

        return self._run(job, order=device_id)


    def select_devices(self, selection: query.Selection) -> Deferred[list[Device]]:
        def job(cur: Cursor) -> list[Device]:
            sql, params = query_sql.select_sql("postgresql", selection, _Q_DEVICE_COLUMNS)
            rows = _unprepared(cur, sql, params).fetchall()
            shares = _shares_of(cur, [r[0] for r in rows])
            return [_device(cur, r, shares.get(r[0], _NO_SHARES)) for r in rows]

        return self._run(job)

    def count_devices(self, selection: query.Selection) -> Deferred[int]:
        def job(cur: Cursor) -> int:
            sql, params = query_sql.count_sql("postgresql", selection)
            return int(_unprepared(cur, sql, params).fetchone()[0])

        return self._run(job)

    # Queued calls (the jobs are in calls_sql.py)

    def _calls(self, job: Callable[..., Any], *args: Any, order: str | None = None
               ) -> Deferred[Any]:
        return self._run(lambda cur: job(calls_sql.Db(cur, "postgresql"), *args), order=order)

    def create_call(self, call: Any, per_device: int, per_account: int) -> Deferred[Any]:
        return self._calls(calls_sql.create, call, per_device, per_account, order=call.device_id)

    def get_call(self, call_id: str) -> Deferred[Any]:
        return self._calls(calls_sql.get, call_id)

    def list_calls(self, device_id: str, states: tuple[str, ...] | None, limit: int,
                   before: int | None) -> Deferred[Any]:
        return self._calls(calls_sql.list_for, device_id, states, limit, before,
                           order=device_id)

    def claim_calls(self, device_id: str, claim: str, now: float, limit: int) -> Deferred[Any]:
        return self._calls(calls_sql.claim, device_id, claim, now, limit, order=device_id)

    def end_call(self, call_id: str, attempt: int, claim: str, state: str, now: float,
                 result: Any = None, error: dict[str, Any] | None = None) -> Deferred[Any]:
        return self._calls(calls_sql.end, call_id, attempt, claim, state, now, result, error)

    def unsend_call(self, call_id: str, claim: str) -> Deferred[Any]:
        return self._calls(calls_sql.unsend, call_id, claim)

    def cancel_call(self, call_id: str, now: float) -> Deferred[Any]:
        return self._calls(calls_sql.cancel, call_id, now)

    def expire_calls(self, now: float, limit: int = 1000) -> Deferred[Any]:
        return self._calls(calls_sql.expire, now, limit)

    def sent_calls(self, before: float, limit: int = 1000) -> Deferred[Any]:
        return self._calls(calls_sql.sent_before, before, limit)

    def queued_devices(self, limit: int = 100000) -> Deferred[Any]:
        return self._calls(calls_sql.queued_devices, limit)

    def prune_calls(self, before: float, batch: int = 10000) -> Deferred[int]:
        return self._calls(calls_sql.prune, before, batch)

    # The firmware library (the jobs are in firmware_sql.py)

    def begin_firmware(self, image: dict[str, Any], per_account: int) -> Deferred[None]:
        return self._calls(firmware_sql.begin, image, per_account)

    def put_firmware_chunk(self, firmware_id: str, n: int, data: bytes) -> Deferred[None]:
        return self._calls(firmware_sql.put_chunk, firmware_id, n, data)

    def complete_firmware(self, firmware_id: str) -> Deferred[Any]:
        return self._calls(firmware_sql.complete, firmware_id)

    def get_firmware(self, firmware_id: str) -> Deferred[Any]:
        return self._calls(firmware_sql.get, firmware_id)

    def list_firmware(self, account_id: str | None) -> Deferred[Any]:
        return self._calls(firmware_sql.list_for, account_id)

    def firmware_chunk(self, firmware_id: str, n: int) -> Deferred[Any]:
        return self._calls(firmware_sql.chunk, firmware_id, n)

    def delete_firmware(self, firmware_id: str) -> Deferred[bool]:
        return self._calls(firmware_sql.delete, firmware_id)

    def drop_incomplete_firmware(self, before: float) -> Deferred[int]:
        return self._calls(firmware_sql.drop_incomplete, before)

    # Fleet jobs (the jobs are in jobs_sql.py)

    def create_job(self, job: dict[str, Any], executions: list[Any]) -> Deferred[Any]:
        return self._calls(jobs_sql.create, job, executions)

    def add_job_executions(self, job_id: str, executions: list[Any], now: float
                           ) -> Deferred[int]:
        return self._calls(jobs_sql.add, job_id, executions, now)

    def get_job(self, job_id: str) -> Deferred[Any]:
        return self._calls(jobs_sql.get, job_id)

    def job_counts(self, job_id: str) -> Deferred[Any]:
        return self._calls(jobs_sql.counts, job_id)

    def list_jobs(self, account_id: str | None, limit: int, before: int | None
                  ) -> Deferred[Any]:
        return self._calls(jobs_sql.list_for, account_id, limit, before)

    def job_executions(self, job_id: str, states: tuple[str, ...] | None, limit: int,
                       after: int | None) -> Deferred[Any]:
        return self._calls(jobs_sql.executions, job_id, states, limit, after)

    def set_job_state(self, job_id: str, from_states: tuple[str, ...], state: str, now: float,
                      reason: Any = None) -> Deferred[Any]:
        return self._calls(jobs_sql.set_state, job_id, from_states, state, now, reason)

    def lease_job(self, job_id: str, node: str, now: float, until: float) -> Deferred[bool]:
        return self._calls(jobs_sql.lease, job_id, node, now, until)

    def release_job(self, job_id: str, node: str) -> Deferred[None]:
        return self._calls(jobs_sql.release, job_id, node)

    def active_jobs(self, limit: int = 1000) -> Deferred[Any]:
        return self._calls(jobs_sql.active, limit)

    def jobs_in_flight(self, job_id: str) -> Deferred[int]:
        return self._calls(jobs_sql.in_flight, job_id)

    def dispatch_job(self, job: dict[str, Any], limit: int, now: float, per_device: int,
                     per_account: int, phase: int | None = None) -> Deferred[Any]:
        return self._calls(jobs_sql.dispatch, job, limit, now, per_device, per_account, phase)

    def take_job_executions(self, job_id: str, limit: int, now: float,
                            phase: int | None = None, devices: list[str] | None = None
                            ) -> Deferred[Any]:
        return self._calls(jobs_sql.take, job_id, limit, now, phase, devices)

    def queued_job_devices(self, job_id: str, limit: int, phase: int | None = None
                           ) -> Deferred[Any]:
        return self._calls(jobs_sql.queued, job_id, limit, phase)

    def set_job_execution_ref(self, job_id: str, device_id: str, ref: str) -> Deferred[None]:
        return self._calls(jobs_sql.set_ref, job_id, device_id, ref)

    def job_executions_in_progress(self, job_id: str) -> Deferred[Any]:
        return self._calls(jobs_sql.in_progress, job_id)

    def finish_job_ref(self, job_id: str, device_id: str, ref: str | None, state: str,
                       now: float, result: Any = None, error: Any = None, retries: int = 0
                       ) -> Deferred[Any]:
        return self._calls(jobs_sql.finish_ref, job_id, device_id, ref, state, now, result,
                           error, retries)

    def job_phase_counts(self, job_id: str) -> Deferred[Any]:
        return self._calls(jobs_sql.phase_counts, job_id)

    def set_job_stage(self, job_id: str, stage: dict[str, Any], now: float) -> Deferred[None]:
        return self._calls(jobs_sql.set_stage, job_id, stage, now)

    def expire_job_queued(self, job_id: str, phase: int | None, before: float, now: float
                          ) -> Deferred[int]:
        return self._calls(jobs_sql.expire_queued, job_id, phase, before, now)

    def requeue_job_executions(self, job_id: str, now: float) -> Deferred[int]:
        return self._calls(jobs_sql.requeue_in_progress, job_id, now)

    def finish_job_execution(self, job_id: str, device_id: str, state: str, now: float,
                             result: Any = None, error: Any = None, retries: int = 0
                             ) -> Deferred[Any]:
        return self._calls(jobs_sql.finish, job_id, device_id, state, now, result, error,
                           retries)

    def sync_job(self, job_id: str, retries: int, now: float) -> Deferred[int]:
        return self._calls(jobs_sql.sync, job_id, retries, now)

    def cancel_job(self, job_id: str, now: float, state: str = "cancelled",
                   reason: Any = None) -> Deferred[Any]:
        return self._calls(jobs_sql.cancel, job_id, now, state, reason)

    def retry_job(self, job_id: str, now: float) -> Deferred[Any]:
        return self._calls(jobs_sql.retry_failed, job_id, now)

    def delete_job(self, job_id: str) -> Deferred[bool]:
        return self._calls(jobs_sql.delete, job_id)

    # Alarm rules, alarms, webhooks (the jobs are in alarms_sql.py)

    def alarms_job(self, job: Callable[..., Any], *args: Any, read: bool = False
                   ) -> Deferred[Any]:
        return self._run(lambda cur: job(calls_sql.Db(cur, "postgresql"), *args))

    # Stored data, device events, OTA status, audit (the jobs are in postgres_records.py)

    def query_data(
        self, account_id: str, device_id: str | None, skip: int, limit: int, text: str | None
    ) -> Deferred[list[dict[str, Any]]]:
        return self._run(
            lambda cur: postgres_records.query_points(cur, account_id, device_id, skip, limit, text))

    # Dashboard sessions (the jobs are in sessions_sql.py)

    def create_session(self, id_hash: str, csrf_hash: str, key_id: str, now: float,
                       expires: float, prune: int = 1000) -> Deferred[bool]:
        return self._run(lambda cur: sessions_sql.create(
            calls_sql.Db(cur, "postgresql"), id_hash, csrf_hash, key_id, now, expires, prune))

    def get_session(self, id_hash: str) -> Deferred[tuple[str, str, float] | None]:
        return self._run(lambda cur: sessions_sql.get(calls_sql.Db(cur, "postgresql"), id_hash))

    def delete_session(self, id_hash: str) -> Deferred[bool]:
        return self._run(lambda cur: sessions_sql.delete(calls_sql.Db(cur, "postgresql"), id_hash))

    def delete_key_sessions(self, key_id: str) -> Deferred[int]:
        return self._run(lambda cur: sessions_sql.delete_for_key(
            calls_sql.Db(cur, "postgresql"), key_id))

    def list_sessions(self, now: float, key_id: str | None = None, account_id: str | None = None,
                      limit: int = 1000) -> Deferred[list[dict[str, Any]]]:
        return self._run(lambda cur: sessions_sql.listed(
            calls_sql.Db(cur, "postgresql"), now, key_id, account_id, limit))

    def query_buckets(self, selection: list[tuple[str, list[str] | None]], start: float,
                      end: float, bucket: int) -> Deferred[list[dict[str, Any]]]:
        return self._run(lambda cur: ranges_sql.buckets(
            calls_sql.Db(cur, "postgresql"), selection, start, end, bucket))

    def query_range(self, selection: list[tuple[str, list[str] | None]], start: float,
                    end: float, limit: int) -> Deferred[tuple[list[dict[str, Any]], float | None]]:
        return self._run(lambda cur: ranges_sql.points(
            calls_sql.Db(cur, "postgresql"), selection, start, end, limit))

    def prune_data(self, before: float, batch: int = 10000) -> Deferred[int]:
        return self._run(lambda cur: postgres_records.prune_points(cur, before, batch))

    def append_event(
        self, device_id: str, account_id: str, name: str, data: Any, now: float, keep: int
    ) -> Deferred[int]:
        # All appends of this node in one queue: in order, a burst in one
        # transaction (they serialise on a lock anyway, see postgres_records).
        return self._run(
            lambda cur: postgres_records.append_event(cur, device_id, account_id, name, data, now,
                                               keep),
            order=_APPEND_EVENTS)

    def query_events(
        self, account_id: str, device_id: str | None, start: int, limit: int
    ) -> Deferred[tuple[list[dict[str, Any]], int]]:
        # Behind this node's pending appends: what was published here before
        # the question is in the answer.
        return self._run(
            lambda cur: postgres_records.query_events(cur, account_id, device_id, start, limit),
            order=_APPEND_EVENTS)

    def append_points(self, device_id: str, account_id: str, points: list[tuple[str, Any]],
                      now: float) -> Deferred[int]:
        return self._run(lambda cur: postgres_records.append_points(
            cur, device_id, account_id, points, now), order=device_id)

    def data_pull(self, device_id: str) -> Deferred[dict[str, Any] | None]:
        return self._run(lambda cur: postgres_records.data_pull(cur, device_id), order=device_id)

    def set_data_pull(self, device_id: str, file: str | None, stored: int, now: float,
                      expected: str | None) -> Deferred[bool]:
        return self._run(lambda cur: postgres_records.set_data_pull(
            cur, device_id, file, stored, now, expected), order=device_id)

    def store_pulled(self, device_id: str, account_id: str, file: str, expected: int,
                     stored: int, points: list[tuple[str, Any]], now: float) -> Deferred[bool]:
        return self._run(lambda cur: postgres_records.store_pulled(
            cur, device_id, account_id, file, expected, stored, points, now), order=device_id)

    def set_ota_status(self, device_id: str, status: dict[str, Any], now: float) -> Deferred[bool]:
        return self._run(lambda cur: postgres_records.set_ota_status(cur, device_id, status, now),
                         order=device_id)

    def get_ota_status(self, device_id: str) -> Deferred[dict[str, Any] | None]:
        return self._run(lambda cur: postgres_records.get_ota_status(cur, device_id), order=device_id)

    def ota_statuses(self, states: tuple[str, ...]) -> Deferred[list[dict[str, Any]]]:
        return self._run(lambda cur: postgres_records.ota_statuses(cur, states))

    def append_audit(self, entries: list[dict[str, Any]]) -> Deferred[int]:
        return self._run(lambda cur: postgres_records.append_audit(cur, entries), order=_APPEND_AUDIT)

    def query_audit(
        self, account_id: str, start: int, limit: int
    ) -> Deferred[tuple[list[dict[str, Any]], int]]:
        return self._run(lambda cur: postgres_records.query_audit(cur, account_id, start, limit),
                         order=_APPEND_AUDIT)

    def prune_audit(self, before: float, batch: int = 10000) -> Deferred[int]:
        return self._run(lambda cur: postgres_records.prune_audit(cur, before, batch))

    # Operation

    def ping(self) -> Deferred[bool]:
        return self._run(lambda cur: _one(cur, "SELECT 1") == (1,))


# Helpers for jobs (run on a store thread, never on the reactor)

_BATCH_SIZE = 100


def _order_key(ready: "_Ready") -> str:
    return ready.order or ""


@dataclass
class _Ready:
    """A batch waiting for a store thread: one order key's jobs (or one job
    without a key), and whether it may share a transaction with others."""

    batch: list[tuple[Job, Deferred[Any]]]
    order: str | None
    merge: bool
# Order keys of the appends' queues (device IDs start with "d").
_APPEND_EVENTS = " events"
_APPEND_AUDIT = " audit"


class _Raised:
    """A job's exception, handed back as its outcome."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Rollback(Exception):
    def __init__(self, raised: _Raised) -> None:
        self.raised = raised


def _attempt(job: Job, cur: Cursor, conn: psycopg.Connection[Any] | None = None) -> Any:
    """Run one job; with C{conn}, inside a savepoint of its own. A job that
    raises a domain error (not found, stale version, ...) or hands
    PostgreSQL a value it refuses (a NUL character) fails alone."""
    if conn is None:
        try:
            return job(cur)
        except psycopg.DataError as e:
            raise _Rollback(_Raised(_refused(e))) from None
        except psycopg.Error:
            raise
        except Exception as e:
            raise _Rollback(_Raised(e)) from None
    try:
        with conn.transaction():
            return job(cur)
    except psycopg.DataError as e:
        return _Raised(_refused(e))
    except psycopg.Error:
        raise
    except Exception as e:
        return _Raised(e)


def _one_statement(job: Job) -> Job:
    """Mark a job that makes one statement, on values PostgreSQL cannot
    refuse (a device ID of the token's shape, a time): sharing a
    transaction with others, it needs no savepoint of its own (two round
    trips fewer: SAVEPOINT and RELEASE), since it either did all it does or
    failed the transaction, and a failure of the transaction fails every
    job in it anyway."""
    job.one_statement = True  # type: ignore[attr-defined]
    return job


def _attempt_alone(job: Job, cur: Cursor) -> Any:
    """Run a L{_one_statement} job among others, without a savepoint: an
    error of the database fails the whole transaction (as it would with a
    savepoint, for all but a refused value); an error the job raises after
    its statement fails it alone, having changed nothing."""
    try:
        return job(cur)
    except psycopg.Error:
        raise
    except Exception as e:
        return _Raised(e)


def _unchanged_firmware(
    info: dict[str, Any], update: shadow.ShadowUpdate | None
) -> tuple[str, tuple[Any, ...]] | None:
    """
    For L{PostgresStore.record_info}: the statement that writes the info
    (C{info}, C{last_seen}, C{id} first among its parameters, then the
    returned tuple's) and returns the device only if the stored info has
    the same firmware identity (the indexed keys, so no facts to write) and
    the shadow's reported.ota already holds C{update}'s firmware (so
    applying it changes nothing): what a device reconnecting with the
    firmware it had sends. None when the info's identity is not plain
    strings (the general path decides then).
    """
    firmware = _firmware(info)
    if len(firmware) != len(query.INDEXED_INFO) or not all(
            isinstance(v, str) and "\x00" not in v for v in firmware.values()):
        return None
    ota: dict[str, Any] = {}
    if update is not None:
        if set(update.patches) != {"reported"} or update.stamp:
            return None
        patch = update.patches["reported"]
        if not isinstance(patch, dict) or set(patch) != {"ota"} or not isinstance(
                patch["ota"], dict):
            return None
        ota = patch["ota"]
        if not all(k in query.INDEXED_INFO and isinstance(v, str) and "\x00" not in v
                   for k, v in ota.items()):
            return None
    return (_unchanged_statement(tuple(firmware), tuple(ota)),
            tuple(firmware.values()) + tuple(ota.values()))


@functools.lru_cache(maxsize=64)
def _unchanged_statement(info_keys: tuple[str, ...], ota_keys: tuple[str, ...]) -> str:
    # (The keys are dashd's own names, written into the statement.)
    conditions = []
    for k in info_keys:
        conditions.append("json_typeof(info -> '%s') = 'string' AND info ->> '%s' = %%s"
                          % (k, k))
    for k in ota_keys:
        path = "'{state,reported,ota,%s}'" % k
        conditions.append("json_typeof(shadow #> %s) = 'string' AND shadow #>> %s = %%s"
                          % (path, path))
    return ("UPDATE devices SET info = %%s, last_seen = %%s WHERE id = %%s AND %s RETURNING %s"
            % (" AND ".join(conditions), _ONE_DEVICE_COLUMNS))


def _refused(error: psycopg.DataError) -> StoreError:
    # e.g. a NUL character, which PostgreSQL text cannot hold.
    return StoreError("the database refused the value: %s" % _first_line(error))


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or error.__class__.__name__
    return re.sub(r"\s+", " ", text.splitlines()[0])


def _one(cur: Cursor, sql: str, params: Any = ()) -> Any:
    cur.execute(sql.encode("utf-8"), params)
    return cur.fetchone()


def _unprepared(cur: Cursor, sql: str, params: Any) -> Cursor:
    """Run a device query planned for its values every time: psycopg
    prepares a statement run often, and after five runs PostgreSQL may
    plan it once for any values, which for a query of a site among the
    devices online (a list of thousands) took 2 s instead of 25 ms."""
    cur.execute(sql.encode("utf-8"), params, prepare=False)
    return cur


def _all(cur: Cursor, sql: str, params: Any = ()) -> list[Any]:
    cur.execute(sql.encode("utf-8"), params)
    return cur.fetchall()


def _account(row: Any) -> Account:
    return Account(id=row[0], name=row[1], created=row[2], operator=bool(row[3]))


def _insert_account(cur: Cursor, account: Account) -> None:
    cur.execute(
        "INSERT INTO accounts (id, name, created, operator) VALUES (%s, %s, %s, %s)",
        (account.id, account.name, account.created, account.operator),
    )


_KEY_COLUMNS = "id, account_id, name, kind, created, expires, scope"


def _key(row: Any) -> ApiKey:
    return ApiKey(id=row[0], account_id=row[1], name=row[2], kind=row[3], created=row[4],
                  expires=row[5], scope=row[6])


def _insert_key(cur: Cursor, key: ApiKey, secret_hash: str) -> None:
    cur.execute(
        "INSERT INTO api_keys (id, account_id, name, kind, secret_hash, created, expires, scope)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (key.id, key.account_id, key.name, key.kind, secret_hash, key.created, key.expires,
         json_param(key.scope) if key.scope is not None else None),
    )


_DEVICE_COLUMNS = "id, account_id, name, created, last_seen, info, shadow"
_Q_DEVICE_COLUMNS = ", ".join("d." + c for c in _DEVICE_COLUMNS.split(", "))
# One device with its sharing, in one round trip: [[account, scope], ...].
_ONE_DEVICE_COLUMNS = _DEVICE_COLUMNS + (
    ", (SELECT json_agg(json_build_array(s.account_id, s.scope) ORDER BY s.seq)"
    " FROM device_shares s WHERE s.device_id = devices.id)")

# A device connects: its last_seen, its record and its data pull record.
_CONNECTED = ("UPDATE devices SET last_seen = %%s WHERE id = %%s RETURNING %s,"
              " (SELECT json_build_array(p.file, p.stored) FROM data_pulls p"
              " WHERE p.device_id = devices.id)" % _ONE_DEVICE_COLUMNS)

_NO_SHARES: tuple[tuple[str, ...], dict[str, Any]] = ((), {})


def _shares_column(value: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    if not value:
        return _NO_SHARES
    return (tuple(a for a, _ in value), {a: scope for a, scope in value if scope is not None})


def _get_device(cur: Cursor, device_id: str, lock: bool = False) -> Device | None:
    if "\x00" in device_id:
        return None  # PostgreSQL text cannot hold NUL: no such device
    row = _one(cur, "SELECT %s FROM devices WHERE id = %%s%s"
                    % (_ONE_DEVICE_COLUMNS, " FOR NO KEY UPDATE OF devices" if lock else ""),
               (device_id,))
    return _device(cur, row, _shares_column(row[7])) if row else None


def _device(cur: Cursor, row: Any,
            shares: tuple[tuple[str, ...], dict[str, Any]] | None = None) -> Device:
    if shares is None:
        shares = _shares_of(cur, [row[0]]).get(row[0], _NO_SHARES)
    return Device(id=row[0], account_id=row[1], name=row[2], created=row[3], last_seen=row[4],
                  info=row[5], shadow=row[6], shared_with=shares[0],
                  share_scopes=dict(shares[1]))


def _shares_of(cur: Cursor,
               device_ids: list[str]) -> dict[str, tuple[tuple[str, ...], dict[str, Any]]]:
    """Device ID -> (the accounts it is shared with, the scopes of those
    shares that have one)."""
    if not device_ids:
        return {}
    accounts: dict[str, list[str]] = {}
    scopes: dict[str, dict[str, Any]] = {}
    rows = _all(cur, "SELECT device_id, account_id, scope FROM device_shares"
                     " WHERE device_id = ANY(%s) ORDER BY seq", (device_ids,))
    for device_id, account_id, scope in rows:
        accounts.setdefault(device_id, []).append(account_id)
        if scope is not None:
            scopes.setdefault(device_id, {})[account_id] = scope
    return {k: (tuple(v), scopes.get(k, {})) for k, v in accounts.items()}


def _set_shares(cur: Cursor, device_id: str, accounts: tuple[str, ...],
                scopes: dict[str, Any]) -> None:
    cur.execute("DELETE FROM device_shares WHERE device_id = %s", (device_id,))
    if accounts:
        cur.executemany(
            "INSERT INTO device_shares (device_id, account_id, scope) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            [(device_id, a, json_param(scopes[a]) if a in scopes else None) for a in accounts],
        )
