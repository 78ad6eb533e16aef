-- dashd on PostgreSQL, schema version 5: what SQLite version 7 holds
-- (migrations/0007_data_pulls.sql): the pulls of mDash-library devices'
-- stored data.

CREATE TABLE data_pulls (
    device_id TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    file      TEXT,
    stored    BIGINT NOT NULL,
    updated   DOUBLE PRECISION NOT NULL
);
