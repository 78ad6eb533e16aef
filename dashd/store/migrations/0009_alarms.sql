-- dashd schema version 9: alarm rules, alarms (dashd/app/alarms.py) and
-- webhooks (dashd/app/webhooks.py).

-- A rule: which devices (query: a device query, NULL for all the account
-- sees), its condition (JSON, dashd/domain/alarms.py), severity, whether it
-- is evaluated, and the webhooks its alarms go to (JSON list of IDs).
CREATE TABLE alarm_rules (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    query      TEXT,
    condition  TEXT NOT NULL,
    severity   TEXT NOT NULL,
    enabled    INTEGER NOT NULL,
    webhooks   TEXT NOT NULL DEFAULT '[]',
    created    REAL NOT NULL,
    updated    REAL NOT NULL
);
CREATE INDEX alarm_rules_account ON alarm_rules(account_id);

-- Alarms: one (rule, device)'s, state 'active' or 'cleared'; at most one
-- active at a time (the unique index below is what makes a raise happen
-- once, whichever node raises it). Cleared ones are the history.
CREATE TABLE alarms (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    rule_id         TEXT NOT NULL,
    device_id       TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    account_id      TEXT NOT NULL,
    severity        TEXT NOT NULL,
    state           TEXT NOT NULL,
    raised          REAL NOT NULL,
    message         TEXT NOT NULL,
    details         TEXT NOT NULL DEFAULT '{}',
    cleared         REAL,
    cleared_by      TEXT,
    acknowledged    REAL,
    acknowledged_by TEXT,
    note            TEXT
);
CREATE UNIQUE INDEX alarms_active ON alarms(rule_id, device_id) WHERE state = 'active';
CREATE INDEX alarms_account ON alarms(account_id, seq);
CREATE INDEX alarms_device ON alarms(device_id, seq);
CREATE INDEX alarms_state ON alarms(state, severity);

-- Webhook endpoints: where events of the chosen kinds (JSON list) are
-- posted, signed with the secret.
CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,
    secret     TEXT NOT NULL,
    enabled    INTEGER NOT NULL,
    created    REAL NOT NULL,
    updated    REAL NOT NULL
);
CREATE INDEX webhooks_account ON webhooks(account_id);
