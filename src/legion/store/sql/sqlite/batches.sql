-- Named queries of the LLM batch tier (see 0015_batches.sql).

-- name: batch_enqueue
INSERT INTO llm_batch_calls (task_id, event, route, request, fallback_at, created_at)
VALUES (:task_id, :event, :route, :request, :fallback_at, :now)
ON CONFLICT (task_id, event) DO NOTHING;

-- name: batch_claim
UPDATE llm_batch_calls SET state = 'claimed', job = :claim, poll_at = :now
WHERE rowid IN (
    SELECT rowid FROM llm_batch_calls
    WHERE route = :route AND fallback_at > :now
      AND (state = 'pending' OR (state = 'claimed' AND poll_at <= :stale))
    ORDER BY created_at LIMIT :limit)
RETURNING task_id, event, route, request, fallback_at, job, state;

-- name: batch_sent
UPDATE llm_batch_calls SET state = 'sent', job = :job, poll_at = :poll_at
WHERE job = :claim AND state = 'claimed';

-- name: batch_due
UPDATE llm_batch_calls SET poll_at = :next
WHERE state IN ('sent', 'dropped') AND poll_at <= :now
RETURNING task_id, event, route, request, fallback_at, job, state;

-- name: batch_forget
-- A call given up: gone if it was not sent yet, else kept as dropped until its job is
-- polled (a job whose calls were all dropped is cancelled).
DELETE FROM llm_batch_calls
WHERE task_id = :task_id AND event = :event AND state IN ('pending', 'claimed');

-- name: batch_drop
UPDATE llm_batch_calls SET state = 'dropped'
WHERE task_id = :task_id AND event = :event AND state = 'sent';

-- name: batch_delete
DELETE FROM llm_batch_calls WHERE task_id = :task_id AND event = :event;

-- name: batch_task_status
SELECT id, status FROM tasks WHERE id IN (SELECT value FROM json_each(:ids));
