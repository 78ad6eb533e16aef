"""
The store jobs of fleet jobs (L{dashd.domain.jobs}, run by
L{dashd.app.jobs}), one implementation for SQLite and PostgreSQL through
L{dashd.store.calls_sql.Db}. Schema: ``migrations/0010_firmware_and_jobs.sql``
and ``migrations_pg/0008_firmware_and_jobs.sql``.

An RPC execution is built on a queued call (L{dashd.store.calls_sql}): the
call is created and linked to its execution (``call_id``, ``dispatched``)
in one transaction (L{dispatch}), and the execution follows the call's
durable state: ended in the transaction that ends the call
(L{call_ended}, from L{dashd.store.calls_sql}; found by its ``call_id``,
indexed since ``migrations/0013``), and brought up to the call's state at
the job's steps (L{sync}: a call sent, or one whose end did not end it).
So whatever stops, and wherever the job is driven from, a device gets each
attempt once: the call goes out once (the queued calls' guarantee) and a
new attempt is made only after the last one ended.
"""

from __future__ import annotations

from typing import Any

from dashd.domain import calls as c
from dashd.domain import jobs as j
from dashd.domain import tokens
from dashd.domain.calls import Call
from dashd.domain.errors import Conflict
from dashd.store import calls_sql
from dashd.store.calls_sql import Db

_JOB = ("id, account_id, key_id, name, kind, firmware_id, spec, state, reason, created, "
        "started, finished, updated, lease, lease_until, seq, stage")
_EXEC = "device_id, seq, state, reason, attempts, call_id, times, outcome, dispatched, updated"
_LIVE = "('scheduled', 'running', 'paused')"
_NO_LIMIT = 1 << 30


def _job(db: Db, row: Any) -> dict[str, Any]:
    return {"id": row[0], "account_id": row[1], "key_id": row[2], "name": row[3],
            "kind": row[4], "firmware_id": row[5], "spec": db.load(row[6]), "state": row[7],
            "reason": db.load(row[8]) if row[8] is not None else None, "created": row[9],
            "started": row[10], "finished": row[11], "updated": row[12], "lease": row[13],
            "lease_until": row[14], "seq": row[15],
            "stage": db.load(row[16]) if row[16] is not None else None}


def _execution(db: Db, row: Any) -> dict[str, Any]:
    out = {"device_id": row[0], "seq": row[1], "state": row[2], "attempts": row[4],
           "call_id": row[5], "times": db.load(row[6]) or {}, "updated": row[9],
           "dispatched": bool(row[8])}
    if row[3] is not None:
        out["reason"] = row[3]
    outcome = db.load(row[7]) if row[7] is not None else None
    if outcome:
        out.update(outcome)
    return out


def _get(db: Db, job_id: str, lock: bool = False) -> dict[str, Any] | None:
    row = db.one("SELECT %s FROM jobs WHERE id = ?%s" % (_JOB, db.lock if lock else ""),
                 (job_id,))
    return _job(db, row) if row else None


def create(db: Db, job: dict[str, Any], executions: list[tuple[Any, ...]]) -> dict:
    """Store the job and its first executions (device ID, state, reason[,
    phase])."""
    db.execute("INSERT INTO jobs (id, account_id, key_id, name, kind, firmware_id, spec, state,"
               " reason, created, started, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (job["id"], job["account_id"], job["key_id"], job["name"], job["kind"],
                job.get("firmware_id"), db.json(job["spec"]), job["state"], None,
                job["created"], job.get("started"), job["created"]))
    add(db, job["id"], executions, job["created"])
    stored = _get(db, job["id"])
    assert stored is not None
    return stored


