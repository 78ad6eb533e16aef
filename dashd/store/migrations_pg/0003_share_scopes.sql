-- dashd on PostgreSQL, schema version 3: what SQLite version 5 holds. A
-- share may carry a scope chosen by the device's owner ({"rpc"?: [...],
-- "write"?: [...]}, see dashd/domain/access.py); NULL is the default scope.

ALTER TABLE device_shares ADD COLUMN scope JSON;
