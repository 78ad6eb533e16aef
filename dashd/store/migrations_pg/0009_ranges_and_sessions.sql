-- dashd schema version 9 (PostgreSQL): time-range queries of stored data, dashboard sessions,
-- audit details; what migrations/0011_ranges_and_sessions.sql does on SQLite.

CREATE TABLE data_minutes (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    minute    BIGINT NOT NULL,
    n_all     BIGINT NOT NULL,
    n_num     BIGINT NOT NULL,
    total     DOUBLE PRECISION NOT NULL,
    lo        DOUBLE PRECISION,
    hi        DOUBLE PRECISION,
    PRIMARY KEY (device_id, key, minute)
);
CREATE INDEX data_minutes_minute ON data_minutes(minute);
CREATE INDEX data_points_device_t ON data_points(device_id, t);

INSERT INTO data_minutes (device_id, key, minute, n_all, n_num, total, lo, hi)
SELECT device_id, key, floor(t / 60)::bigint * 60, count(*),
       count(CASE WHEN json_typeof(value) = 'number' THEN 1 END),
       coalesce(sum(CASE WHEN json_typeof(value) = 'number' THEN (value::text)::float8 END), 0),
       min(CASE WHEN json_typeof(value) = 'number' THEN (value::text)::float8 END),
       max(CASE WHEN json_typeof(value) = 'number' THEN (value::text)::float8 END)
FROM data_points GROUP BY device_id, key, floor(t / 60)::bigint;

-- Sessions of the dashboard, as migrations/0011_ranges_and_sessions.sql.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    csrf_hash  TEXT NOT NULL,
    key_id     TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    created    DOUBLE PRECISION NOT NULL,
    expires    DOUBLE PRECISION NOT NULL
);
CREATE INDEX sessions_key ON sessions(key_id);
CREATE INDEX sessions_expires ON sessions(expires);

-- What an audit entry says besides its method and path (as on SQLite).
ALTER TABLE audit ADD COLUMN detail JSON;