def add(db: Db, job_id: str, executions: list[tuple[Any, ...]], now: float) -> int:
    """Add executions for devices the job does not have yet; fire with how
    many were added."""
    (top,) = db.one("SELECT coalesce(max(seq), 0) FROM job_executions WHERE job_id = ?",
                    (job_id,))
    # A few (devices that joined a continuous target): each looked up by
    # the key; many: the job's devices read once.
    few = len(executions) <= 1000
    have = {r[0] for r in db.all("SELECT device_id FROM job_executions WHERE job_id = ?",
                                 (job_id,))} if top and not few else set()
    added = 0
    for execution in executions:
        device_id, state, reason = execution[:3]
        phase = execution[3] if len(execution) > 3 else 0
        if device_id in have or (top and few and db.one(
                "SELECT 1 FROM job_executions WHERE job_id = ? AND device_id = ?",
                (job_id, device_id)) is not None):
            continue
        have.add(device_id)
        top += 1
        added += 1
        times = {state: now}
        db.execute("INSERT INTO job_executions (job_id, device_id, seq, phase, state, reason,"
                   " times, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (job_id, device_id, top, phase, state, reason, db.json(times), now))
    return added


def get(db: Db, job_id: str) -> dict[str, Any] | None:
    return _get(db, job_id)


def counts(db: Db, job_id: str) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in db.all(
        "SELECT state, count(*) FROM job_executions WHERE job_id = ? GROUP BY state",
        (job_id,))}


def list_for(db: Db, account_id: str | None, limit: int, before: int | None) -> list[dict]:
    sql = "SELECT %s FROM jobs WHERE 1 = 1" % _JOB
    params: list[Any] = []
    if account_id is not None:
        sql += " AND account_id = ?"
        params.append(account_id)
    if before is not None:
        sql += " AND seq < ?"
        params.append(before)
    sql += " ORDER BY seq DESC LIMIT ?"
    params.append(limit)
    return [_job(db, r) for r in db.all(sql, params)]


def executions(db: Db, job_id: str, states: tuple[str, ...] | None, limit: int,
               after: int | None) -> list[dict[str, Any]]:
    sql = "SELECT %s FROM job_executions WHERE job_id = ?" % _EXEC
    params: list[Any] = [job_id]
    if states:
        sql += " AND state IN (%s)" % ", ".join("?" * len(states))
        params.extend(states)
    if after is not None:
        sql += " AND seq > ?"
        params.append(after)
    sql += " ORDER BY seq LIMIT ?"
    params.append(limit)
    return [_execution(db, r) for r in db.all(sql, params)]


def set_state(db: Db, job_id: str, from_states: tuple[str, ...], state: str, now: float,
              reason: Any = None) -> dict[str, Any] | None:
    """Move the job from one of C{from_states} to C{state}; fire with it
    as it is then (the caller compares)."""
    job = _get(db, job_id, lock=True)
    if job is None or job["state"] not in from_states:
        if job is not None:
            job["changed"] = False
        return job
    finished = now if state in j.ENDED else None
    started = job["started"] if job["started"] is not None else (
        now if state == j.RUNNING else None)
    db.execute("UPDATE jobs SET state = ?, reason = ?, updated = ?, finished = ?, started = ?"
               " WHERE id = ?", (state, db.json(reason) if reason is not None else None, now,
                                 finished, started, job_id))
    after = _get(db, job_id)
    assert after is not None
    after["changed"] = True
    return after


def lease(db: Db, job_id: str, node: str, now: float, until: float) -> bool:
    """Take or renew the lease of the job for C{node}: fire with whether it
    holds it now."""
    cur = db.execute("UPDATE jobs SET lease = ?, lease_until = ? WHERE id = ? AND (lease = ?"
                     " OR lease IS NULL OR lease_until < ?)", (node, until, job_id, node, now))
    return int(cur.rowcount) > 0


def release(db: Db, job_id: str, node: str) -> None:
    db.execute("UPDATE jobs SET lease = NULL, lease_until = NULL WHERE id = ? AND lease = ?",
               (job_id, node))


def active(db: Db, limit: int) -> list[str]:
    """The jobs someone must drive: not ended, or with attempts still out."""
    rows = db.all("SELECT id FROM jobs WHERE state IN %s OR EXISTS (SELECT 1 FROM"
                  " job_executions e WHERE e.job_id = jobs.id AND e.dispatched = 1)"
                  " ORDER BY seq LIMIT ?" % _LIVE, (limit,))
    return [r[0] for r in rows]


def _write_exec(db: Db, job_id: str, e: dict[str, Any], now: float) -> None:
    outcome = {k: e[k] for k in ("result", "error") if k in e} or None
    db.execute("UPDATE job_executions SET state = ?, reason = ?, attempts = ?, call_id = ?,"
               " times = ?, outcome = ?, dispatched = ?, updated = ? WHERE job_id = ? AND"
               " device_id = ?",
               (e["state"], e.get("reason"), e["attempts"], e.get("call_id"),
                db.json(e["times"]), db.json(outcome) if outcome is not None else None,
                1 if e.get("dispatched") else 0, now, job_id, e["device_id"]))


