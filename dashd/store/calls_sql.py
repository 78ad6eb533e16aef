"""
The store jobs of queued calls (L{dashd.domain.calls}), one implementation
for SQLite and PostgreSQL: each job is a function of a L{Db}, which hides
the two drivers' differences (parameter marks, JSON columns, row locks).
Schema: ``migrations/0008_queries_and_calls.sql`` and
``migrations_pg/0006_queries_and_calls.sql``.

Every change of state is a compare-and-set in one transaction: a call is
taken from ``queued`` to ``sent`` by one job only (on PostgreSQL the rows
are locked, so that two nodes never both take it), and an attempt is ended
only by the node that sent it (its C{claim}) and only once. That is what
makes a call go out exactly once whichever node it was made on.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from dashd.domain import calls as c
from dashd.domain.calls import Call
from dashd.domain.errors import Busy
from dashd.jsontext import compact
from dashd.store import NotFound

# Seconds a client told "too many queued calls" is asked to wait.
FULL_RETRY_AFTER = 30.0

_COLUMNS = ("seq, id, device_id, account_id, key_id, method, params, state, created, expires,"
            " timeout, retries, attempts, times, outcome, claim, sent, finished")
_ACTIVE = "('queued', 'sent')"


class Db:
    """A cursor (PostgreSQL) or connection (SQLite) with what the jobs need."""

    def __init__(self, handle: Any, dialect: str) -> None:
        self.handle = handle
        self.pg = dialect == "postgresql"

    def execute(self, sql: str, params: Any = ()) -> Any:
        if self.pg:
            sql = sql.replace("?", "%s")
            self.handle.execute(sql.encode("utf-8"), params)
            return self.handle
        return self.handle.execute(sql, params)

    def all(self, sql: str, params: Any = ()) -> list[Any]:
        return list(self.execute(sql, params).fetchall())

    def one(self, sql: str, params: Any = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def json(self, value: Any) -> Any:
        if self.pg:
            from dashd.store.postgres_records import json_param

            return json_param(value)
        return compact(value)

    def load(self, value: Any) -> Any:
        if self.pg or value is None:
            return value
        return json.loads(value)

    @property
    def lock(self) -> str:
        """Lock the rows read, until the transaction ends (PostgreSQL; on
        SQLite one writer runs at a time anyway)."""
        return " FOR UPDATE" if self.pg else ""


def _call(db: Db, row: Any) -> Call:
    outcome = db.load(row[14]) or {}
    params = db.load(row[6]) if row[6] is not None else None
    return Call(
        seq=row[0], id=row[1], device_id=row[2], account_id=row[3], key_id=row[4],
        method=row[5], params=params, state=row[7], created=row[8], expires=row[9],
        timeout=row[10], retries=row[11], attempts=tuple(db.load(row[12]) or ()),
        times=db.load(row[13]) or {}, result=outcome.get("result"), error=outcome.get("error"),
        claim=row[15], sent=row[16], finished=row[17])


def _write(db: Db, call: Call) -> None:
    outcome = None
    if call.state == c.SUCCEEDED:
        outcome = {"result": call.result}
    elif call.error is not None:
        outcome = {"error": call.error}
    # By its row's key (seq), not its id: no lookup in the id's index.
    db.execute(
        "UPDATE calls SET state = ?, attempts = ?, times = ?, outcome = ?, claim = ?, sent = ?,"
        " finished = ? WHERE seq = ?",
        (call.state, db.json(list(call.attempts)), db.json(call.times),
         db.json(outcome) if outcome is not None else None, call.claim, call.sent,
         call.finished, call.seq))


def _write_sent(db: Db, call: Call) -> None:
    """A queued call taken to send: only what that changes (its outcome and
    end stay unset, so the index of ends is not touched)."""
    db.execute(
        "UPDATE calls SET state = ?, attempts = ?, times = ?, claim = ?, sent = ? WHERE seq = ?",
        (call.state, db.json(list(call.attempts)), db.json(call.times), call.claim, call.sent,
         call.seq))


def _ended(db: Db, call: Call, now: float) -> None:
    """If the call has ended, the fleet job's execution that follows it, if
    any, ends in the same transaction (L{dashd.store.jobs_sql.call_ended}),
    not at the job's next step."""
    if call.final:
        from dashd.store import jobs_sql  # it imports this module

        jobs_sql.call_ended(db, call, now)


