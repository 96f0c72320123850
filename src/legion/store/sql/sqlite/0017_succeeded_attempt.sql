-- legion schema, version 17 (SQLite): a succeeded attempt is recorded on its task's row.
--
-- Every applied completion wrote a row to `attempts` (0013_attempts.sql), a task that
-- succeeded at once included: one more row and one more index entry per task on the hot
-- path (~11 us of the store thread's ~56 us a no-op task cost, instrumented), repeating
-- what the task's row already held. A succeeded task is final (it is never queued again),
-- so its task row now keeps that attempt's worker and its seconds running and waiting for
-- capacity, written by the completion's UPDATE; `attempts` keeps the attempts that did not
-- succeed (failed, retried, suspended, lost, cancelled), and `attempts_of` reads both.
-- Tasks that succeeded before this version keep their `attempts` row and leave these NULL.
ALTER TABLE tasks ADD COLUMN succeeded_on TEXT;  -- the worker of the attempt that succeeded
ALTER TABLE tasks ADD COLUMN running REAL;       -- its seconds running
ALTER TABLE tasks ADD COLUMN waited REAL;        -- its seconds waiting for capacity
