-- dashd schema version 4: the audit log, one row for every change and every
-- device call made through the REST API (see dashd/audit.py). The path is
-- kept without its query string, which may hold a secret.

CREATE TABLE audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    t          REAL NOT NULL,
    account_id TEXT NOT NULL,     -- the calling key's account
    key_id     TEXT NOT NULL,
    method     TEXT NOT NULL,
    path       TEXT NOT NULL,
    device_id  TEXT,              -- the device the call was about, if any
    status     INTEGER NOT NULL,  -- the HTTP status answered
    error      TEXT               -- the error message answered, if any
);
CREATE INDEX audit_account ON audit(account_id, id);
CREATE INDEX audit_t ON audit(t);
