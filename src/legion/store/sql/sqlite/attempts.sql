-- Each task's ended attempts (see 0013_attempts.sql).

-- name: insert_attempt
-- One per applied completion, in the completions' transaction. Positional for speed:
-- 1 task_id, 2 attempt, 3 worker, 4 outcome, 5 started_at, 6 finished_at, 7 running,
-- 8 waited, 9 error.
INSERT INTO attempts (task_id, attempt, worker, outcome, started_at, finished_at, running,
                      waited, error)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9);

-- name: attempts_of
SELECT attempt, worker, outcome, started_at, finished_at, running, waited, error
FROM attempts WHERE task_id = :task_id ORDER BY started_at, id;