def in_flight(db: Db, job_id: str) -> int:
    """Executions sent or being applied (taking room of the concurrency)."""
    (n,) = db.one("SELECT count(*) FROM job_executions WHERE job_id = ? AND (dispatched = 1"
                  " OR state = 'in_progress')", (job_id,))
    return int(n)


def dispatch(db: Db, job: dict[str, Any], limit: int, now: float, per_device: int,
             per_account: int, phase: int | None = None) -> list[Call]:
    """Queue a call for each of the next C{limit} queued executions of an
    RPC job (in one transaction with the executions' link to it); fire
    with the calls (as L{Call}s) made."""
    spec = job["spec"]
    action = spec["action"]
    rows = db.all("SELECT %s FROM job_executions WHERE job_id = ? AND state = 'queued' AND"
                  " dispatched = 0 AND phase <= ? ORDER BY seq LIMIT ?%s" % (_EXEC, db.lock),
                  (job["id"], _NO_LIMIT if phase is None else phase, limit))
    made: list[Call] = []
    if not rows:
        return made
    # The account's limit is checked once for the batch (as queueing that
    # many calls one by one would), each device's for its call.
    if db.pg:
        db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", ("calls " + job["account_id"],))
    (active,) = db.one("SELECT count(*) FROM calls WHERE account_id = ? AND state IN"
                       " ('queued', 'sent')", (job["account_id"],))
    params = db.json(action.get("params")) if action.get("params") is not None else None
    executions = [_execution(db, row) for row in rows]
    # The batch's devices read in two statements, not two a device (locked
    # in ID order on PostgreSQL, as other writers lock them).
    ids = sorted({e["device_id"] for e in executions})
    marks = ", ".join("?" * len(ids))
    present = {r[0] for r in db.all("SELECT id FROM devices WHERE id IN (%s) ORDER BY id%s"
                                    % (marks, db.lock), ids)}
    busy = {r[0]: int(r[1]) for r in db.all(
        "SELECT device_id, count(*) FROM calls WHERE device_id IN (%s) AND state IN"
        " ('queued', 'sent') GROUP BY device_id" % marks, ids)}
    for e in executions:
        e.pop("result", None)
        e.pop("error", None)
        device_id = e["device_id"]
        why = None
        if device_id not in present:
            e.update(state=j.SKIPPED, reason="not found: the device was deleted")
            e["times"][j.SKIPPED] = now
            _write_exec(db, job["id"], e, now)
            continue
        queued = busy.get(device_id, 0)
        if queued >= per_device:
            why = ("device %s has %d calls queued or under way, the most it may have "
                   "(calls.max_queued_per_device)" % (device_id, queued))
        elif active >= per_account:
            why = ("this account has %d calls queued or under way, the most it may have "
                   "(calls.max_queued_per_account)" % active)
        if why is not None:
            e.update(state=j.FAILED, error={"code": 429, "message": why})
            e["times"][j.FAILED] = now
            _write_exec(db, job["id"], e, now)
            continue
        busy[device_id] = queued + 1
        call = Call(id=tokens.new_id("c"), device_id=device_id,
                    account_id=job["account_id"], key_id=job["key_id"],
                    method=action["method"], params=action.get("params"), state=c.QUEUED,
                    created=now, expires=now + spec["timeouts"]["queued"],
                    timeout=spec["timeouts"]["running"], retries=0, times={c.QUEUED: now})
        db.execute(
            "INSERT INTO calls (id, device_id, account_id, key_id, method, params, state,"
            " created, expires, timeout, retries, attempts, times) VALUES (?, ?, ?, ?, ?, ?, ?,"
            " ?, ?, ?, ?, ?, ?)",
            (call.id, device_id, call.account_id, call.key_id, call.method, params, call.state,
             now, call.expires, call.timeout, 0, db.json([]), db.json(call.times)))
        active += 1
        e.update(call_id=call.id, dispatched=True, attempts=e["attempts"] + 1)
        e["times"]["dispatched"] = now
        _write_exec(db, job["id"], e, now)
        made.append(call)
    return made


