-- dashd schema version 1: accounts, API keys, devices and their sharing.
-- Secrets are never stored: api_keys.secret_hash and devices.token_hash hold
-- the SHA-256 (hex) of the secret shown once at creation.

CREATE TABLE accounts (
    id      TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    created REAL NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name        TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created     REAL NOT NULL,
    expires     REAL
);
CREATE INDEX api_keys_account ON api_keys(account_id);

CREATE TABLE devices (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created    REAL NOT NULL,
    last_seen  REAL,
    info       TEXT NOT NULL DEFAULT '{}',   -- JSON: what the device says of itself
    shadow     TEXT NOT NULL                 -- JSON: see dashd/shadow.py
);
CREATE INDEX devices_account ON devices(account_id);

CREATE TABLE device_shares (
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    PRIMARY KEY (device_id, account_id)
);
CREATE INDEX device_shares_account ON device_shares(account_id);
