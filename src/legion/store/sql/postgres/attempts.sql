-- Each task's ended attempts (see 0013_attempts.sql); they are written by `complete`, and
-- by `reclaim` (queries.sql) for the attempts it ends.

-- name: attempts_of
SELECT attempt, worker, outcome, started_at, finished_at, running, waited, error
FROM attempts WHERE task_id = %(task_id)s ORDER BY started_at, id;
