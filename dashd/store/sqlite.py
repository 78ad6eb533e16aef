"""
The default store: one SQLite file in the data directory.

Tables (the schema is in ``migrations/*.sql``, one numbered file per change,
applied in order and recorded in ``PRAGMA user_version``):

- ``accounts(id, name, created)``
- ``api_keys(id, account_id, name, kind, secret_hash, created, expires)``:
  only the SHA-256 of each key is kept.
- ``devices(id, account_id, name, token_hash, created, last_seen, info,
  shadow)``: ``info`` and ``shadow`` are JSON documents.
- ``device_shares(device_id, account_id)``: who else may use a device.
- ``data_points``, ``device_events``, ``ota_status``: stored data, the log
  and notification history, the last firmware update of each device (jobs
  in ``sqlite_records.py``).

All work happens on one dedicated writer thread, never on the reactor. It
takes every job that is waiting, runs them in a single transaction (each
inside its own savepoint, so that one failing job does not undo the others)
and commits once: a burst of shadow updates from thousands of devices costs
one fsync instead of thousands ("group commit"). Results are handed back to
the reactor only after the commit, so nothing is acknowledged before it is
on disk.

Queries that may read many rows (stored data, the history) run on a second,
read-only connection with a thread of its own, so that they never hold up
the writer; in WAL mode they see the last commit.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from dataclasses import replace
from importlib import resources
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dashd.domain import query, shadow, timeseries
from dashd.domain.model import Account, ApiKey, Device
from dashd.jsontext import compact
from dashd.domain.errors import Conflict
from dashd.store.delivery import Deliveries, deliver
from dashd.store import (ACCOUNT_NAME_TAKEN, IStore, LastAdminKey, NotFound, StoreError,
                         calls_sql, firmware_sql, jobs_sql, query_sql, ranges_sql, sessions_sql,
                         sqlite_records)

log = Logger()

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]

_STOP = object()
# A writer job that may change any device's record (L{SQLiteStore._submit}).
_ANY_DEVICE = object()


def migrations() -> list[tuple[int, str]]:
    """The numbered schema migrations shipped with the package, in order."""
    found = []
    for entry in resources.files("dashd.store").joinpath("migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), entry.read_text("utf-8")))
    found.sort()
    return found


def migrate(conn: sqlite3.Connection, upto: int | None = None) -> tuple[int, int]:
    """Apply the migrations the database has not seen (up to C{upto});
    return (from, to)."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    version = current
    for number, script in migrations():
        if number <= version or (upto is not None and number > upto):
            continue
        # executescript commits first, so wrap each migration in its own
        # transaction explicitly; user_version is transactional in SQLite.
        # A Python step runs where the script says "-- python step", in
        # the same transaction.
        first, _, rest = script.partition(PYTHON_STEP)
        rest = rest.partition("\n")[2]  # the rest of the marker's comment line
        try:
            conn.executescript("BEGIN IMMEDIATE;\n%s\n" % first)
            step = _AFTER_MIGRATION.get(number)
            if step is not None:
                step(conn)
            # (statement by statement: executescript would commit first)
            for statement in _statements(rest):
                conn.execute(statement)
            conn.execute("PRAGMA user_version = %d" % number)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        version = number
    return current, version


def owner_only(path: str) -> None:
    """Make the database file and its companions (-wal, -shm, -journal)
    readable and writable by their owner only."""
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            os.chmod(name, 0o600)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("cannot make {name} owner-only: {error}", name=name, error=e)


PYTHON_STEP = "\n-- python step"


def _statements(script: str) -> list[str]:
    """The SQL statements of C{script}, one by one."""
    out, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending)
            pending = ""
    return out


def _index_devices(conn: sqlite3.Connection) -> None:
    """Fill the index of device queries (empty, its indexes not built yet)
    for the devices there are, a batch at a time."""
    last = ""
    while True:
        batch = conn.execute("SELECT id, info, shadow FROM devices WHERE id > ? ORDER BY id"
                             " LIMIT 5000", (last,)).fetchall()
        if not batch:
            return
        conn.executemany(
            "INSERT INTO device_facts (device_id, section, path, type, text, num, version)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(device_id,) + row for device_id, info, doc in batch
             for row in query.facts(json.loads(info), json.loads(doc).get("tags") or {})])
        last = batch[-1][0]


# Python steps of migrations, run in their transaction after their SQL.
_AFTER_MIGRATION: dict[int, Callable[[sqlite3.Connection], None]] = {8: _index_devices}


def _write_facts(conn: sqlite3.Connection, device_id: str, info: dict[str, Any] | None,
                 tags: dict[str, Any] | None) -> None:
    """Rewrite the device's rows of the query index for the sections given."""
    for section, value in (("info", info), ("tags", tags)):
        if value is None:
            continue
        conn.execute("DELETE FROM device_facts WHERE device_id = ? AND section = ?",
                     (device_id, section))
    rows = query.facts(info, tags)
    conn.executemany(
        "INSERT OR REPLACE INTO device_facts (device_id, section, path, type, text, num, version)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)", [(device_id,) + row for row in rows])


def _version(value: Any) -> str | None:
    return query.version_key(value)