def _get(db: Db, call_id: str, lock: bool = False) -> Call | None:
    row = db.one("SELECT %s FROM calls WHERE id = ?%s" % (_COLUMNS, db.lock if lock else ""),
                 (call_id,))
    return _call(db, row) if row else None


def create(db: Db, call: Call, per_device: int, per_account: int) -> Call:
    if db.pg:
        # Two nodes queueing for one account at once must not both pass
        # its limit.
        db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", ("calls " + call.account_id,))
    if db.one("SELECT 1 FROM devices WHERE id = ?%s" % db.lock, (call.device_id,)) is None:
        raise NotFound(call.device_id)
    (queued,) = db.one("SELECT count(*) FROM calls WHERE device_id = ? AND state IN %s"
                       % _ACTIVE, (call.device_id,))
    if queued >= per_device:
        raise Busy("device %s has %d calls queued or under way, the most it may have "
                   "(calls.max_queued_per_device); try again when some have ended"
                   % (call.device_id, queued), retry_after=FULL_RETRY_AFTER)
    (queued,) = db.one("SELECT count(*) FROM calls WHERE account_id = ? AND state IN %s"
                       % _ACTIVE, (call.account_id,))
    if queued >= per_account:
        raise Busy("this account has %d calls queued or under way, the most it may have "
                   "(calls.max_queued_per_account); try again when some have ended"
                   % queued, retry_after=FULL_RETRY_AFTER)
    db.execute(
        "INSERT INTO calls (id, device_id, account_id, key_id, method, params, state, created,"
        " expires, timeout, retries, attempts, times) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
        " ?, ?)",
        (call.id, call.device_id, call.account_id, call.key_id, call.method,
         db.json(call.params) if call.params is not None else None, call.state, call.created,
         call.expires, call.timeout, call.retries, db.json(list(call.attempts)),
         db.json(call.times)))
    stored = _get(db, call.id)
    assert stored is not None
    return stored


def get(db: Db, call_id: str) -> Call | None:
    return _get(db, call_id)


def list_for(db: Db, device_id: str, states: tuple[str, ...] | None, limit: int,
             before: int | None) -> list[Call]:
    sql = "SELECT %s FROM calls WHERE device_id = ?" % _COLUMNS
    params: list[Any] = [device_id]
    if states:
        sql += " AND state IN (%s)" % ", ".join("?" * len(states))
        params.extend(states)
    if before is not None:
        sql += " AND seq < ?"
        params.append(before)
    sql += " ORDER BY seq DESC LIMIT ?"
    params.append(limit)
    return [_call(db, r) for r in db.all(sql, params)]


def claim(db: Db, device_id: str, claim_id: str, now: float,
          limit: int) -> tuple[list[Call], list[Call]]:
    """Take the device's oldest queued calls to send (up to C{limit});
    those past their deadline expire instead. Fire with both lists."""
    taken: list[Call] = []
    expired: list[Call] = []
    while len(taken) < limit:
        wanted = limit - len(taken)
        rows = db.all("SELECT %s FROM calls WHERE device_id = ? AND state = 'queued'"
                      " ORDER BY seq LIMIT ?%s" % (_COLUMNS, db.lock), (device_id, wanted))
        if not rows:
            break
        for row in rows:
            call = _call(db, row)
            if call.expires <= now:
                call = c.finished(call, c.EXPIRED, now)
                expired.append(call)
                _write(db, call)
                _ended(db, call, now)
                continue
            call = c.sent(call, claim_id, now)
            taken.append(call)
            _write_sent(db, call)
        if len(rows) < wanted:
            break  # none left queued: no need to ask again
    return taken, expired


