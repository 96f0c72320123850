-- Named queries of durable waiting (see 0012_waiting.sql): suspension, signals, wake-ups,
-- child tasks and schedules.
--
-- No lost wake-up under READ COMMITTED: whoever may end a wait (a signal, a child's end)
-- first locks the waiting task's row, and the check that follows runs as a statement of
-- its own, so it sees every change committed by the writers that held that lock before.
-- A task suspending holds its own row (its completion updated it) while it checks.

-- name: suspend
-- Tasks that became `waiting` in this transaction record what they wait for.
UPDATE tasks AS t
SET wait_event = w.event, wait_count = w.count, wait_children = w.children,
    wake_at = w.wake_at, wait_info = w.info
FROM unnest(%(id)b::bigint[], %(event)b::text[], %(count)b::integer[], %(children)b::integer[],
            %(wake_at)b::float8[], %(info)b::bytea[])
     AS w(id, event, count, children, wake_at, info)
WHERE t.id = w.id AND t.status = 'waiting';

-- name: lock_parents
-- Parents are locked in id order (one order for every writer).
-- The first condition reads at most one entry of the partial index tasks_children: while no
-- task has a parent (most workloads), nothing else runs. Without it, a table with no
-- statistics yet (a new one, before autovacuum's first ANALYZE) is read whole for each batch
-- of completions: the planner takes parent_id IS NOT NULL for almost every row. The answer
-- is the same, in the same snapshot.
SELECT id FROM tasks
WHERE (SELECT parent_id FROM tasks WHERE parent_id IS NOT NULL ORDER BY parent_id LIMIT 1) IS NOT NULL
  AND id IN (SELECT parent_id FROM tasks
             WHERE id = ANY(%(ids)b::bigint[]) AND parent_id IS NOT NULL)
ORDER BY id FOR UPDATE;

-- name: wake_ready
-- Queue again those of the tasks :ids that wait and whose wait is over (looked up by id:
-- the waiting tasks may be many). A wake-up time is the database's (`legion_now`, as the
-- timers read it): a worker whose clock is ahead does not end a sleep early.
UPDATE tasks AS t
SET status = 'queued', not_before = 0, wait_event = NULL, wait_count = 0, wait_children = NULL,
    wake_at = NULL, wait_info = NULL
WHERE t.id = ANY(%(ids)b::bigint[]) AND t.status = 'waiting'
  AND ((t.wake_at IS NOT NULL AND t.wake_at <= LEAST(%(now)s, legion_now()))
       OR (t.wait_event IS NOT NULL
           AND (SELECT count(*) FROM signals AS s
                WHERE s.task_id = t.id AND s.event = t.wait_event) >= t.wait_count)
       OR (t.wait_children IS NOT NULL
           AND (SELECT count(*) FROM tasks AS c
                WHERE c.parent_id = t.id
                  AND c.status NOT IN ('succeeded', 'failed', 'dead', 'cancelled'))
               <= t.wait_children))
RETURNING t.id;

-- name: wake_parents
-- The same for the parents of the tasks :ids (which just ended); the first condition as in
-- lock_parents.
UPDATE tasks AS t
SET status = 'queued', not_before = 0, wait_event = NULL, wait_count = 0, wait_children = NULL,
    wake_at = NULL, wait_info = NULL
FROM (SELECT DISTINCT parent_id FROM tasks
      WHERE id = ANY(%(ids)b::bigint[]) AND parent_id IS NOT NULL) AS p
WHERE (SELECT parent_id FROM tasks WHERE parent_id IS NOT NULL ORDER BY parent_id LIMIT 1) IS NOT NULL
  AND t.id = p.parent_id AND t.status = 'waiting' AND t.wait_children IS NOT NULL
  AND (SELECT count(*) FROM tasks AS c
       WHERE c.parent_id = t.id
         AND c.status NOT IN ('succeeded', 'failed', 'dead', 'cancelled')) <= t.wait_children
RETURNING t.id;

-- name: wake_due
-- Timers: waiting tasks whose wake-up time passed are queued again (rows locked right now
-- are left to the next pass).
UPDATE tasks AS t
SET status = 'queued', not_before = 0, wait_event = NULL, wait_count = 0, wait_children = NULL,
    wake_at = NULL, wait_info = NULL
WHERE t.id IN (SELECT id FROM tasks
               WHERE status = 'waiting' AND wake_at IS NOT NULL AND wake_at <= %(now)s
               FOR UPDATE SKIP LOCKED)
RETURNING t.id;

-- name: task_status_locked
SELECT status, wait_event, wait_count FROM tasks WHERE id = %(task_id)s FOR UPDATE;

-- name: task_attempt_locked
SELECT status, attempt FROM tasks WHERE id = %(task_id)s FOR UPDATE;

-- name: insert_signal
INSERT INTO signals (task_id, event, data, created_at)
VALUES (%(task_id)s, %(event)s, %(data)b, %(now)s);

-- name: signal_data
-- The n-th signal (0-based :skip) of an event sent to a task.
SELECT data FROM signals WHERE task_id = %(task_id)s AND event = %(event)s
ORDER BY id LIMIT 1 OFFSET %(skip)s;

-- name: set_parent
UPDATE tasks SET parent_id = %(parent)s WHERE id = ANY(%(ids)b::bigint[]) AND parent_id IS NULL;

-- name: children_of
SELECT id, key, status, output, error, input_hash FROM tasks WHERE parent_id = %(parent)s ORDER BY id;

-- name: waiting_tasks
SELECT id, agent, tenant, wait_event, wait_count, wait_children, wake_at, wait_info, started_at
FROM tasks
WHERE status = 'waiting' AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s::text)
  AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
ORDER BY id DESC LIMIT %(limit)s;

-- name: upsert_schedule
INSERT INTO schedules (name, cron, agent, input, max_attempts, next_tick, created_at, overlap)
VALUES (%(name)s, %(cron)s, %(agent)s, %(input)b, %(max_attempts)s, %(next_tick)s, %(now)s, %(overlap)s)
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
DELETE FROM schedules WHERE name = %(name)s;

-- name: due_schedules
SELECT name, cron, agent, input, max_attempts, next_tick, created_at, overlap, last_task
FROM schedules
WHERE next_tick <= %(now)s;

-- name: claim_tick
-- Compare and set: of all the workers that saw tick :tick due, one moves it on.
UPDATE schedules SET next_tick = %(next)s WHERE name = %(name)s AND next_tick = %(tick)s
RETURNING name;

-- name: set_last_task
UPDATE schedules SET last_task = %(task)s WHERE name = %(name)s;