def connect(path: str, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = %s" % synchronous)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    # The version order of device queries (dashd.store.query_sql); in
    # queries only, never in the schema, so any SQLite can read the file.
    conn.create_function("dashd_version", 1, _version, deterministic=True)
    return conn


@implementer(IStore)
class SQLiteStore:
    def __init__(
        self,
        path: str,
        reactor: IReactorThreads,
        synchronous: str = "FULL",
        queue_size: int = 50000,
        batch_size: int = 1000,
        shadow_limits: tuple[int, int] = (shadow.DEFAULT_MAX_BYTES, shadow.DEFAULT_MAX_DEPTH),
        cache_size: int = 20000,
    ) -> None:
        self.path = path
        self.shadow_limits = shadow_limits
        # The write-through cache of devices whose shadow this store wrote
        # (see L{_DeviceCache}): the writer thread's only.
        self._cache = _DeviceCache(cache_size)
        self._reactor = reactor
        self._synchronous = synchronous
        # The writer's jobs: a SimpleQueue (C, one short lock) rather than a
        # Queue (a Condition in Python, its lock taken and a wake-up tried
        # on every put) since most jobs are device reports, one per put.
        # Bounded by counting: jobs handed over (the reactor's count) less
        # jobs taken (the writer's), each count written by one thread only.
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queue_size = queue_size
        self._handed = 0
        self._taken = 0
        # The jobs of this reactor turn, handed over together once it ends
        # (L{_hand_over}): one put and at most one wake-up of the writer a
        # turn, whose batch then holds the whole turn's jobs.
        self._turn: list[tuple[Job, Deferred[Any]]] = []
        self._turn_call: Any = None
        self._batch_size = batch_size
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None
        # Long reads (stored data, history) run on a reader thread of their
        # own, so that a query over millions of rows never holds up writes
        # (WAL lets it read the last commit meanwhile).
        self._read_queue: queue.Queue[Any] = queue.Queue(1000)
        self._reader: threading.Thread | None = None
        # A REST view of one device reads the last commit on a thread of
        # its own when no write it could see is waiting (L{get_device_view}):
        # it then waits neither for the writer's queue (a fleet job's
        # batches) nor for long reads, and still sees every write asked
        # before it. What the writer's jobs not delivered yet may change of
        # a device's record or OTA status: how many may change any device's
        # (the default), and how many each device's; each job's in a deque
        # in delivery order, like their submission times.
        self._point_queue: queue.Queue[Any] = queue.Queue(1000)
        self._point_reader: threading.Thread | None = None
        self._pending_any = 0
        self._pending_device: dict[str, int] = {}
        self._touches: deque[Any] = deque()
        # Called on the reactor with the seconds each job of a batch took,
        # from its submission to its durable result, as a list (one call a
        # batch; dashd.ops.metrics sets it).
        self.latencies_observer: Callable[[list[float]], None] | None = None
        # When each job handed over and not delivered yet was submitted:
        # the writer delivers them in that order.
        self._started: deque[float] = deque()
        # Results from the threads, in the order they came, delivered on the
        # reactor a slice of time at a time (dashd.store.delivery).
        self._deliveries = Deliveries(reactor)

    @property
    def is_open(self) -> bool:
        return self._thread is not None and self._stopped is None

    def queue_depth(self) -> int:
        return self._handed - self._taken

    # Life cycle

    def start(self) -> None:
        if self._thread is not None:
            return
        conn, reader = self._open()
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="dashd-sqlite", daemon=True
        )
        self._thread.start()
        self._reader = threading.Thread(
            target=self._run_reader, args=(reader, self._read_queue),
            name="dashd-sqlite-reader", daemon=True
        )
        self._reader.start()
        self._point_reader = threading.Thread(
            target=self._run_reader, args=(self._reader_connection(), self._point_queue),
            name="dashd-sqlite-point-reader", daemon=True
        )
        self._point_reader.start()

    def _reader_connection(self) -> sqlite3.Connection:
        reader = connect(self.path, self._synchronous)
        reader.execute("PRAGMA query_only = ON")
        return reader

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """The writer's connection (schema brought up to date) and the
        reader's (read-only)."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Owner-only, like admin.key, whatever the umask or the data
        # directory's mode: created so, and made so if an older dashd left it
        # readable. SQLite gives -wal and -shm the database file's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        owner_only(self.path)
        conn = connect(self.path, self._synchronous)
        before, after = migrate(conn)
        latest = migrations()[-1][0]
        if before > latest:
            # Not ours to write to: a newer dashd's schema is unknown here.
            conn.close()
            raise StoreError(
                "the store %s was written by a newer dashd (schema %d, this dashd knows %d): "
                "run that version, or restore a backup made for this one"
                % (self.path, before, latest))
        owner_only(self.path)
        if before != after:
            log.info(
                "store {path}: schema migrated from version {before} to {after}",
                path=self.path,
                before=before,
                after=after,
            )
        self._cache.attach(conn)
        return conn, self._reader_connection()

    def stop(self) -> Deferred[None]:
        if self._thread is None:
            from twisted.internet.defer import succeed

            return succeed(None)
        if self._stopped is None:
            self._stopped = Deferred()
            self._read_queue.put(_STOP)
            self._point_queue.put(_STOP)
            self._hand_over()
            self._queue.put(_STOP)
        return self._stopped

    # The writer thread

    def _submit(self, job: Job, touches: Any = _ANY_DEVICE) -> Deferred[Any]:
        """Hand a job to the writer. C{touches}: what it may change of a
        device's record or OTA status (L{get_device_view}): any device's
        (unless told), C{None} (calls, jobs, alarms, audit, history), or
        that of the device with this ID."""
        d: Deferred[Any] = Deferred()
        if self._thread is None or self._stopped is not None:
            d.errback(StoreError("the store is closed"))
            return d
        if self._handed - self._taken >= self._queue_size:
            d.errback(StoreError("the store is overloaded; try again shortly"))
            return d
        self._pending(touches)
        self._handed += 1
        turn = self._turn
        turn.append((job, d))
        if len(turn) == 1:
            self._turn_call = self._reactor.callLater(0, self._hand_over)  # type: ignore[attr-defined]
        self._started.append(time.monotonic())
        return d

    def _hand_over(self) -> None:
        """Give the writer thread the jobs of the turn that ended."""
        call, self._turn_call = self._turn_call, None
        if call is not None and call.active():
            call.cancel()
        turn, self._turn = self._turn, []
        if turn:
            self._queue.put(turn)

    def _pending(self, touches: Any) -> None:
        self._touches.append(touches)
        if touches is _ANY_DEVICE:
            self._pending_any += 1
        elif touches is not None:
            self._pending_device[touches] = self._pending_device.get(touches, 0) + 1

    def _done(self, n: int) -> None:
        """The first C{n} jobs not delivered yet are (committed)."""
        touching, pending = self._touches, self._pending_device
        for _ in range(n):
            touches = touching.popleft()
            if touches is _ANY_DEVICE:
                self._pending_any -= 1
            elif touches is not None:
                left = pending[touches] - 1
                if left:
                    pending[touches] = left
                else:
                    del pending[touches]

    def _written(self, results: list[tuple[Deferred[Any], Any]]) -> None:
        """A batch written (on the reactor): its jobs are committed (a view
        need not wait for them any more), their latencies told, then their
        Deferreds fired (in turn with the other results, L{_delivered})."""
        self._done(len(results))
        started = self._started
        observer = self.latencies_observer
        if observer is None:
            for _ in results:
                started.popleft()
        else:
            now = time.monotonic()
            observer([now - started.popleft() for _ in results])
        self._delivered(results)

    def _run(self, conn: sqlite3.Connection) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        size = self._batch_size
        # Jobs taken from the queue (lists of a reactor turn's jobs) and
        # not run yet: a batch is at most C{size} of them.
        waiting: list[tuple[Job, Deferred[Any]]] = []
        stop = False
        try:
            while True:
                if not waiting:
                    if stop:
                        break
                    item = get()
                    if item is _STOP:
                        break
                    waiting = item
                while len(waiting) < size and not stop:
                    try:
                        item = get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                    else:
                        waiting += item
                if len(waiting) > size:
                    batch, waiting = waiting[:size], waiting[size:]
                else:
                    batch, waiting = waiting, []
                self._taken += len(batch)
                self._reactor.callFromThread(self._written, self._write(conn, batch))
        finally:
            conn.close()
            # After every result: through the same queue.
            self._reactor.callFromThread(self._delivered, [(None, self._stopped_now)])

    def _read(self, job: Job, point: bool = False) -> Deferred[Any]:
        """Run a read-only job on the reader thread (C{point}: the point
        reader's, see L{get_device_view})."""
        d: Deferred[Any] = Deferred()
        if self._reader is None or self._stopped is not None:
            d.errback(StoreError("the store is closed"))
            return d
        try:
            (self._point_queue if point else self._read_queue).put_nowait((job, d))
        except queue.Full:
            d.errback(StoreError("the store is overloaded; try again shortly"))
        return d

    def _run_reader(self, conn: sqlite3.Connection, jobs: queue.Queue[Any]) -> None:
        try:
            while True:
                item = jobs.get()
                if item is _STOP:
                    break
                job, d = item
                self._reactor.callFromThread(self._delivered, [(d, _read_job(conn, job))])
        finally:
            conn.close()

    def _delivered(self, results: list[tuple[Deferred[Any] | None, Any]]) -> None:
        """Results from the writer and reader threads, on the reactor; (None,
        f): call f after everything before it."""
        self._deliveries.add(results)

    def _stopped_now(self) -> None:
        for reader in (self._reader, self._point_reader):
            if reader is not None:
                # It had its stop first; it is done with its last read by
                # now or soon (a daemon thread; its connection only reads).
                reader.join(5)
        if self._stopped is not None:
            self._stopped.callback(None)

    def _write(
        self, conn: sqlite3.Connection, batch: list[tuple[Job, Deferred[Any]]]
    ) -> list[tuple[Deferred[Any], Any]]:
        """Run a batch of jobs in one transaction: each job's result or
        failure, for L{_deliver}."""
        try:
            return self._run_batch(conn, batch)
        except Exception:
            self._cache.clear()
            log.failure("store batch failed")
            failure = Failure(StoreError("the store failed"))
            return [(d, failure) for _, d in batch]

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[Job, Deferred[Any]]]
    ) -> list[tuple[Deferred[Any], Any]]:
        results: list[tuple[Deferred[Any], Any]] = []
        cache = self._cache
        try:
            conn.execute("BEGIN IMMEDIATE")
            cache.begin(conn)
            for job, d in batch:
                # A job marked atomic leaves nothing written when it fails
                # (it writes with one statement, or takes a savepoint of
                # its own): the device reports, most of what comes here,
                # spare two statements each.
                if getattr(job, "atomic", False):
                    try:
                        result = job(conn)
                    except sqlite3.Error as e:
                        if not conn.in_transaction:
                            raise
                        log.error("store job failed: {error}", error=str(e))
                        cache.job_undone()
                        results.append((d, Failure(StoreError("the store cannot write: %s" % e))))
                    except Exception as e:
                        cache.job_undone()
                        results.append((d, Failure(e)))
                    else:
                        cache.job_done()
                        results.append((d, result))
                    continue
                conn.execute("SAVEPOINT job")
                try:
                    result = job(conn)
                except sqlite3.Error as e:
                    if not conn.in_transaction:
                        # SQLite rolled the whole transaction back (disk
                        # full, I/O error): the batch failed as one.
                        raise
                    log.error("store job failed: {error}", error=str(e))
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    cache.job_undone()
                    results.append((d, Failure(StoreError("the store cannot write: %s" % e))))
                except Exception as e:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    cache.job_undone()
                    results.append((d, Failure(e)))
                else:
                    conn.execute("RELEASE job")
                    cache.job_done()
                    results.append((d, result))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            # Nothing of this batch is durable; say so to every caller.
            cache.clear()
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            log.error("store write failed: {error}", error=str(e))
            failure = Failure(StoreError("the store cannot write: %s" % e))
            return [(d, failure) for _, d in batch]
        return results

    # Accounts and keys

    def bootstrap_admin_key(
        self, key: ApiKey, secret_hash: str, account: Account
    ) -> Deferred[ApiKey | None]:
        def job(conn: sqlite3.Connection) -> ApiKey | None:
            if conn.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone():
                return None
            row = conn.execute(
                "SELECT id FROM accounts ORDER BY created, rowid LIMIT 1"
            ).fetchone()
            account_id = row[0] if row else account.id
            if not row:
                _insert_account(conn, replace(account, operator=True))
            stored = replace(key, account_id=account_id)
            _insert_key(conn, stored, secret_hash)
            return stored

        return self._submit(job)

    def create_account(self, account: Account, key: ApiKey, secret_hash: str) -> Deferred[Account]:
        def job(conn: sqlite3.Connection) -> Account:
            # Account names are unique (whatever their case), so people can
            # tell them apart (accounts older than that rule may share one).
            if conn.execute("SELECT 1 FROM accounts WHERE lower(name) = lower(?)",
                            (account.name,)).fetchone():
                raise Conflict(ACCOUNT_NAME_TAKEN % account.name)
            _insert_account(conn, account)
            _insert_key(conn, key, secret_hash)
            return account

        return self._submit(job)

    def list_accounts(self) -> Deferred[list[Account]]:
        def job(conn: sqlite3.Connection) -> list[Account]:
            rows = conn.execute(
                "SELECT id, name, created, operator FROM accounts ORDER BY created, rowid"
            ).fetchall()
            return [_account(r) for r in rows]

        return self._submit(job)

    def get_account(self, account_id: str) -> Deferred[Account | None]:
        def job(conn: sqlite3.Connection) -> Account | None:
            row = conn.execute(
                "SELECT id, name, created, operator FROM accounts WHERE id = ?", (account_id,)
            ).fetchone()
            return _account(row) if row else None

        return self._submit(job)

    def create_key(self, key: ApiKey, secret_hash: str) -> Deferred[ApiKey]:
        def job(conn: sqlite3.Connection) -> ApiKey:
            _insert_key(conn, key, secret_hash)
            return key

        return self._submit(job)

    def key_credentials(self, key_id: str) -> Deferred[tuple[ApiKey, str] | None]:
        def job(conn: sqlite3.Connection) -> tuple[ApiKey, str] | None:
            row = conn.execute(
                "SELECT %s, secret_hash FROM api_keys WHERE id = ?" % _KEY_COLUMNS,
                (key_id,),
            ).fetchone()
            return (_key(row), row[-1]) if row else None

        return self._submit(job)

    def list_keys(self, account_id: str) -> Deferred[list[ApiKey]]:
        def job(conn: sqlite3.Connection) -> list[ApiKey]:
            rows = conn.execute(
                "SELECT %s FROM api_keys WHERE account_id = ? ORDER BY created, id"
                % _KEY_COLUMNS,
                (account_id,),
            ).fetchall()
            return [_key(r) for r in rows]

        return self._submit(job)

    def delete_key(self, key_id: str, account_id: str, now: float) -> Deferred[bool]:
        def job(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT kind, expires FROM api_keys WHERE id = ? AND account_id = ?",
                (key_id, account_id),
            ).fetchone()
            if row is None:
                return False
            if row[0] == "admin" and (row[1] is None or row[1] > now):
                # Expired admin keys do not count: they open nothing (and
                # removing one leaves as many live ones).
                (admins,) = conn.execute(
                    "SELECT count(*) FROM api_keys WHERE account_id = ? AND kind = 'admin'"
                    " AND (expires IS NULL OR expires > ?)",
                    (account_id, now),
                ).fetchone()
                if admins <= 1:
                    raise LastAdminKey(
                        "%s is the account's last admin key; create another first" % key_id
                    )
            conn.execute("DELETE FROM api_keys WHERE id = ?", (key_id,))
            return True

        return self._submit(job)

    # Devices

    def create_device(self, device: Device, token_hash: str) -> Deferred[Device]:
        def job(conn: sqlite3.Connection) -> Device:
            conn.execute(
                "INSERT INTO devices (id, account_id, name, token_hash, created,"
                " last_seen, info, shadow) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    device.id,
                    device.account_id,
                    device.name,
                    token_hash,
                    device.created,
                    device.last_seen,
                    compact(device.info),
                    compact(device.shadow),
                ),
            )
            _set_shares(conn, device.id, device.shared_with, device.share_scopes)
            _write_facts(conn, device.id, device.info, device.shadow.get("tags") or {})
            return device

        return self._submit(job)

    def get_device(self, device_id: str) -> Deferred[Device | None]:
        return self._submit(lambda conn: _get_device(conn, device_id), touches=None)

    def get_device_view(self, device_id: str) -> Deferred[tuple[Device | None, Any]]:
        def job(conn: sqlite3.Connection) -> tuple[Device | None, Any]:
            device = _get_device(conn, device_id)
            if device is None:
                return None, None
            return device, sqlite_records.get_ota_status(conn, device_id)

        if not self._pending_any and device_id not in self._pending_device:
            # Nothing waiting could change what it reads: the last commit
            # holds every write asked before it.
            return self._read(job, point=True)
        return self._submit(job, touches=None)

    def device_credentials(self, device_id: str) -> Deferred[tuple[Device, str] | None]:
        def job(conn: sqlite3.Connection) -> tuple[Device, str] | None:
            row = conn.execute(
                "SELECT %s, token_hash FROM devices WHERE id = ?" % _DEVICE_COLUMNS,
                (device_id,),
            ).fetchone()
            return (_device(conn, row), row[-1]) if row else None

        return self._submit(job)

    def list_devices(self, account_id: str) -> Deferred[list[Device]]:
        def job(conn: sqlite3.Connection) -> list[Device]:
            rows = conn.execute(
                "SELECT %s FROM devices WHERE account_id = ? OR id IN"
                " (SELECT device_id FROM device_shares WHERE account_id = ?)"
                " ORDER BY created, id" % _DEVICE_COLUMNS,
                (account_id, account_id),
            ).fetchall()
            shares = _shares_of(conn, [r[0] for r in rows])
            return [_device(conn, r, shares.get(r[0], _NO_SHARES)) for r in rows]

        return self._submit(job)

    def update_device(
        self,
        device_id: str,
        name: str | None,
        shared_with: tuple[str, ...] | None,
        shadow_update: shadow.ShadowUpdate | None,
        now: float,
        share_scopes: dict[str, Any] | None = None,
    ) -> Deferred[tuple[Device, shadow.UpdateResult | None]]:
        def job(conn: sqlite3.Connection) -> tuple[Device, shadow.UpdateResult | None]:
            device = _get_device(conn, device_id)
            if device is None:
                raise NotFound(device_id)
            result = None
            if shadow_update is not None:
                result = self._apply_shadow(conn, device, shadow_update, now)
            if name is not None:
                conn.execute("UPDATE devices SET name = ? WHERE id = ?", (name, device_id))
            if shared_with is not None:
                _set_shares(conn, device_id, shared_with, share_scopes or {})
            return _get_device(conn, device_id), result

        return self._submit(job)

    def update_shadow(
        self, device_id: str, update: shadow.ShadowUpdate, now: float, save_data: bool = False
    ) -> Deferred[tuple[Device, shadow.UpdateResult]]:
        cache = self._cache

        def job(conn: sqlite3.Connection) -> tuple[Device, shadow.UpdateResult]:
            device = cache.get(device_id)
            if device is None:
                device = _get_device(conn, device_id)
                if device is None:
                    raise NotFound(device_id)
            max_bytes, max_depth = self.shadow_limits
            # Whatever the update is refused for is raised here, before
            # anything is written.
            result = shadow.apply_update(device.shadow, update, now, max_bytes, max_depth)
            document = result.document
            tags = document.get("tags") or {}
            facts = result.stamped and tags != (device.shadow.get("tags") or {})
            reported = update.patches.get("reported") if save_data else None
            save = bool(reported) and bool(timeseries.saved_keys(tags))
            # Atomic on its own (see L{_run_batch}): one statement is, and
            # more take a savepoint of their own.
            several = facts or save
            if several:
                conn.execute("SAVEPOINT shadow")
            try:
                if result.stamped:
                    conn.execute("UPDATE devices SET shadow = ? WHERE id = ?",
                                 (shadow.encoded(result), device_id))
                if facts:
                    _write_facts(conn, device_id, None, tags)
                if save:
                    # In the same transaction: a point is durable exactly
                    # when the report is acknowledged.
                    sqlite_records.save_reported(conn, device_id, device.account_id, tags,
                                                 reported, now)
            except BaseException:
                if several:
                    conn.execute("ROLLBACK TO shadow")
                    conn.execute("RELEASE shadow")
                raise
            if several:
                conn.execute("RELEASE shadow")
            if result.stamped:
                device = _with_shadow(device, document)
            # What the row holds now (its UPDATE dropped what was kept).
            cache.put(device)
            return device, result

        job.atomic = True  # type: ignore[attr-defined]
        return self._submit(job, touches=device_id)

    def _apply_shadow(
        self,
        conn: sqlite3.Connection,
        device: Device,
        update: shadow.ShadowUpdate,
        now: float,
    ) -> shadow.UpdateResult:
        max_bytes, max_depth = self.shadow_limits
        result = shadow.apply_update(device.shadow, update, now, max_bytes, max_depth)
        if result.stamped:
            conn.execute(
                "UPDATE devices SET shadow = ? WHERE id = ?",
                (shadow.encoded(result), device.id),
            )
            tags = result.document.get("tags") or {}
            if tags != (device.shadow.get("tags") or {}):
                _write_facts(conn, device.id, None, tags)
        return result

    def record_info(
        self,
        device_id: str,
        info: dict[str, Any],
        shadow_update: shadow.ShadowUpdate | None,
        now: float,
    ) -> Deferred[tuple[Device, shadow.UpdateResult | None]]:
        cache = self._cache

        def job(conn: sqlite3.Connection) -> tuple[Device, shadow.UpdateResult | None]:
            cached = device = cache.get(device_id)
            if device is None:
                device = _get_device(conn, device_id)
                if device is None:
                    raise NotFound(device_id)
            result = None
            if shadow_update is not None:
                result = self._apply_shadow(conn, device, shadow_update, now)
            conn.execute(
                "UPDATE devices SET info = ?, last_seen = ? WHERE id = ?",
                (compact(info), now, device_id),
            )
            if _firmware(info) != _firmware(device.info):
                _write_facts(conn, device_id, info, None)
            # What was read plus what was written, without reading it again.
            shadow_doc = device.shadow if result is None else result.document
            device = replace(device, info=info, last_seen=now, shadow=shadow_doc)
            if cached is not None:
                # Kept up to date, not added: only devices whose shadow is
                # written are kept (an idle fleet costs no memory here).
                cache.put(device)
            return device, result

        return self._submit(job, touches=device_id)

    def device_connected(
        self, device_id: str, now: float
    ) -> Deferred[tuple[Device, dict[str, Any] | None] | None]:
        def job(conn: sqlite3.Connection) -> tuple[Device, dict[str, Any] | None] | None:
            conn.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (now, device_id))
            device = _get_device(conn, device_id)
            if device is None:
                return None
            return device, sqlite_records.data_pull(conn, device_id)

        return self._submit(job, touches=device_id)

    def touch(self, device_id: str, now: float) -> Deferred[None]:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (now, device_id))

        return self._submit(job, touches=device_id)

    def set_device_token(self, device_id: str, token_hash: str) -> Deferred[bool]:
        def job(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE devices SET token_hash = ? WHERE id = ?", (token_hash, device_id)
            )
            return cur.rowcount > 0

        return self._submit(job)

    def delete_device(self, device_id: str) -> Deferred[bool]:
        def job(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM devices WHERE id = ?", (device_id,))
            return cur.rowcount > 0

        return self._submit(job)

    def select_devices(self, selection: query.Selection) -> Deferred[list[Device]]:
        def job(conn: sqlite3.Connection) -> list[Device]:
            sql, params = query_sql.select_sql("sqlite", selection, _Q_DEVICE_COLUMNS)
            rows = conn.execute(sql, params).fetchall()
            shares = _shares_of(conn, [r[0] for r in rows])
            return [_device(conn, r, shares.get(r[0], _NO_SHARES)) for r in rows]

        return self._read(job)

    def count_devices(self, selection: query.Selection) -> Deferred[int]:
        def job(conn: sqlite3.Connection) -> int:
            sql, params = query_sql.count_sql("sqlite", selection)
            return int(conn.execute(sql, params).fetchone()[0])

        return self._read(job)

    # Queued calls (the jobs are in calls_sql.py)

    def _calls(self, job: Callable[..., Any], *args: Any, read: bool = False) -> Deferred[Any]:
        def run(conn: sqlite3.Connection) -> Any:
            return job(calls_sql.Db(conn, "sqlite"), *args)

        # Calls and jobs write no device record nor OTA status.
        return self._read(run) if read else self._submit(run, touches=None)

    def create_call(self, call: Any, per_device: int, per_account: int) -> Deferred[Any]:
        return self._calls(calls_sql.create, call, per_device, per_account)

    def get_call(self, call_id: str) -> Deferred[Any]:
        return self._calls(calls_sql.get, call_id)

    def list_calls(self, device_id: str, states: tuple[str, ...] | None, limit: int,
                   before: int | None) -> Deferred[Any]:
        return self._calls(calls_sql.list_for, device_id, states, limit, before, read=True)

    def claim_calls(self, device_id: str, claim: str, now: float, limit: int) -> Deferred[Any]:
        return self._calls(calls_sql.claim, device_id, claim, now, limit)

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
        return self._calls(calls_sql.queued_devices, limit, read=True)

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
        return self._calls(firmware_sql.list_for, account_id, read=True)

    def firmware_chunk(self, firmware_id: str, n: int) -> Deferred[Any]:
        return self._calls(firmware_sql.chunk, firmware_id, n, read=True)

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
        return self._calls(jobs_sql.counts, job_id, read=True)

    def list_jobs(self, account_id: str | None, limit: int, before: int | None
                  ) -> Deferred[Any]:
        return self._calls(jobs_sql.list_for, account_id, limit, before, read=True)

    def job_executions(self, job_id: str, states: tuple[str, ...] | None, limit: int,
                       after: int | None) -> Deferred[Any]:
        return self._calls(jobs_sql.executions, job_id, states, limit, after, read=True)

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
        return self._calls(jobs_sql.phase_counts, job_id, read=True)

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
        def run(conn: sqlite3.Connection) -> Any:
            return job(calls_sql.Db(conn, "sqlite"), *args)

        # The jobs of alarms_sql, jobs_sql and calls_sql (the queued calls'
        # claims and ends) write no device record nor OTA status.
        return self._read(run) if read else self._submit(run, touches=None)

    # Stored data, device events, OTA status (the jobs are in sqlite_records.py)

    def query_data(
        self, account_id: str, device_id: str | None, skip: int, limit: int, text: str | None
    ) -> Deferred[list[dict[str, Any]]]:
        return self._read(
            lambda conn: sqlite_records.query_points(conn, account_id, device_id, skip, limit, text)
        )

    # Dashboard sessions (the jobs are in sessions_sql.py)

    def create_session(self, id_hash: str, csrf_hash: str, key_id: str, now: float,
                       expires: float, prune: int = 1000) -> Deferred[bool]:
        return self._submit(lambda conn: sessions_sql.create(
            calls_sql.Db(conn, "sqlite"), id_hash, csrf_hash, key_id, now, expires, prune))

    def get_session(self, id_hash: str) -> Deferred[tuple[str, str, float] | None]:
        return self._read(lambda conn: sessions_sql.get(calls_sql.Db(conn, "sqlite"), id_hash))

    def delete_session(self, id_hash: str) -> Deferred[bool]:
        return self._submit(lambda conn: sessions_sql.delete(calls_sql.Db(conn, "sqlite"), id_hash))

    def delete_key_sessions(self, key_id: str) -> Deferred[int]:
        return self._submit(lambda conn: sessions_sql.delete_for_key(
            calls_sql.Db(conn, "sqlite"), key_id))

    def list_sessions(self, now: float, key_id: str | None = None, account_id: str | None = None,
                      limit: int = 1000) -> Deferred[list[dict[str, Any]]]:
        return self._read(lambda conn: sessions_sql.listed(
            calls_sql.Db(conn, "sqlite"), now, key_id, account_id, limit))

    def query_buckets(self, selection: list[tuple[str, list[str] | None]], start: float,
                      end: float, bucket: int) -> Deferred[list[dict[str, Any]]]:
        return self._read(lambda conn: ranges_sql.buckets(
            calls_sql.Db(conn, "sqlite"), selection, start, end, bucket))

    def query_range(self, selection: list[tuple[str, list[str] | None]], start: float,
                    end: float, limit: int) -> Deferred[tuple[list[dict[str, Any]], float | None]]:
        return self._read(lambda conn: ranges_sql.points(
            calls_sql.Db(conn, "sqlite"), selection, start, end, limit))

    def prune_data(self, before: float, batch: int = 10000) -> Deferred[int]:
        return self._submit(lambda conn: sqlite_records.prune_points(conn, before, batch))

    def append_event(
        self, device_id: str, account_id: str, name: str, data: Any, now: float, keep: int
    ) -> Deferred[int]:
        return self._submit(
            lambda conn: sqlite_records.append_event(conn, device_id, account_id, name, data, now, keep),
            touches=None)

    def query_events(
        self, account_id: str, device_id: str | None, start: int, limit: int
    ) -> Deferred[tuple[list[dict[str, Any]], int]]:
        return self._read(
            lambda conn: sqlite_records.query_events(conn, account_id, device_id, start, limit)
        )

    def append_points(self, device_id: str, account_id: str, points: list[tuple[str, Any]],
                      now: float) -> Deferred[int]:
        return self._submit(
            lambda conn: sqlite_records.append_points(conn, device_id, account_id, points, now))

    def data_pull(self, device_id: str) -> Deferred[dict[str, Any] | None]:
        return self._submit(lambda conn: sqlite_records.data_pull(conn, device_id))

    def set_data_pull(self, device_id: str, file: str | None, stored: int, now: float,
                      expected: str | None) -> Deferred[bool]:
        return self._submit(
            lambda conn: sqlite_records.set_data_pull(conn, device_id, file, stored, now, expected))

    def store_pulled(self, device_id: str, account_id: str, file: str, expected: int,
                     stored: int, points: list[tuple[str, Any]], now: float) -> Deferred[bool]:
        return self._submit(lambda conn: sqlite_records.store_pulled(
            conn, device_id, account_id, file, expected, stored, points, now))

    def set_ota_status(self, device_id: str, status: dict[str, Any], now: float) -> Deferred[bool]:
        return self._submit(lambda conn: sqlite_records.set_ota_status(conn, device_id, status, now))

    def get_ota_status(self, device_id: str) -> Deferred[dict[str, Any] | None]:
        return self._submit(lambda conn: sqlite_records.get_ota_status(conn, device_id),
                            touches=None)

    def ota_statuses(self, states: tuple[str, ...]) -> Deferred[list[dict[str, Any]]]:
        return self._submit(lambda conn: sqlite_records.ota_statuses(conn, states))
    def append_audit(self, entries: list[dict[str, Any]]) -> Deferred[int]:
        return self._submit(lambda conn: sqlite_records.append_audit(conn, entries), touches=None)

    def query_audit(
        self, account_id: str, start: int, limit: int
    ) -> Deferred[tuple[list[dict[str, Any]], int]]:
        return self._read(lambda conn: sqlite_records.query_audit(conn, account_id, start, limit))

    def prune_audit(self, before: float, batch: int = 10000) -> Deferred[int]:
        return self._submit(lambda conn: sqlite_records.prune_audit(conn, before, batch))

    # Operation

    def ping(self) -> Deferred[bool]:
        return self._submit(lambda conn: conn.execute("SELECT 1").fetchone() == (1,))


class _DeviceCache:
    """
    The devices whose shadow the writer thread wrote last, as their rows
    hold them (L{Device}s, shadow and info parsed), so that a device's next
    report neither reads its row and sharing list nor parses them again.
    The writer thread's only, like its connection.

    Kept right by the database itself rather than by every writer:
    temporary triggers on the writer's connection drop a device whenever
    any statement of that connection updates or deletes its row or changes
    its sharing (whatever job ran it, cascades from a deleted account
    included); the few jobs that keep a device put it back after their own
    write. A write by another connection (another process on the file)
    changes C{PRAGMA data_version}, which each batch checks first: then
    nothing kept is trusted. What a job kept is dropped again if the job
    fails (its savepoint rolled back), everything if the batch fails.

    Bounded: beyond C{size} devices the one written longest ago goes. The
    documents kept are shared with the L{Device}s handed to the reactor,
    which never changes them in place (nothing in dashd does).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._devices: dict[str, Device] = {}
        self._kept: list[str] = []  # by the running job
        self._data_version: int | None = None

    def attach(self, conn: sqlite3.Connection) -> None:
        """Watch the writer connection's writes to devices and their shares."""
        self.clear()
        conn.create_function("dashd_device_written", 1, self._drop, deterministic=False)
        for name, event, table, row in (
            ("dashd_cache_device_update", "UPDATE", "devices", "old.id"),
            ("dashd_cache_device_delete", "DELETE", "devices", "old.id"),
            ("dashd_cache_share_insert", "INSERT", "device_shares", "new.device_id"),
            ("dashd_cache_share_update", "UPDATE", "device_shares", "old.device_id"),
            ("dashd_cache_share_delete", "DELETE", "device_shares", "old.device_id"),
        ):
            conn.execute(
                "CREATE TEMP TRIGGER IF NOT EXISTS %s AFTER %s ON main.%s"
                " BEGIN SELECT dashd_device_written(%s); END" % (name, event, table, row))
        self._data_version = None

    def _drop(self, device_id: Any) -> None:
        self._devices.pop(device_id, None)

    def begin(self, conn: sqlite3.Connection) -> None:
        """A batch's transaction began (the write lock held): forget all if
        another connection committed since the last batch."""
        self._kept.clear()
        if not self._devices and self._data_version is not None:
            return
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        if version != self._data_version:
            self._devices.clear()
            self._data_version = version

    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def put(self, device: Device) -> None:
        """Keep C{device} as the running job wrote it."""
        devices = self._devices
        devices.pop(device.id, None)  # to the end: the most recently written
        if self.size <= 0:
            return
        if len(devices) >= self.size:
            del devices[next(iter(devices))]
        devices[device.id] = device
        self._kept.append(device.id)

    def job_done(self) -> None:
        self._kept.clear()

    def job_undone(self) -> None:
        for device_id in self._kept:
            self._devices.pop(device_id, None)
        self._kept.clear()

    def clear(self) -> None:
        self._devices.clear()
        self._kept.clear()
        self._data_version = None

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices


class InlineSQLiteStore(SQLiteStore):
    """
    The SQLite store with no threads, for unit tests (as Buildbot's
    C{NonThreadPool}): each job runs at once on the calling thread, in a
    transaction of its own with the same savepoint, the same errors and the
    same results as on the writer thread (reads on the same read-only
    connection as the reader thread's), and its Deferred has fired when the
    method returns. Tests drive time with a L{twisted.internet.task.Clock}
    and need no reactor to wait on the store. Never in dashd itself: it
    would run every job on the reactor thread.
    """

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, None, **kwargs)  # type: ignore[arg-type]
        self._conn: sqlite3.Connection | None = None
        self._reading: sqlite3.Connection | None = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def queue_depth(self) -> int:
        return 0

    def start(self) -> None:
        if self._conn is None and self._stopped is None:
            self._conn, self._reading = self._open()

    def stop(self) -> Deferred[None]:
        if self._stopped is None:
            self._stopped = Deferred()
            for conn in (self._reading, self._conn):
                if conn is not None:
                    conn.close()
            self._conn = self._reading = None
            self._stopped.callback(None)
        return self._stopped

    def _submit(self, job: Job, touches: Any = _ANY_DEVICE) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self._conn is None:
            d.errback(StoreError("the store is closed"))
            return d
        self._pending(touches)
        self._started.append(time.monotonic())
        self._written(self._write(self._conn, [(job, d)]))
        return d

    def _delivered(self, results: list[tuple[Deferred[Any], Any]]) -> None:
        # At once, not a slice at a time on a reactor: there is none here.
        _deliver(results)

    def _read(self, job: Job, point: bool = False) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self._reading is None:
            d.errback(StoreError("the store is closed"))
            return d
        _deliver([(d, _read_job(self._reading, job))])
        return d


