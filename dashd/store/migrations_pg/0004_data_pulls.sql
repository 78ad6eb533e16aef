-- dashd on PostgreSQL, schema version 4: what SQLite version 6 holds
-- (migrations/0006_data_pulls.sql): the pulls of mDash-library devices'
-- stored data.

CREATE TABLE data_pulls (
    device_id TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    file      TEXT,
    stored    BIGINT NOT NULL,
    updated   DOUBLE PRECISION NOT NULL
);
