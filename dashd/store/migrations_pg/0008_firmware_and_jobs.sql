-- dashd on PostgreSQL: what SQLite schema version 10 holds
-- (migrations/0010_firmware_and_jobs.sql): the firmware library and fleet jobs.

-- A firmware image uploaded once, kept in the store (so that every node of
-- a cluster can send it) in chunks of at most 64 KiB: the row is written
-- first with complete = 0, its chunks after it, then it is marked complete;
-- only complete images are listed and used (an upload cut off half-way is
-- deleted by the next start).
CREATE TABLE firmware (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    name       TEXT NOT NULL,             -- the file's name
    kind       TEXT NOT NULL,             -- zip or bin
    size       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    manifest   JSON,                      -- JSON (a zip's manifest.json); NULL: none
    created    DOUBLE PRECISION NOT NULL,
    complete   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX firmware_account ON firmware(account_id, created);
CREATE TABLE firmware_chunks (
    firmware_id TEXT NOT NULL REFERENCES firmware(id) ON DELETE CASCADE,
    n           INTEGER NOT NULL,
    data        BYTEA NOT NULL,
    PRIMARY KEY (firmware_id, n)
);

-- A fleet job: one action on many devices. spec holds what it was created
-- with (target, action, rate, timeouts, rules); state: scheduled, running,
-- paused, completed, cancelled, aborted (reason: why, JSON). lease names
-- the node that drives it, until lease_until: another may take it after.
CREATE TABLE jobs (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    account_id  TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,            -- rpc, shadow or firmware
    firmware_id TEXT,                     -- the image a firmware job sends
    spec        JSON NOT NULL,
    state       TEXT NOT NULL,
    reason      JSON,
    created     DOUBLE PRECISION NOT NULL,
    started     DOUBLE PRECISION,
    finished    DOUBLE PRECISION,
    updated     DOUBLE PRECISION NOT NULL,
    stage       JSON,                     -- a staged rollout: its phase (JSON)
    lease       TEXT,
    lease_until DOUBLE PRECISION
);
CREATE INDEX jobs_account ON jobs(account_id, seq);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_firmware ON jobs(firmware_id);

-- One device's part in a job: state queued (not dispatched, or its call not
-- sent yet), in_progress, succeeded, failed, timed_out, cancelled, skipped
-- (reason says why); call_id: the queued call (dashd/app/calls.py) of its
-- attempt under way, whose durable state it follows.
CREATE TABLE job_executions (
    job_id    TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    phase     INTEGER NOT NULL DEFAULT 0,
    state     TEXT NOT NULL,
    reason    TEXT,
    attempts  INTEGER NOT NULL DEFAULT 0,
    call_id   TEXT,
    times     JSON NOT NULL,
    outcome   JSON,                       -- JSON: {"result": ...} or {"error": {...}}
    dispatched INTEGER NOT NULL DEFAULT 0, -- a call is out (queued or sent) for it
    updated   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, device_id)
);
CREATE INDEX job_executions_state ON job_executions(job_id, state, seq);
CREATE INDEX job_executions_seq ON job_executions(job_id, seq);
CREATE INDEX job_executions_out ON job_executions(job_id, dispatched);
