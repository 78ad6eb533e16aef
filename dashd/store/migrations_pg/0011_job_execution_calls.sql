-- dashd schema version 11 (PostgreSQL): a job's execution found by its
-- call; what migrations/0013_job_execution_calls.sql does on SQLite
-- (dashd/store/jobs_sql.py, call_ended): a queued call made by an RPC job
-- ends its execution in the same transaction as the call's own end, which
-- looks the execution up by the call's ID.

CREATE INDEX job_executions_call ON job_executions(call_id);
