-- Each task's ended attempts (see 0013_attempts.sql and 0017_succeeded_attempt.sql).

-- name: insert_attempt
-- One per applied completion, in the completions' transaction. Positional for speed:
-- 1 task_id, 2 attempt, 3 worker, 4 outcome, 5 started_at, 6 finished_at, 7 running,
-- 8 waited, 9 error.
INSERT INTO attempts (task_id, attempt, worker, outcome, started_at, finished_at, running,
                      waited, error)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9);

-- name: insert_attempts
-- `insert_attempt` for many attempts in one statement: a VALUES row per attempt, in
-- `insert_attempt`'s order.
INSERT INTO attempts (task_id, attempt, worker, outcome, started_at, finished_at, running,
                      waited, error)
VALUES {rows};

-- name: attempts_of
-- The attempts that did not succeed, then the one that did: it is kept on the task's row
-- (0017_succeeded_attempt.sql).
SELECT attempt, worker, outcome, started_at, finished_at, running, waited, error FROM (
    SELECT attempt, worker, outcome, started_at, finished_at, running, waited, error, id AS o
    FROM attempts WHERE task_id = :task_id
    UNION ALL
    SELECT attempt, succeeded_on, 'succeeded', started_at, finished_at, running, waited, NULL,
           9223372036854775807
    FROM tasks WHERE id = :task_id AND succeeded_on IS NOT NULL
)
ORDER BY started_at, o;

-- name: insert_lost_attempts
-- Before `reclaim`, in its transaction: one row per attempt it ends, outcome `lost` (its
-- worker stopped or its lease expired); the time it ran is all it is known to have spent,
-- and its error is the one `reclaim` writes (a crash only where it charges one). Same
-- selection as `reclaim`.
INSERT INTO attempts (task_id, attempt, worker, outcome, started_at, finished_at, running,
                      waited, error)
SELECT id, attempt, lease_owner, 'lost', coalesce(started_at, :now), :now,
       max(:now - coalesce(started_at, :now), 0), 0,
       CASE WHEN isolate AND (SELECT count(*) FROM tasks AS o
                              WHERE o.lease_owner = x.lease_owner AND o.status = 'running') = 1
            THEN :crash_error ELSE :error END
FROM tasks AS x
WHERE status = 'running'
  AND ((lease_expires < :now AND lease_owner IS NOT :keep)
       OR lease_owner IN (SELECT value FROM json_each(:dead_owners)));