def end(db: Db, call_id: str, attempt: int, claim_id: str, state: str, now: float,
        result: Any, error: dict[str, Any] | None) -> Call | None:
    """End the attempt under way (number C{attempt}, sent by C{claim_id});
    None if it is not that one any more."""
    call = _get(db, call_id, lock=True)
    if call is None or call.state != c.SENT or call.claim != claim_id \
            or len(call.attempts) != attempt:
        return None
    call = c.ended(call, state, now, result, error)
    _write(db, call)
    _ended(db, call, now)
    return call


def unsend(db: Db, call_id: str, claim_id: str) -> Call | None:
    """Put a call taken to send back in the queue: its frame never went out
    (the connection was closing, or full)."""
    call = _get(db, call_id, lock=True)
    if call is None or call.state != c.SENT or call.claim != claim_id:
        return None
    attempts = call.attempts[:-1]
    times = dict(call.times)
    if attempts:
        times[c.SENT] = attempts[-1]["sent"]
    else:
        times.pop(c.SENT, None)
    call = replace(call, state=c.QUEUED, attempts=attempts, times=times, claim=None, sent=None)
    _write(db, call)
    return call


def cancel(db: Db, call_id: str, now: float) -> Call | None:
    """Cancel the call if it is queued; fire with it as it is then (the
    caller tells whether it was cancelled by its state)."""
    call = _get(db, call_id, lock=True)
    if call is None or call.state != c.QUEUED:
        return call
    call = c.finished(call, c.CANCELLED, now)
    _write(db, call)
    return call


def expire(db: Db, now: float, limit: int) -> list[Call]:
    rows = db.all("SELECT %s FROM calls WHERE state = 'queued' AND expires <= ? ORDER BY seq"
                  " LIMIT ?%s" % (_COLUMNS, db.lock), (now, limit))
    out = []
    for row in rows:
        call = c.finished(_call(db, row), c.EXPIRED, now)
        _write(db, call)
        _ended(db, call, now)
        out.append(call)
    return out


def sent_before(db: Db, before: float, limit: int) -> list[Call]:
    rows = db.all("SELECT %s FROM calls WHERE state = 'sent' AND sent < ? ORDER BY seq LIMIT ?"
                  % _COLUMNS, (before, limit))
    return [_call(db, r) for r in rows]


def queued_devices(db: Db, limit: int) -> list[str]:
    rows = db.all("SELECT DISTINCT device_id FROM calls WHERE state = 'queued' LIMIT ?",
                  (limit,))
    return [r[0] for r in rows]


def prune(db: Db, before: float, batch: int) -> int:
    cur = db.execute("DELETE FROM calls WHERE seq IN (SELECT seq FROM calls WHERE finished < ?"
                     " LIMIT ?)", (before, batch))
    return int(cur.rowcount)


class Refused:
    """What L{each} gives for a job of its batch that raised (the others
    went on)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def each(db: Db, job: Any, items: list[tuple[Any, ...]]) -> list[Any]:
    """Run C{job(db, *args)} for each of C{items} in one transaction (a
    batch of claims or ends gathered in a reactor turn: one trip to the
    store), each in a savepoint: one that raises is undone alone and gives
    a L{Refused}. Fire with the results, in order."""
    out: list[Any] = []
    for args in items:
        db.execute("SAVEPOINT one")
        try:
            result = job(db, *args)
        except Exception as e:
            db.execute("ROLLBACK TO SAVEPOINT one")
            db.execute("RELEASE SAVEPOINT one")
            out.append(Refused(e))
            continue
        db.execute("RELEASE SAVEPOINT one")
        out.append(result)
    return out
