-- dashd schema version 2: key kinds with scopes, and the operator account.
-- api_keys.kind is now one of 'admin', 'read-only', 'restricted';
-- api_keys.scope is JSON (NULL unless the key is restricted):
--   {"devices": {"DEVICE_ID": {"read": [...], "write": [...], "rpc": [...]}}}
-- accounts.operator marks the first account, whose admins manage accounts.

ALTER TABLE api_keys ADD COLUMN scope TEXT;
ALTER TABLE accounts ADD COLUMN operator INTEGER NOT NULL DEFAULT 0;
UPDATE accounts SET operator = 1
 WHERE rowid = (SELECT min(rowid) FROM accounts);
