-- dashd on PostgreSQL, schema version 1: what SQLite versions 1 and 2 hold
-- (accounts, API keys with kinds and scopes, devices and their sharing).
-- Secrets are never stored: api_keys.secret_hash and devices.token_hash hold
-- the SHA-256 (hex) of the secret shown once at creation. JSON columns use
-- the json type (kept as written, key order included), not jsonb.
-- seq columns keep insertion order where SQLite orders by rowid.

CREATE TABLE accounts (
    id       TEXT PRIMARY KEY,
    seq      BIGINT GENERATED ALWAYS AS IDENTITY,
    name     TEXT NOT NULL,
    created  DOUBLE PRECISION NOT NULL,
    -- the first account: its admins manage accounts
    operator BOOLEAN NOT NULL DEFAULT false
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name        TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL,                -- admin, read-only, restricted
    secret_hash TEXT NOT NULL UNIQUE,
    created     DOUBLE PRECISION NOT NULL,
    expires     DOUBLE PRECISION,
    scope       JSON                          -- restricted keys only
);
CREATE INDEX api_keys_account ON api_keys(account_id);

CREATE TABLE devices (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created    DOUBLE PRECISION NOT NULL,
    last_seen  DOUBLE PRECISION,
    info       JSON NOT NULL DEFAULT '{}',    -- what the device says of itself
    shadow     JSON NOT NULL                  -- see dashd/shadow.py
);
CREATE INDEX devices_account ON devices(account_id, created, id);

CREATE TABLE device_shares (
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    seq        BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (device_id, account_id)
);
CREATE INDEX device_shares_account ON device_shares(account_id);
