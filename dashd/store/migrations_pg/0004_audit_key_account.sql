-- dashd on PostgreSQL, schema version 4: what SQLite version 6 holds. An
-- audit entry may be kept in the log of the account that owns the device
-- it is about, for a call made with a key of an account the device is
-- shared with; key_account is then that account (NULL: the key is of the
-- log's own account).

ALTER TABLE audit ADD COLUMN key_account TEXT;
