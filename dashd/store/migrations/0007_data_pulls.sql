-- dashd schema version 7: pulling what mDash-library devices stored on their
-- own file system (mDashStore, see dashd/app/datapull.py). A row marks a
-- device that stores data this way (so its files are pulled when it comes
-- online) and, while a pull is under way, which file of the device is
-- being read and how many of its bytes are stored as data points already:
-- that count moves in the same transaction as the points it stands for,
-- so no line is stored twice or lost, whatever stops half-way.

CREATE TABLE data_pulls (
    device_id TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    file      TEXT,                -- the file set aside on the device; NULL: none
    stored    INTEGER NOT NULL,    -- bytes of it stored as points
    updated   REAL NOT NULL
);
