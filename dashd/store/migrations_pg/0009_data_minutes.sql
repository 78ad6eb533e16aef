-- dashd schema version 9 (PostgreSQL): time-range queries of stored data;
-- what migrations/0011_data_minutes.sql does on SQLite.

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
