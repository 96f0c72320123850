-- legion schema, version 7 (SQLite).
-- Diagnostics are idempotent: a group commit retried after a lost acknowledgement writes
-- each finding once (inserts use ON CONFLICT DO NOTHING on this natural key).
DELETE FROM diagnostics WHERE id NOT IN (
    SELECT min(id) FROM diagnostics GROUP BY task_id, attempt, kind, data
);
CREATE UNIQUE INDEX diagnostics_once ON diagnostics (task_id, attempt, kind, data);

-- How many times the task froze a worker's event loop past its timeout (the worker
-- recorded it and exited); at the limit the task is dead.
ALTER TABLE tasks ADD COLUMN freezes INTEGER NOT NULL DEFAULT 0;