def queued(db: Db, job_id: str, limit: int, phase: int | None = None) -> list[str]:
    """The devices of the next C{limit} queued executions not sent."""
    rows = db.all("SELECT device_id FROM job_executions WHERE job_id = ? AND state = 'queued'"
                  " AND dispatched = 0 AND phase <= ? ORDER BY seq LIMIT ?",
                  (job_id, _NO_LIMIT if phase is None else phase, limit))
    return [r[0] for r in rows]


def take(db: Db, job_id: str, limit: int, now: float, phase: int | None = None,
         devices: list[str] | None = None) -> list[str]:
    """Mark the next C{limit} queued executions of a job applied here (a
    shadow change, a firmware update) in progress (only those of
    C{devices} if given); fire with their devices."""
    if devices is not None:
        rows = []
        for device_id in devices[:limit]:
            row = db.one("SELECT %s FROM job_executions WHERE job_id = ? AND device_id = ? AND"
                         " state = 'queued' AND dispatched = 0%s" % (_EXEC, db.lock),
                         (job_id, device_id))
            if row is not None:
                rows.append(row)
    else:
        rows = db.all("SELECT %s FROM job_executions WHERE job_id = ? AND state = 'queued' AND"
                      " dispatched = 0 AND phase <= ? ORDER BY seq LIMIT ?%s"
                      % (_EXEC, db.lock), (job_id, _NO_LIMIT if phase is None else phase,
                                           limit))
    out = []
    for row in rows:
        e = _execution(db, row)
        e.update(state=j.IN_PROGRESS, attempts=e["attempts"] + 1)
        e["times"][j.IN_PROGRESS] = now
        _write_exec(db, job_id, e, now)
        out.append(e["device_id"])
    return out


def requeue_in_progress(db: Db, job_id: str, now: float) -> int:
    """Put the executions in progress that are not calls back in the queue
    (a shadow change whose node stopped before it recorded the end: applying
    it again gives the same shadow)."""
    rows = db.all("SELECT %s FROM job_executions WHERE job_id = ? AND state = 'in_progress'"
                  " AND dispatched = 0%s" % (_EXEC, db.lock), (job_id,))
    for row in rows:
        e = _execution(db, row)
        e.update(state=j.QUEUED, attempts=max(0, e["attempts"] - 1))
        _write_exec(db, job_id, e, now)
    return len(rows)


def finish(db: Db, job_id: str, device_id: str, state: str, now: float, result: Any = None,
           error: dict[str, Any] | None = None, retries: int = 0) -> dict[str, Any] | None:
    """End an execution in progress here (a shadow change)."""
    row = db.one("SELECT %s FROM job_executions WHERE job_id = ? AND device_id = ?%s"
                 % (_EXEC, db.lock), (job_id, device_id))
    if row is None:
        return None
    e = _execution(db, row)
    if e["state"] != j.IN_PROGRESS:
        return e
    _end(e, state, now, result, error, retries)
    _write_exec(db, job_id, e, now)
    return e


def _end(e: dict[str, Any], state: str, now: float, result: Any, error: Any,
         retries: int) -> None:
    e.pop("result", None)
    e.pop("error", None)
    e["dispatched"] = False
    if state in (j.FAILED, j.TIMED_OUT) and e["attempts"] <= retries:
        e["state"] = j.QUEUED
        e["times"][j.QUEUED] = now
        if error is not None:
            e["error"] = error
        return
    e["state"] = state
    e["times"][state] = now
    if state == j.SUCCEEDED:
        e["result"] = result
    elif error is not None:
        e["error"] = error


# A call's end as its execution's.
_CALL_END = {c.SUCCEEDED: j.SUCCEEDED, c.FAILED: j.FAILED, c.TIMED_OUT: j.TIMED_OUT,
             c.LOST: j.FAILED, c.EXPIRED: j.TIMED_OUT, c.CANCELLED: j.CANCELLED}


