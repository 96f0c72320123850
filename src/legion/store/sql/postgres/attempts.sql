-- Each task's ended attempts (see 0013_attempts.sql); they are written by `complete` (a
-- succeeded one on its task's row: 0017_succeeded_attempt.sql), and by `reclaim`
-- (queries.sql) for the attempts it ends.

-- name: attempts_of
-- The attempts that did not succeed, then the one that did: it is kept on the task's row
-- (0017_succeeded_attempt.sql).
SELECT attempt, worker, outcome, started_at, finished_at, running, waited, error FROM (
    SELECT attempt, worker, outcome, started_at, finished_at, running, waited, error, id AS o
    FROM attempts WHERE task_id = %(task_id)s
    UNION ALL
    SELECT attempt, succeeded_on, 'succeeded', started_at, finished_at, running, waited, NULL,
           9223372036854775807
    FROM tasks WHERE id = %(task_id)s AND succeeded_on IS NOT NULL
) AS a
ORDER BY started_at, o;