def _read_job(conn: sqlite3.Connection, job: Job) -> Any:
    """A read-only job's result, or its failure."""
    try:
        return job(conn)
    except sqlite3.Error:
        log.failure("store read failed")
        return Failure(StoreError("the store failed"))
    except Exception as e:
        return Failure(e)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _deliver(results: list[tuple[Deferred[Any], Any]]) -> None:
    for d, result in results:
        deliver(d, result)


def _account(row: tuple[Any, ...]) -> Account:
    return Account(id=row[0], name=row[1], created=row[2], operator=bool(row[3]))


def _insert_account(conn: sqlite3.Connection, account: Account) -> None:
    conn.execute(
        "INSERT INTO accounts (id, name, created, operator) VALUES (?, ?, ?, ?)",
        (account.id, account.name, account.created, int(account.operator)),
    )


_KEY_COLUMNS = "id, account_id, name, kind, created, expires, scope"


def _key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(
        id=row[0],
        account_id=row[1],
        name=row[2],
        kind=row[3],
        created=row[4],
        expires=row[5],
        scope=json.loads(row[6]) if row[6] else None,
    )


def _insert_key(conn: sqlite3.Connection, key: ApiKey, secret_hash: str) -> None:
    conn.execute(
        "INSERT INTO api_keys (id, account_id, name, kind, secret_hash, created, expires, scope)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key.id,
            key.account_id,
            key.name,
            key.kind,
            secret_hash,
            key.created,
            key.expires,
            compact(key.scope) if key.scope is not None else None,
        ),
    )