def _end_by_call(e: dict[str, Any], call_state: str, sent: float | None, outcome: Any,
                 retries: int, now: float) -> None:
    """End the execution C{e} (dispatched, its call ended in C{call_state})
    as its call's end says: one rule for L{sync} and L{call_ended}."""
    if e["state"] == j.QUEUED and sent is not None:
        # Sent and ended since the last look.
        e["times"][j.IN_PROGRESS] = sent
    outcome = outcome or {}
    error = outcome.get("error")
    if call_state == c.EXPIRED:
        error = {"code": 504, "message": "the device was not online to take it within "
                                         "the queued timeout"}
    elif call_state == c.LOST and error is not None:
        error = dict(error, message="lost: " + error.get("message", ""))
    _end(e, _CALL_END[call_state], now, outcome.get("result"), error,
         0 if call_state == c.CANCELLED else retries)


def call_ended(db: Db, call: Call, now: float) -> bool:
    """The call C{call} has just ended (in this transaction): if an RPC
    job's execution follows it, end the execution too (or queue it again
    for a retry), as L{sync} would at the job's next step. Fire with
    whether there was one. An execution cancelled meanwhile (with force:
    ``dispatched`` cleared) is left alone, as L{sync} leaves it."""
    if call.state not in _CALL_END:
        return False
    row = db.one("SELECT job_id, %s FROM job_executions WHERE call_id = ? AND dispatched = 1%s"
                 % (_EXEC, " FOR UPDATE SKIP LOCKED" if db.pg else ""), (call.id,))
    if row is None:
        # Not a job's call; or (PostgreSQL) its execution is locked by
        # another transaction (a cancel, the job's sync): the job's next
        # sync ends it (this transaction waits for no execution's lock
        # while it holds the call's, so it cannot deadlock with them).
        return False
    e = _execution(db, row[1:])
    e.pop("result", None)
    e.pop("error", None)
    outcome: dict[str, Any] = {}
    retries = 0
    if call.state == c.SUCCEEDED:
        outcome["result"] = call.result
    else:
        if call.error is not None:
            outcome["error"] = call.error
        if _CALL_END[call.state] in (j.FAILED, j.TIMED_OUT):
            # May be retried: the job's spec says how often.
            (spec,) = db.one("SELECT spec FROM jobs WHERE id = ?", (row[0],))
            retries = int((db.load(spec) or {}).get("retries") or 0)
    _end_by_call(e, call.state, call.sent, outcome, retries, now)
    # Only what an end changes (not call_id, whose index would be rewritten).
    kept = {k: e[k] for k in ("result", "error") if k in e} or None
    db.execute("UPDATE job_executions SET state = ?, times = ?, outcome = ?, dispatched = 0,"
               " updated = ? WHERE job_id = ? AND device_id = ?",
               (e["state"], db.json(e["times"]), db.json(kept) if kept is not None else None,
                now, row[0], e["device_id"]))
    return True


def sync(db: Db, job_id: str, retries: int, now: float) -> int:
    """Bring the job's dispatched executions up to their calls' states;
    fire with how many changed."""
    rows = db.all("SELECT e.device_id, e.seq, e.state, e.reason, e.attempts, e.call_id,"
                  " e.times, e.outcome, e.dispatched, e.updated, k.state, k.sent, k.outcome,"
                  " k.id FROM job_executions e LEFT JOIN calls k ON k.id = e.call_id"
                  " WHERE e.job_id = ? AND e.dispatched = 1 AND (k.id IS NULL OR k.state NOT"
                  " IN ('queued', 'sent') OR (k.state = 'sent' AND e.state = 'queued'))%s"
                  # Locked (PostgreSQL): a call's end (call_ended) may end
                  # one of them meanwhile; it skips those locked here.
                  % (" FOR UPDATE OF e" if db.pg else ""), (job_id,))
    changed = 0
    for row in rows:
        e = _execution(db, row[:10])
        e.pop("result", None)
        e.pop("error", None)
        call_state, sent, outcome = row[10], row[11], db.load(row[12]) if row[12] else None
        if row[13] is None:
            _end(e, j.FAILED, now, None, {"code": 410, "message": "the call is gone: its "
                                          "device was deleted"}, 0)
        elif call_state == c.SENT:
            if e["state"] != j.QUEUED:
                continue
            e["state"] = j.IN_PROGRESS
            e["times"][j.IN_PROGRESS] = sent or now
        elif call_state in _CALL_END:
            _end_by_call(e, call_state, sent, outcome, retries, now)
        else:
            continue
        _write_exec(db, job_id, e, now)
        changed += 1
    return changed


