-- Named queries of the LLM batch tier (see 0015_batches.sql).

-- name: batch_enqueue
INSERT INTO llm_batch_calls (task_id, event, route, request, fallback_at, created_at)
VALUES (%(task_id)s, %(event)s, %(route)s, %(request)b, %(fallback_at)s, %(now)s)
ON CONFLICT (task_id, event) DO NOTHING;

-- name: batch_claim
-- Concurrent desks skip each other's rows (SKIP LOCKED): each call goes to one claim.
UPDATE llm_batch_calls SET state = 'claimed', job = %(claim)s, poll_at = %(now)s
WHERE (task_id, event) IN (
    SELECT task_id, event FROM llm_batch_calls
    WHERE route = %(route)s AND fallback_at > %(now)s
      AND (state = 'pending' OR (state = 'claimed' AND poll_at <= %(stale)s))
    ORDER BY created_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
RETURNING task_id, event, route, request, fallback_at, job, state;

-- name: batch_sent
UPDATE llm_batch_calls SET state = 'sent', job = %(job)s, poll_at = %(poll_at)s
WHERE job = %(claim)s AND state = 'claimed';

-- name: batch_due
UPDATE llm_batch_calls SET poll_at = %(next)s
WHERE (task_id, event) IN (
    SELECT task_id, event FROM llm_batch_calls
    WHERE state IN ('sent', 'dropped') AND poll_at <= %(now)s
    FOR UPDATE SKIP LOCKED)
RETURNING task_id, event, route, request, fallback_at, job, state;

-- name: batch_forget
-- A call given up: gone if it was not sent yet, else kept as dropped until its job is
-- polled (a job whose calls were all dropped is cancelled).
DELETE FROM llm_batch_calls AS b
USING unnest(%(task_ids)b::bigint[], %(events)b::text[]) AS gone (task_id, event)
WHERE b.task_id = gone.task_id AND b.event = gone.event AND b.state IN ('pending', 'claimed');

-- name: batch_drop
UPDATE llm_batch_calls AS b SET state = 'dropped'
FROM unnest(%(task_ids)b::bigint[], %(events)b::text[]) AS gone (task_id, event)
WHERE b.task_id = gone.task_id AND b.event = gone.event AND b.state = 'sent';

-- name: batch_delete
DELETE FROM llm_batch_calls AS b
USING unnest(%(task_ids)b::bigint[], %(events)b::text[]) AS gone (task_id, event)
WHERE b.task_id = gone.task_id AND b.event = gone.event;

-- name: batch_lock_tasks
SELECT id, status FROM tasks WHERE id = ANY(%(ids)b::bigint[]) ORDER BY id FOR UPDATE;

-- name: batch_signals
INSERT INTO signals (task_id, event, data, created_at)
SELECT task_id, event, data, %(now)s
FROM unnest(%(task_ids)b::bigint[], %(events)b::text[], %(data)b::bytea[])
    AS answer (task_id, event, data);