_DEVICE_COLUMNS = "id, account_id, name, created, last_seen, info, shadow"
_Q_DEVICE_COLUMNS = ", ".join("d." + c for c in _DEVICE_COLUMNS.split(", "))


def _firmware(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in query.INDEXED_INFO if k in info}


def _get_device(conn: sqlite3.Connection, device_id: str) -> Device | None:
    row = conn.execute(
        "SELECT %s FROM devices WHERE id = ?" % _DEVICE_COLUMNS, (device_id,)
    ).fetchone()
    return _device(conn, row) if row else None


def _device(
    conn: sqlite3.Connection, row: tuple[Any, ...],
    shares: tuple[tuple[str, ...], dict[str, Any]] | None = None,
) -> Device:
    if shares is None:
        shares = _shares_of(conn, [row[0]]).get(row[0], _NO_SHARES)
    return Device(
        id=row[0],
        account_id=row[1],
        name=row[2],
        created=row[3],
        last_seen=row[4],
        info=json.loads(row[5]),
        shadow=json.loads(row[6]),
        shared_with=shares[0],
        share_scopes=dict(shares[1]),
    )


def _with_shadow(device: Device, document: dict[str, Any]) -> Device:
    """C{replace(device, shadow=document)} for every report the writer
    keeps: the frozen L{Device}'s fields copied at once rather than set one
    by one through C{object.__setattr__} by its C{__init__} (it has no
    C{__post_init__})."""
    new = object.__new__(Device)
    fields = new.__dict__
    fields.update(device.__dict__)
    fields["shadow"] = document
    return new


