-- legion schema, version 17 (PostgreSQL): a succeeded attempt is recorded on its task's row.
--
-- Every applied completion inserted a row into `attempts` (0013_attempts.sql), a task that
-- succeeded at once included: one more row and index entry per task on the hot path,
-- repeating what the task's row already held. A succeeded task is final (it is never
-- queued again), so its task row now keeps that attempt's worker and its seconds running
-- and waiting for capacity, written by the completion's UPDATE (which writes the row
-- anyway); `attempts` keeps the attempts that did not succeed, and `attempts_of` reads
-- both. Tasks that succeeded before this version keep their `attempts` row.
ALTER TABLE tasks ADD COLUMN succeeded_on text;              -- the worker of that attempt
ALTER TABLE tasks ADD COLUMN running      double precision;  -- its seconds running
ALTER TABLE tasks ADD COLUMN waited       double precision;  -- its seconds waiting for capacity
