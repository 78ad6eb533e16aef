-- dashd on PostgreSQL, schema version 2: what SQLite versions 3 and 4 hold.
-- Stored data (tags.save time series), the history of device logs and
-- notifications (POST /logs), the status of the last firmware update of
-- each device, and the audit log. The columns mean what they mean in
-- migrations/0003_data_logs_ota.sql and 0004_audit.sql.
--
-- Ids of device_events and audit are offsets clients page with: an identity
-- never reuses a value, and appends take an advisory lock until they commit
-- (see dashd/store/series_pg.py), so ids become visible in increasing order
-- even with several nodes writing.

CREATE TABLE data_points (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    t          DOUBLE PRECISION NOT NULL,
    key        TEXT NOT NULL,
    value      JSON NOT NULL
);
CREATE INDEX data_points_device ON data_points(device_id, id);
CREATE INDEX data_points_account ON data_points(account_id, id);

CREATE TABLE device_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    t          DOUBLE PRECISION NOT NULL,
    name       TEXT NOT NULL,
    data       JSON NOT NULL
);
CREATE INDEX device_events_device ON device_events(device_id, id);
CREATE INDEX device_events_account ON device_events(account_id, id);

CREATE TABLE ota_status (
    device_id TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    state     TEXT NOT NULL,
    status    JSON NOT NULL,
    updated   DOUBLE PRECISION NOT NULL
);
CREATE INDEX ota_status_state ON ota_status(state);

CREATE TABLE audit (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    t          DOUBLE PRECISION NOT NULL,
    account_id TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    method     TEXT NOT NULL,
    path       TEXT NOT NULL,
    device_id  TEXT,
    status     INTEGER NOT NULL,
    error      TEXT
);
CREATE INDEX audit_account ON audit(account_id, id);
CREATE INDEX audit_t ON audit(t);
