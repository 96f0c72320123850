-- legion schema, version 7 (PostgreSQL).
-- Diagnostics are idempotent: a group commit retried after a lost acknowledgement writes
-- each finding once (inserts use ON CONFLICT DO NOTHING on this natural key; the data
-- enters the key as its digest, as a btree entry is limited in size).
DELETE FROM diagnostics d USING diagnostics e
WHERE d.task_id = e.task_id AND d.attempt = e.attempt AND d.kind = e.kind
  AND d.data = e.data AND d.id > e.id;
CREATE UNIQUE INDEX diagnostics_once ON diagnostics (task_id, attempt, kind, md5(data));

-- How many times the task froze a worker's event loop past its timeout (the worker
-- recorded it and exited); at the limit the task is dead.
ALTER TABLE tasks ADD COLUMN freezes integer NOT NULL DEFAULT 0;