def cancel(db: Db, job_id: str, now: float, state: str = j.CANCELLED,
           reason: Any = None) -> tuple[dict[str, Any] | None, list[Call]]:
    """End the job (cancelled, or aborted with C{reason}): its executions
    not sent are cancelled (their queued calls too); those sent go on and
    are recorded as they end. Fire with the job and the calls cancelled."""
    job = set_state(db, job_id, j.LIVE, state, now, reason)
    if job is None or not job["changed"]:
        return job, []
    cancelled = []
    rows = db.all("SELECT %s FROM job_executions WHERE job_id = ? AND state = 'queued'%s"
                  % (_EXEC, db.lock), (job_id,))
    for row in rows:
        e = _execution(db, row)
        if e.get("call_id") and e.get("dispatched"):
            call = calls_sql.cancel(db, e["call_id"], now)
            if call is None or call.state != c.CANCELLED:
                continue  # sent meanwhile: it goes on
            cancelled.append(call)
        e.pop("result", None)
        e.pop("error", None)
        e.update(state=j.CANCELLED, dispatched=False)
        e["times"][j.CANCELLED] = now
        _write_exec(db, job_id, e, now)
    return job, cancelled


def force_cancel(db: Db, job_id: str, now: float, reason: Any = None
                 ) -> tuple[dict[str, Any] | None, list[Call], list[dict[str, Any]]]:
    """Cancel with force: end the job if it is live (cancelled, with
    C{reason}), cancel what was not sent, and mark ``cancelled`` every
    execution in progress too (or sent, its end not seen yet): from then
    on nothing the device reports for it is recorded (its call, its
    firmware update's status). Allowed on a job that has ended with
    executions still in progress. Fire with the job (``changed``: it
    ended now), the queued calls cancelled and the executions cancelled in
    progress (as they were: ``call_id`` says what was under way)."""
    job, cancelled = cancel(db, job_id, now, j.CANCELLED, reason)
    if job is None:
        return None, [], []
    rows = db.all("SELECT %s FROM job_executions WHERE job_id = ? AND (state = 'in_progress'"
                  " OR dispatched = 1)%s" % (_EXEC, db.lock), (job_id,))
    stopped = []
    for row in rows:
        e = _execution(db, row)
        before = dict(e)
        if e.get("call_id") and e.get("dispatched") and job["kind"] == "rpc":
            call = calls_sql.cancel(db, e["call_id"], now)
            if call is not None and call.state == c.CANCELLED:
                cancelled.append(call)  # not sent after all
        e.pop("result", None)
        e.pop("error", None)
        e.update(state=j.CANCELLED, dispatched=False,
                 reason="cancelled in progress (force): what the device reports for it "
                        "is not recorded")
        e["times"][j.CANCELLED] = now
        _write_exec(db, job_id, e, now)
        stopped.append(before)
    return job, cancelled, stopped


def retry_failed(db: Db, job_id: str, now: float) -> tuple[dict[str, Any] | None, int]:
    """Queue the failed and timed-out executions again (the job runs again
    if it had ended); fire with the job and how many."""
    job = _get(db, job_id, lock=True)
    if job is None:
        return None, 0
    if job["state"] == j.CANCELLED:
        raise Conflict("job %s was cancelled: create a new job to try again" % job_id)
    rows = db.all("SELECT %s FROM job_executions WHERE job_id = ? AND state IN ('failed',"
                  " 'timed_out')" % _EXEC, (job_id,))
    for row in rows:
        e = _execution(db, row)
        e.update(state=j.QUEUED, dispatched=False)
        e["times"][j.QUEUED] = now
        _write_exec(db, job_id, e, now)
    if rows and job["state"] in j.ENDED:
        db.execute("UPDATE jobs SET state = 'running', reason = NULL, finished = NULL,"
                   " updated = ? WHERE id = ?", (now, job_id))
    return _get(db, job_id), len(rows)


