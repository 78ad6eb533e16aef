-- dashd schema version 5: a share may carry a scope chosen by the device's
-- owner (JSON {"rpc"?: [...], "write"?: [...]}, see dashd/domain/access.py);
-- NULL is the default scope.

ALTER TABLE device_shares ADD COLUMN scope TEXT;
