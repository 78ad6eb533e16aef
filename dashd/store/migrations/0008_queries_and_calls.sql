-- dashd schema version 8: what device queries read (dashd/domain/query.py)
-- and queued calls (dashd/app/calls.py).

-- The index of device queries: every path of each device's shadow tags
-- and the firmware keys of its info, one row a path, with its JSON type and
-- its value as text (a string; "true"/"false" for a boolean), as a number,
-- and as a version key (a string that starts like a version, its numbers
-- zero-padded so that text order is version order). The stores rewrite a
-- device's rows of a section whenever that section changes (tags are
-- changed by people, firmware rarely), in the same transaction.
CREATE TABLE device_facts (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    section   TEXT NOT NULL,              -- 'info' or 'tags'
    path      TEXT NOT NULL,              -- dashd.domain.query.path_key
    type      TEXT NOT NULL,              -- string, number, boolean, null, object, array
    text      TEXT,
    num       REAL,
    version   TEXT,
    PRIMARY KEY (device_id, section, path)
) WITHOUT ROWID;
-- Pages of the device list in its orders.
CREATE INDEX devices_created ON devices(created, id);
CREATE INDEX devices_name ON devices(name, id);

-- python step: the rows of the devices there are (dashd.store's
-- _index_devices); the indexes after them, built in one sort.
CREATE INDEX device_facts_text ON device_facts(section, path, text);
CREATE INDEX device_facts_num ON device_facts(section, path, num);
CREATE INDEX device_facts_version ON device_facts(section, path, version);

-- Queued calls: a call made durable, delivered when its device is online.
-- state: queued, sent, succeeded, failed, timed_out, lost, expired,
-- cancelled; times holds when it reached each (JSON object), attempts each
-- sending ([{"sent", "ended", "state", "error"?}]). claim names the node
-- (and connection) that sent the attempt under way: only it finishes it,
-- and a call whose node died is lost. seq orders a device's calls.
CREATE TABLE calls (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,             -- the caller's account (its limits)
    key_id     TEXT NOT NULL,
    method     TEXT NOT NULL,
    params     TEXT,                      -- JSON; NULL: none
    state      TEXT NOT NULL,
    created    REAL NOT NULL,
    expires    REAL NOT NULL,
    timeout    REAL NOT NULL,
    retries    INTEGER NOT NULL,
    attempts   TEXT NOT NULL DEFAULT '[]',
    times      TEXT NOT NULL,
    outcome    TEXT,                      -- JSON: {"result": ...} or {"error": {...}}
    claim      TEXT,
    sent       REAL,
    finished   REAL
);
CREATE INDEX calls_device ON calls(device_id, state, seq);
CREATE INDEX calls_device_seq ON calls(device_id, seq);
CREATE INDEX calls_account ON calls(account_id, state);
CREATE INDEX calls_state ON calls(state, expires);
CREATE INDEX calls_finished ON calls(finished);