def delete(db: Db, job_id: str) -> bool:
    job = _get(db, job_id, lock=True)
    if job is None:
        return False
    if job["state"] not in j.ENDED:
        raise Conflict("job %s is %s: cancel it first (only a job that has ended may be "
                       "deleted)" % (job_id, job["state"]))
    (out,) = db.one("SELECT count(*) FROM job_executions WHERE job_id = ? AND dispatched = 1",
                    (job_id,))
    if out:
        raise Conflict("job %s has %d executions in progress: it may be deleted once they "
                       "have ended" % (job_id, out))
    db.execute("DELETE FROM job_executions WHERE job_id = ?", (job_id,))
    db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
    return True


def set_ref(db: Db, job_id: str, device_id: str, ref: str) -> None:
    """Record what an execution in progress here started (a firmware
    update's ID): from then on it is followed, never started again."""
    db.execute("UPDATE job_executions SET call_id = ?, dispatched = 1 WHERE job_id = ? AND"
               " device_id = ? AND state = 'in_progress'", (ref, job_id, device_id))


def in_progress(db: Db, job_id: str) -> list[dict[str, Any]]:
    rows = db.all("SELECT %s FROM job_executions WHERE job_id = ? AND state = 'in_progress'"
                  % _EXEC, (job_id,))
    return [_execution(db, r) for r in rows]


def finish_ref(db: Db, job_id: str, device_id: str, ref: str | None, state: str, now: float,
               result: Any = None, error: dict[str, Any] | None = None,
               retries: int = 0) -> dict[str, Any] | None:
    """End an execution in progress that follows C{ref}."""
    row = db.one("SELECT %s FROM job_executions WHERE job_id = ? AND device_id = ?%s"
                 % (_EXEC, db.lock), (job_id, device_id))
    if row is None:
        return None
    e = _execution(db, row)
    if e["state"] != j.IN_PROGRESS or e.get("call_id") != ref:
        return e
    _end(e, state, now, result, error, retries)
    _write_exec(db, job_id, e, now)
    return e


def phase_counts(db: Db, job_id: str) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for phase, state, n in db.all("SELECT phase, state, count(*) FROM job_executions WHERE"
                                  " job_id = ? GROUP BY phase, state", (job_id,)):
        out.setdefault(int(phase), {})[state] = int(n)
    return out


def set_stage(db: Db, job_id: str, stage: dict[str, Any], now: float) -> None:
    db.execute("UPDATE jobs SET stage = ?, updated = ? WHERE id = ?",
               (db.json(stage), now, job_id))


def expire_queued(db: Db, job_id: str, phase: int | None, before: float,
                  now: float) -> int:
    """Time out the queued executions not sent whose device was not online
    to take them since C{before} (a firmware job)."""
    rows = db.all("SELECT %s FROM job_executions WHERE job_id = ? AND state = 'queued' AND"
                  " dispatched = 0 AND phase <= ? AND updated < ?%s" % (_EXEC, db.lock),
                  (job_id, _NO_LIMIT if phase is None else phase, before))
    for row in rows:
        e = _execution(db, row)
        _end(e, j.TIMED_OUT, now, None, {
            "code": 504, "message": "the device was not online to take it within the "
                                    "queued timeout"}, 0)
        _write_exec(db, job_id, e, now)
    return len(rows)


def prune(db: Db, before: float, batch: int) -> int:
    """Delete up to C{batch} executions of the jobs that ended before
    C{before} (none of whose calls is still out), and those jobs once
    they have none left; fire with how many rows (executions and jobs)."""
    rows = db.all("SELECT id FROM jobs WHERE state IN ('completed', 'cancelled', 'aborted')"
                  " AND finished < ? AND NOT EXISTS (SELECT 1 FROM job_executions e WHERE"
                  " e.job_id = jobs.id AND e.dispatched = 1) ORDER BY finished LIMIT 100",
                  (before,))
    deleted = 0
    for (job_id,) in rows:
        if deleted >= batch:
            break
        cur = db.execute("DELETE FROM job_executions WHERE job_id = ? AND seq IN (SELECT seq"
                         " FROM job_executions WHERE job_id = ? ORDER BY seq LIMIT ?)",
                         (job_id, job_id, batch - deleted))
        deleted += int(cur.rowcount)
        if deleted < batch:
            deleted += int(db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount)
    return deleted


