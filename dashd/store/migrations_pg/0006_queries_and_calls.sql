-- dashd on PostgreSQL, schema version 6: what SQLite version 8 holds
-- (migrations/0008_queries_and_calls.sql): the index of device queries and
-- queued calls. Strings of the index compare bytewise (COLLATE "C"), as on
-- SQLite, so that both stores order and match them alike.

CREATE TABLE device_facts (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    section   TEXT NOT NULL,
    path      TEXT NOT NULL,
    type      TEXT NOT NULL,
    text      TEXT COLLATE "C",
    num       DOUBLE PRECISION,
    version   TEXT COLLATE "C",
    PRIMARY KEY (device_id, section, path)
);
CREATE INDEX devices_created ON devices(created, id COLLATE "C");
CREATE INDEX devices_name ON devices(name COLLATE "C", id COLLATE "C");

-- python step: the rows of the devices there are (dashd.store's
-- _index_devices); the indexes after them, built in one sort.
-- Covering (device_id, type): a count of a common value is read from the
-- index alone (as on SQLite, whose indexes of a WITHOUT ROWID table hold
-- the primary key).
CREATE INDEX device_facts_text ON device_facts(section, path, text) INCLUDE (device_id, type);
CREATE INDEX device_facts_num ON device_facts(section, path, num) INCLUDE (device_id, type);
CREATE INDEX device_facts_version ON device_facts(section, path, version)
    INCLUDE (device_id, type);

CREATE TABLE calls (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    method     TEXT NOT NULL,
    params     JSON,
    state      TEXT NOT NULL,
    created    DOUBLE PRECISION NOT NULL,
    expires    DOUBLE PRECISION NOT NULL,
    timeout    DOUBLE PRECISION NOT NULL,
    retries    INTEGER NOT NULL,
    attempts   JSON NOT NULL DEFAULT '[]',
    times      JSON NOT NULL,
    outcome    JSON,
    claim      TEXT,
    sent       DOUBLE PRECISION,
    finished   DOUBLE PRECISION
);
CREATE INDEX calls_device ON calls(device_id, state, seq);
CREATE INDEX calls_device_seq ON calls(device_id, seq);
CREATE INDEX calls_account ON calls(account_id, state);
CREATE INDEX calls_state ON calls(state, expires);
CREATE INDEX calls_finished ON calls(finished);