def _replace_shadow(device: Device, document: dict[str, Any]) -> Device:
    return replace(device, shadow=document)


_NO_SHARES: tuple[tuple[str, ...], dict[str, Any]] = ((), {})


def _shares_of(
    conn: sqlite3.Connection, device_ids: list[str]
) -> dict[str, tuple[tuple[str, ...], dict[str, Any]]]:
    """Device ID -> (the accounts it is shared with, the scopes of those
    shares that have one)."""
    if not device_ids:
        return {}
    accounts: dict[str, list[str]] = {}
    scopes: dict[str, dict[str, Any]] = {}
    # Chunk to stay below SQLite's limit on bound parameters.
    for i in range(0, len(device_ids), 500):
        chunk = device_ids[i : i + 500]
        rows = conn.execute(
            "SELECT device_id, account_id, scope FROM device_shares WHERE device_id IN (%s)"
            " ORDER BY rowid" % ",".join("?" * len(chunk)),
            chunk,
        ).fetchall()
        for device_id, account_id, scope in rows:
            accounts.setdefault(device_id, []).append(account_id)
            if scope is not None:
                scopes.setdefault(device_id, {})[account_id] = json.loads(scope)
    return {k: (tuple(v), scopes.get(k, {})) for k, v in accounts.items()}


def _set_shares(conn: sqlite3.Connection, device_id: str, accounts: tuple[str, ...],
                scopes: dict[str, Any]) -> None:
    conn.execute("DELETE FROM device_shares WHERE device_id = ?", (device_id,))
    conn.executemany(
        "INSERT OR IGNORE INTO device_shares (device_id, account_id, scope) VALUES (?, ?, ?)",
        [(device_id, a, compact(scopes[a]) if a in scopes else None) for a in accounts],
    )
