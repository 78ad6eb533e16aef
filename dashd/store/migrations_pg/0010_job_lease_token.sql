-- dashd schema version 10 (PostgreSQL): fencing of the jobs' leases; what
-- migrations/0012_job_lease_token.sql does on SQLite (dashd/store/jobs_sql.py).
--
-- lease_token: the lease's epoch, one more each time the lease changes
-- hands (a node takes a job another held, or one it let lapse). A firmware
-- execution is started only in a transaction that finds the token the
-- starting node holds, and its update's ID is recorded there, before
-- anything is sent: a node that lost the job cannot start an execution
-- another node then starts again.

ALTER TABLE jobs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
