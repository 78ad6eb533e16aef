-- dashd schema version 11: time-range queries of stored data, dashboard sessions, audit details
-- (GET .../data?from=&to=&bucket=, see dashd/store/ranges_sql.py).
--
-- data_minutes: for each device, key and UTC minute, how many points were
-- stored and, of those whose value is a number, how many, their sum, the
-- lowest and the highest. Kept in the transaction that stores the points,
-- so a week of 3-second data is read as 10,080 rows a key, not 201,600.
-- data_points_device_t: the raw points of a device by time (the parts of
-- a range that are not whole minutes, buckets under a minute, raw points).

CREATE TABLE data_minutes (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    minute    INTEGER NOT NULL,   -- its start, seconds since the epoch, a multiple of 60
    n_all     INTEGER NOT NULL,   -- points stored
    n_num     INTEGER NOT NULL,   -- of which numbers
    total     REAL NOT NULL,      -- their sum
    lo        REAL,               -- the lowest (NULL: no number)
    hi        REAL,               -- the highest
    PRIMARY KEY (device_id, key, minute)
) WITHOUT ROWID;
CREATE INDEX data_minutes_minute ON data_minutes(minute);
CREATE INDEX data_points_device_t ON data_points(device_id, t);

INSERT INTO data_minutes (device_id, key, minute, n_all, n_num, total, lo, hi)
SELECT device_id, key, CAST(t / 60 AS INTEGER) * 60, count(*),
       count(CASE WHEN json_type(value) IN ('integer', 'real') THEN 1 END),
       total(CASE WHEN json_type(value) IN ('integer', 'real') THEN CAST(value AS REAL) END),
       min(CASE WHEN json_type(value) IN ('integer', 'real') THEN CAST(value AS REAL) END),
       max(CASE WHEN json_type(value) IN ('integer', 'real') THEN CAST(value AS REAL) END)
FROM data_points GROUP BY device_id, key, CAST(t / 60 AS INTEGER);

-- Sessions of the dashboard (POST /api/v2/session, see dashd/app/sessions.py):
-- a cookie minted from an API key, so that a signed-in browser stays signed
-- in across its tabs. Only hashes of the cookie and of its CSRF token are
-- kept; revoking (deleting) the key ends its sessions.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    csrf_hash  TEXT NOT NULL,
    key_id     TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    created    REAL NOT NULL,
    expires    REAL NOT NULL
);
CREATE INDEX sessions_key ON sessions(key_id);
CREATE INDEX sessions_expires ON sessions(expires);

-- What an audit entry says besides its method and path (dashd/api/auditdetail.py:
-- names and the dotted paths a change touched, as JSON), so the audit log can
-- say it in words.
ALTER TABLE audit ADD COLUMN detail TEXT;
