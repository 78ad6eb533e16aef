-- dashd schema version 3: stored data (tags.save time series), the history
-- of device logs and notifications (POST /logs), and the status of the last
-- firmware update of each device.

-- One point a reported value of a key listed in the shadow's tags.save.
-- Queries page in arrival order (id); account_id is the device's owner, so
-- that "all the data an account may see" is one index range.
CREATE TABLE data_points (
    id         INTEGER PRIMARY KEY,
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    t          REAL NOT NULL,     -- server time of the report
    key        TEXT NOT NULL,     -- dotted path within state.reported
    value      TEXT NOT NULL      -- JSON
);
CREATE INDEX data_points_device ON data_points(device_id, id);
CREATE INDEX data_points_account ON data_points(account_id, id);

-- Device logs (rpc.out.Log), the device's own notifications, online/offline
-- and OTA outcomes, as published. AUTOINCREMENT: an id is never reused, so
-- it is a stable offset for paging even while old rows are dropped.
CREATE TABLE device_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    t          REAL NOT NULL,
    name       TEXT NOT NULL,
    data       TEXT NOT NULL      -- JSON
);
CREATE INDEX device_events_device ON device_events(device_id, id);
CREATE INDEX device_events_account ON device_events(account_id, id);

-- The last firmware update of each device (see dashd/ota.py for the
-- document); state is repeated out of it to find unfinished ones on start.
CREATE TABLE ota_status (
    device_id TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    state     TEXT NOT NULL,
    status    TEXT NOT NULL,      -- JSON
    updated   REAL NOT NULL
);
