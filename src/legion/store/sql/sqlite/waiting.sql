-- Named queries of durable waiting (see 0012_waiting.sql): suspension, signals, wake-ups,
-- child tasks and schedules.

-- name: suspend
-- A task that became `waiting` in this transaction records what it waits for.
UPDATE tasks
SET wait_event = :event, wait_count = :count, wait_children = :children, wake_at = :wake_at,
    wait_info = :info
WHERE id = :id AND status = 'waiting';

-- name: wake_ready
-- Queue again those of the tasks :ids that wait and whose wait is over.
UPDATE tasks
SET status = 'queued', not_before = 0, wait_event = NULL, wait_count = 0, wait_children = NULL,
    wake_at = NULL, wait_info = NULL
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'waiting' AND (
    (wake_at IS NOT NULL AND wake_at <= :now)
    OR (wait_event IS NOT NULL
        AND (SELECT count(*) FROM signals AS s
             WHERE s.task_id = tasks.id AND s.event = tasks.wait_event) >= wait_count)
    OR (wait_children IS NOT NULL
        AND (SELECT count(*) FROM tasks AS c
             WHERE c.parent_id = tasks.id
               AND c.status NOT IN ('succeeded', 'failed', 'dead', 'cancelled')) <= wait_children))
RETURNING id;

-- name: any_waiting
-- Whether some task waits (the partial index `tasks_waiting`: no rows read when none does).
SELECT 1 FROM tasks WHERE status = 'waiting' LIMIT 1;

-- name: parents_of
SELECT DISTINCT parent_id FROM tasks
WHERE id IN (SELECT value FROM json_each(:ids)) AND parent_id IS NOT NULL;

-- name: wake_due
-- Timers: waiting tasks whose wake-up time passed are queued again.
UPDATE tasks
SET status = 'queued', not_before = 0, wait_event = NULL, wait_count = 0, wait_children = NULL,
    wake_at = NULL, wait_info = NULL
WHERE status = 'waiting' AND wake_at IS NOT NULL AND wake_at <= :now
RETURNING id;

-- name: insert_signal
INSERT INTO signals (task_id, event, data, created_at) VALUES (:task_id, :event, :data, :now);

-- name: signal_data
-- The n-th signal (0-based :skip) of an event sent to a task.
SELECT data FROM signals WHERE task_id = :task_id AND event = :event
ORDER BY id LIMIT 1 OFFSET :skip;

-- name: set_parent
UPDATE tasks SET parent_id = :parent
WHERE id IN (SELECT value FROM json_each(:ids)) AND parent_id IS NULL;

-- name: children_of
SELECT id, key, status, output, error, input_hash FROM tasks WHERE parent_id = :parent ORDER BY id;

-- name: waiting_tasks
SELECT id, agent, tenant, wait_event, wait_count, wait_children, wake_at, wait_info, started_at
FROM tasks
WHERE status = 'waiting' AND (:tenant IS NULL OR tenant = :tenant)
  AND (:before IS NULL OR id < :before)
ORDER BY id DESC LIMIT :limit;

-- name: upsert_schedule
INSERT INTO schedules (name, cron, agent, input, max_attempts, next_tick, created_at, overlap)
VALUES (:name, :cron, :agent, :input, :max_attempts, :next_tick, :now, :overlap)
ON CONFLICT (name) DO UPDATE
SET cron = excluded.cron, agent = excluded.agent, input = excluded.input,
    max_attempts = excluded.max_attempts, overlap = excluded.overlap,
    -- The same cron keeps its next tick: a tick due and not yet claimed is not skipped
    -- by a deploy that adds its schedules again.
    next_tick = CASE WHEN schedules.cron = excluded.cron THEN schedules.next_tick
                     ELSE excluded.next_tick END;

-- name: schedules
SELECT name, cron, agent, input, max_attempts, next_tick, created_at, overlap, last_task
FROM schedules ORDER BY name;

-- name: delete_schedule
DELETE FROM schedules WHERE name = :name;

-- name: due_schedules
SELECT name, cron, agent, input, max_attempts, next_tick, created_at, overlap, last_task
FROM schedules
WHERE next_tick <= :now;

-- name: claim_tick
-- Compare and set: of all the workers that saw tick :tick due, one moves it on.
UPDATE schedules SET next_tick = :next WHERE name = :name AND next_tick = :tick;

-- name: set_last_task
UPDATE schedules SET last_task = :task WHERE name = :name;

-- name: task_of_key
SELECT id FROM tasks WHERE key = :key;