def lease_fenced(db: Db, job_id: str, node: str, now: float, until: float) -> int | None:
    """Take or renew the job's lease for C{node} (as L{lease}); fire with
    the lease's token (its epoch: one more whenever the lease changes hands
    or had lapsed), or None if another node holds it."""
    cur = db.execute("UPDATE jobs SET lease_token = CASE WHEN lease = ? AND lease_until >= ?"
                     " THEN lease_token ELSE lease_token + 1 END, lease = ?, lease_until = ?"
                     " WHERE id = ? AND (lease = ? OR lease IS NULL OR lease_until < ?)",
                     (node, now, node, until, job_id, node, now))
    if int(cur.rowcount) == 0:
        return None
    (token,) = db.one("SELECT lease_token FROM jobs WHERE id = ?", (job_id,))
    return int(token)


def _holds(db: Db, job_id: str, node: str, token: int, now: float) -> bool:
    row = db.one("SELECT lease, lease_token, lease_until FROM jobs WHERE id = ?%s" % db.lock,
                 (job_id,))
    return row is not None and row[0] == node and int(row[1]) == token \
        and row[2] is not None and row[2] >= now


def start_fenced(db: Db, job_id: str, node: str, token: int, now: float,
                 devices: list[str]) -> list[tuple[str, str]]:
    """Mark the queued executions of C{devices} in progress and record on
    each the ID of the firmware update about to start (``dispatched``:
    followed from then on, never started again), only if C{node} still
    holds the job's lease with C{token}. Fire with (device ID, update ID)
    for each (none if the lease was lost)."""
    if not devices or not _holds(db, job_id, node, token, now):
        return []
    out = []
    for device_id in devices:
        row = db.one("SELECT %s FROM job_executions WHERE job_id = ? AND device_id = ? AND"
                     " state = 'queued' AND dispatched = 0%s" % (_EXEC, db.lock),
                     (job_id, device_id))
        if row is None:
            continue
        e = _execution(db, row)
        e.pop("result", None)
        e.pop("error", None)
        ref = tokens.new_id("o")
        e.update(state=j.IN_PROGRESS, attempts=e["attempts"] + 1, call_id=ref, dispatched=True)
        e["times"][j.IN_PROGRESS] = now
        e["times"]["dispatched"] = now
        _write_exec(db, job_id, e, now)
        out.append((device_id, ref))
    return out


def requeue_unstarted(db: Db, job_id: str, device_id: str, ref: str, now: float) -> bool:
    """Put back in the queue an execution whose firmware update C{ref} was
    never started (its node lost the lease or died before it did): the
    attempt is undone. Fire with whether it was."""
    row = db.one("SELECT %s FROM job_executions WHERE job_id = ? AND device_id = ?%s"
                 % (_EXEC, db.lock), (job_id, device_id))
    if row is None:
        return False
    e = _execution(db, row)
    if e["state"] != j.IN_PROGRESS or e.get("call_id") != ref or not e.get("dispatched"):
        return False
    e.pop("result", None)
    e.pop("error", None)
    e.update(state=j.QUEUED, attempts=max(0, e["attempts"] - 1), call_id=None,
             dispatched=False)
    e["times"].pop(j.IN_PROGRESS, None)
    e["times"].pop("dispatched", None)
    _write_exec(db, job_id, e, now)
    return True


class JobStore:
    """The jobs above added since the store's own job methods, on a store
    with C{alarms_job} (which runs any C{job(db, *args)} in a transaction)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def _run(self, job: Any, *args: Any, read: bool = False) -> Any:
        return self._store.alarms_job(job, *args, read=read)

    def force_cancel_job(self, job_id: str, now: float, reason: Any = None) -> Any:
        return self._run(force_cancel, job_id, now, reason)

    def prune_jobs(self, before: float, batch: int = 10000) -> Any:
        return self._run(prune, before, batch)

    def lease_job(self, job_id: str, node: str, now: float, until: float) -> Any:
        return self._run(lease_fenced, job_id, node, now, until)

    def start_job_executions(self, job_id: str, node: str, token: int, now: float,
                             devices: list[str]) -> Any:
        return self._run(start_fenced, job_id, node, token, now, devices)

    def requeue_unstarted(self, job_id: str, device_id: str, ref: str, now: float) -> Any:
        return self._run(requeue_unstarted, job_id, device_id, ref, now)
