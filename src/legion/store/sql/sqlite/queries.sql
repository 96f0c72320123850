-- Named queries of the SQLite store. Each starts with a "-- name:" line.
-- Parameters are named (:param) so the Python side reads like the SQL.

-- name: insert_task
-- Positional for speed (executemany on the hot path): agent, input, key, session,
-- priority, max_attempts, not_before, created_at, tenant, input_hash, needs. Keys were
-- checked just before.
INSERT INTO tasks (agent, input, key, session, priority, status, max_attempts, not_before, created_at,
                   tenant, input_hash, needs)
VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?);

-- name: insert_tasks
-- Many tasks without keys in one statement (the hot path's submit): a VALUES row per
-- task, [agent, input, session, priority, status, max_attempts, not_before, created_at,
-- tenant, needs] (see sqlite_rows.py: one statement steps once, where executemany steps
-- once per row, and the driver lets go of the GIL and takes it back at each step). Ids
-- are consecutive, in the rows' order.
INSERT INTO tasks (agent, input, session, priority, status, max_attempts, not_before,
                   created_at, tenant, needs)
VALUES {rows};

-- name: tasks_by_keys
SELECT key, id, status, input_hash FROM tasks WHERE key IN (SELECT value FROM json_each(:keys));

-- name: lease
-- The tasks of :agent and :tenant in their queue's order (legion.store.turns: tenants
-- take turns). Tasks to run alone (`isolate`) are leased by lease_isolated only. A task that needs
-- resources (`needs`) goes only to a worker whose :offer covers every amount; only tasks of
-- at least :min_priority are taken.
UPDATE tasks
SET status = 'running', attempt = attempt + 1, lease_owner = :owner,
    lease_expires = :until, started_at = :now, finished_at = NULL
WHERE id IN (
    SELECT id FROM tasks
    WHERE status = 'queued' AND agent = :agent AND tenant = :tenant AND not_before <= :now
      AND NOT isolate AND priority >= :min_priority
      AND (needs IS NULL OR NOT EXISTS (
          SELECT 1 FROM json_each(needs) AS n
          WHERE n.value > coalesce((SELECT o.value FROM json_each(:offer) AS o
                                    WHERE o.key = n.key), 0)))
    ORDER BY priority DESC, id
    LIMIT :limit
)
RETURNING id, agent, input, key, session, attempt, max_attempts, priority, tenant;

-- name: lease_pick
-- `lease` in two statements of one step each (in one transaction): this one picks the
-- tasks, as one JSON array of [id, agent, input (as text), key, session, attempt (the
-- lease's: one more), max_attempts, priority, tenant] rows; `lease_take` leases them.
-- `lease`'s RETURNING hands back a row per step, and the driver lets go of the GIL and
-- takes it back at each: under a busy event loop, leasing 1,000 tasks took ~50 ms.
SELECT json_group_array(json_array(id, agent, CAST(input AS TEXT), key, session,
                                   attempt + 1, max_attempts, priority, tenant))
FROM (
    SELECT id, agent, input, key, session, attempt, max_attempts, priority, tenant
    FROM tasks
    WHERE status = 'queued' AND agent = :agent AND tenant = :tenant AND not_before <= :now
      AND NOT isolate AND priority >= :min_priority
      AND (needs IS NULL OR NOT EXISTS (
          SELECT 1 FROM json_each(needs) AS n
          WHERE n.value > coalesce((SELECT o.value FROM json_each(:offer) AS o
                                    WHERE o.key = n.key), 0)))
    ORDER BY priority DESC, id
    LIMIT :limit
);

-- name: lease_pick_after
-- `lease_pick`'s tasks of one tenant that come after (:after_priority, :after_id) in its
-- queue's order: more of a tenant whose turns used up those read (legion.store.turns).
SELECT json_group_array(json_array(id, agent, CAST(input AS TEXT), key, session,
                                   attempt + 1, max_attempts, priority, tenant))
FROM (
    SELECT id, agent, input, key, session, attempt, max_attempts, priority, tenant
    FROM tasks
    WHERE status = 'queued' AND agent = :agent AND tenant = :tenant AND not_before <= :now
      AND NOT isolate AND priority >= :min_priority
      AND (priority < :after_priority OR (priority = :after_priority AND id > :after_id))
      AND (needs IS NULL OR NOT EXISTS (
          SELECT 1 FROM json_each(needs) AS n
          WHERE n.value > coalesce((SELECT o.value FROM json_each(:offer) AS o
                                    WHERE o.key = n.key), 0)))
    ORDER BY priority DESC, id
    LIMIT :limit
);

-- name: queued_tenants
-- The tenants with tasks of :agent queued (a seek in the queue's index for each, in name
-- order) of which one may be leased now (of at least :min_priority, due, not to run
-- alone: its offer is left to `lease_pick`), each with its tasks of :agent running now.
-- A tenant whose queued tasks are all delayed (a retry's backoff, a `not_before`) costs
-- the lease a look in the index here, not a read of its own: with 10,000 such tenants,
-- their reads made a lease ~80 ms longer.
WITH RECURSIVE queued(tenant) AS (
    SELECT (SELECT tenant FROM tasks WHERE status = 'queued' AND agent = :agent
            ORDER BY tenant, priority DESC, id LIMIT 1)
    UNION ALL
    SELECT (SELECT tenant FROM tasks WHERE status = 'queued' AND agent = :agent
              AND tenant > queued.tenant ORDER BY tenant, priority DESC, id LIMIT 1)
    FROM queued WHERE queued.tenant IS NOT NULL
)
SELECT q.tenant, coalesce((SELECT c.n FROM task_counts AS c
                           WHERE c.tenant = q.tenant AND c.status = 'running'
                             AND c.agent = :agent), 0)
FROM queued AS q
WHERE q.tenant IS NOT NULL
  AND EXISTS (SELECT 1 FROM tasks AS t
              WHERE t.status = 'queued' AND t.agent = :agent AND t.tenant = q.tenant
                AND t.not_before <= :now AND NOT t.isolate
                AND t.priority >= :min_priority);

-- name: lease_take
-- The tasks `lease_pick` picked (:ids, a JSON array), leased.
UPDATE tasks
SET status = 'running', attempt = attempt + 1, lease_owner = :owner,
    lease_expires = :until, started_at = :now, finished_at = NULL
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'queued';

-- name: lease_isolated
-- A group of tasks to run apart from all others (taken back from a worker that stopped
-- while running them with others): the first in line and, up to its `isolate_group` (and
-- :limit) in all, others in line that may run in a group that large. (Read from their own
-- index, named: SQLite's planner, with no statistics, may take the queue's index, whose
-- every queued task of the agent it then reads, at every look for suspects.)
WITH suspect AS (
    SELECT id, isolate_group, priority FROM tasks INDEXED BY tasks_isolated
    WHERE status = 'queued' AND isolate AND agent IN (SELECT value FROM json_each(:agents))
      AND not_before <= :now
      AND (needs IS NULL OR NOT EXISTS (
          SELECT 1 FROM json_each(needs) AS n
          WHERE n.value > coalesce((SELECT o.value FROM json_each(:offer) AS o
                                    WHERE o.key = n.key), 0)))
), first AS (
    SELECT min(isolate_group, :limit) AS size FROM suspect ORDER BY priority DESC, id LIMIT 1
)
UPDATE tasks
SET status = 'running', attempt = attempt + 1, lease_owner = :owner,
    lease_expires = :until, started_at = :now, finished_at = NULL
WHERE id IN (
    SELECT id FROM suspect
    WHERE isolate_group >= (SELECT size FROM first)
    ORDER BY priority DESC, id
    LIMIT coalesce((SELECT size FROM first), 0)
)
RETURNING id, agent, input, key, session, attempt, max_attempts, priority, tenant;

-- name: replayed_steps
SELECT task_id, key, output FROM steps WHERE task_id IN (SELECT value FROM json_each(:ids));

-- name: live_leases
-- The fence of a write batch: which of these tasks are running, under which lease, and
-- whether their cancellation was asked.
SELECT id, attempt, lease_owner, cancel_requested FROM tasks
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'running';
-- name: complete
-- Fenced: applies only while the worker still holds lease number `attempt`.
-- A succeeded task has no error (an earlier attempt's, even one the reaper wrote when its
-- worker died, is history: in `attempts`).
-- A succeeded attempt is recorded on the row (0017_succeeded_attempt.sql): 11 its worker,
-- 12 its start, 13 its seconds running, 14 waiting; all NULL for any other outcome.
-- Positional for speed (executemany on the hot path):
-- 1 status, 2 output, 3 error, 4 not_before, 5 uncount, 6 finished_at, 7 id, 8 attempt, 9 owner,
-- 10 usage, 11 succeeded_on, 12 started_at, 13 running, 14 waited.
UPDATE tasks
SET status = CASE WHEN cancel_requested AND ?1 IN ('queued', 'waiting') THEN 'cancelled'
                  ELSE ?1 END,
    output = ?2,
    error = CASE WHEN ?1 = 'succeeded' THEN NULL ELSE coalesce(?3, error) END,
    not_before = ?4,
    attempt = attempt - ?5,
    lease_owner = NULL, lease_expires = NULL,
    finished_at = CASE WHEN cancel_requested AND ?1 IN ('queued', 'waiting')
                       THEN (julianday('now') - 2440587.5) * 86400.0 ELSE ?6 END,
    usage = coalesce(?10, usage),
    isolate = CASE WHEN ?1 = 'queued' AND ?5 = 1 THEN isolate ELSE 0 END,
    succeeded_on = ?11,
    started_at = coalesce(?12, started_at),
    running = ?13,
    waited = ?14
WHERE id = ?7 AND attempt = ?8 AND lease_owner = ?9 AND status = 'running';

-- name: complete_many
-- `complete` for many completions in one statement: a VALUES row per completion, in
-- `complete`'s order [status, output, error, not_before, uncount, finished_at, id,
-- attempt, owner, usage, succeeded_on, started_at, running, waited]. Fenced like
-- `complete`; the caller compares the count of changed rows with the batch's. A row of
-- NULLs changes nothing (sqlite_rows.py pads with them).
UPDATE tasks
SET status = CASE WHEN tasks.cancel_requested AND c.status IN ('queued', 'waiting')
                  THEN 'cancelled' ELSE c.status END,
    output = c.output,
    error = CASE WHEN c.status = 'succeeded' THEN NULL ELSE coalesce(c.error, tasks.error) END,
    not_before = c.not_before,
    attempt = tasks.attempt - c.uncount,
    lease_owner = NULL, lease_expires = NULL,
    finished_at = CASE WHEN tasks.cancel_requested AND c.status IN ('queued', 'waiting')
                       THEN (julianday('now') - 2440587.5) * 86400.0 ELSE c.finished_at END,
    usage = coalesce(c.usage, tasks.usage),
    isolate = CASE WHEN c.status = 'queued' AND c.uncount = 1 THEN tasks.isolate ELSE 0 END,
    succeeded_on = c.succeeded_on,
    started_at = coalesce(c.started_at, tasks.started_at),
    running = c.running,
    waited = c.waited
FROM (
    SELECT column1 AS status, column2 AS output, column3 AS error, column4 AS not_before,
           column5 AS uncount, column6 AS finished_at, column7 AS id, column8 AS attempt,
           column9 AS owner, column10 AS usage, column11 AS succeeded_on,
           column12 AS started_at, column13 AS running, column14 AS waited
    FROM (VALUES {rows})
) AS c
WHERE tasks.id = c.id AND tasks.attempt = c.attempt AND tasks.lease_owner = c.owner
  AND tasks.status = 'running';

-- name: log_events
-- `log_event` for many tasks in one statement: a VALUES row per task, [task id, the time,
-- the worker whose lease the change ended (or null)]. In the rows' order (CROSS JOIN keeps
-- them as the outer loop); a row of NULLs logs nothing.
INSERT INTO events (task_id, at, status, attempt, worker)
SELECT t.id, c.column2, t.status, t.attempt, c.column3
FROM (VALUES {rows}) AS c CROSS JOIN tasks AS t ON t.id = c.column1;

-- name: log_ended
-- Changes whose status and attempt the caller knows (completions it just applied, fenced
-- on the lease they ended): a VALUES row per task, [task id, at, status, attempt, the
-- worker whose lease the change ended]; no read of `tasks`.
INSERT INTO events (task_id, at, status, attempt, worker) VALUES {rows};

-- name: log_event
-- The change feed (see 0014_hot_path.sql): every statement that changes a task's status
-- is followed by one of these per changed task, in the same transaction. Positional for
-- speed, a row of `log_events`: 1 the task's id, 2 at, 3 the worker whose lease the
-- change ended (or NULL).
INSERT INTO events (task_id, at, status, attempt, worker)
SELECT id, ?2, status, attempt, ?3 FROM tasks WHERE id = ?1;

-- name: insert_step
-- Positional: 1 task_id, 2 key, 3 attempt, 4 output, 5 started_at, 6 finished_at.
INSERT INTO steps (task_id, key, attempt, output, started_at, finished_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (task_id, key) DO NOTHING;

-- name: insert_steps
-- `insert_step` for many steps in one statement: a VALUES row per step, in
-- `insert_step`'s order.
INSERT INTO steps (task_id, key, attempt, output, started_at, finished_at)
VALUES {rows}
ON CONFLICT (task_id, key) DO NOTHING;

-- name: set_memory
INSERT INTO memory (session, key, value, updated_at) VALUES (:session, :key, :value, :now)
ON CONFLICT (session, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;

-- name: delete_memory
DELETE FROM memory WHERE session = :session AND key = :key;

-- name: get_memory
SELECT value FROM memory WHERE session = :session AND key = :key;

-- name: memory_items
SELECT key, value FROM memory WHERE session = :session ORDER BY key;

-- name: extend_leases
-- Extends only the leases the worker runs.
UPDATE tasks SET lease_expires = :until
WHERE id IN (SELECT value FROM json_each(:ids)) AND lease_owner = :owner AND status = 'running'
RETURNING id, cancel_requested;

-- name: release_unheld
-- After a lease call whose answer was lost: rows leased to the worker that it does not run
-- go back to the queue, their attempt not counted.
UPDATE tasks
SET status = 'queued', attempt = attempt - 1, lease_owner = NULL, lease_expires = NULL
WHERE lease_owner = :owner AND status = 'running'
  AND id NOT IN (SELECT value FROM json_each(:keep))
RETURNING id;
-- name: reclaimable
-- What reclaim takes back, with each lease's owner (for the change feed).
SELECT id, lease_owner FROM tasks
WHERE status = 'running'
  AND ((lease_expires < :now AND lease_owner IS NOT :keep)
       OR lease_owner IN (SELECT value FROM json_each(:dead_owners)));

-- name: reclaim
-- Leases that expired, or whose worker is known dead, go back to the queue, each to run
-- apart from all others next (`isolate`) until it ends: in a group of at most half as many
-- as it was lost with (`isolate_group`), so that the one that stops its workers ends up
-- alone. The stop is charged to the task (its own crash count) only if it ran alone as
-- such a suspect already (`isolate`): a first stop may be its worker's own (paused past
-- its lease, killed by an operator, its other leases taken back a pass earlier), and
-- costs no attempt. A task charged on its last attempt is dead.
WITH s AS (
    SELECT id, isolate, (SELECT count(*) FROM tasks AS o
                         WHERE o.lease_owner = x.lease_owner AND o.status = 'running') AS shared
    FROM tasks AS x
    WHERE status = 'running'
      AND ((lease_expires < :now AND lease_owner IS NOT :keep)
       OR lease_owner IN (SELECT value FROM json_each(:dead_owners)))
), r AS (
    SELECT id, shared = 1 AND isolate AS alone, max(1, shared / 2) AS group_size FROM s
)
UPDATE tasks
SET status = CASE
        WHEN cancel_requested THEN 'cancelled'
        WHEN r.alone AND attempt >= max_attempts THEN 'dead'
        ELSE 'queued' END,
    error = CASE WHEN cancel_requested THEN error WHEN r.alone THEN :crash_error ELSE :error END,
    attempt = CASE WHEN cancel_requested OR r.alone THEN attempt ELSE attempt - 1 END,
    crashes = crashes + r.alone,
    isolate = NOT cancel_requested,
    isolate_group = r.group_size,
    lease_owner = NULL, lease_expires = NULL,
    finished_at = CASE WHEN cancel_requested OR (r.alone AND attempt >= max_attempts) THEN :now END
FROM r
WHERE tasks.id = r.id
RETURNING tasks.id, tasks.status;
-- name: absolve
-- The queued tasks that run alone because their last attempt was lost on :owner, which
-- lives: they run with others again.
UPDATE tasks SET isolate = 0
WHERE status = 'queued' AND isolate
  AND EXISTS (SELECT 1 FROM attempts AS a
              WHERE a.task_id = tasks.id AND a.worker = :owner AND a.outcome = 'lost'
                AND a.attempt >= tasks.attempt)
RETURNING id;

-- name: cancel_queued
UPDATE tasks SET status = 'cancelled', finished_at = :now, cancel_requested = 1
WHERE id = :id AND status IN ('queued', 'waiting')
RETURNING id;

-- name: cancel_running
UPDATE tasks SET cancel_requested = 1 WHERE id = :id AND status = 'running';

-- name: cancel_queued_many
UPDATE tasks SET status = 'cancelled', finished_at = :now, cancel_requested = 1
WHERE id IN (SELECT value FROM json_each(:ids)) AND status IN ('queued', 'waiting')
RETURNING id;

-- name: cancel_running_many
UPDATE tasks SET cancel_requested = 1
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'running';

-- name: requeue
UPDATE tasks
SET status = 'queued', attempt = 0, not_before = 0, cancel_requested = 0, crashes = 0, isolate = 0,
    finished_at = NULL, lease_owner = NULL, lease_expires = NULL
WHERE status IN (SELECT value FROM json_each(:statuses)) AND (:agent IS NULL OR agent = :agent)
  AND (:tenant IS NULL OR tenant = :tenant)
RETURNING id;

-- name: requeue_many
-- These tasks, those that ended dead, failed or cancelled (a JSON list of ids).
UPDATE tasks
SET status = 'queued', attempt = 0, not_before = 0, cancel_requested = 0, crashes = 0, isolate = 0,
    finished_at = NULL, lease_owner = NULL, lease_expires = NULL
WHERE id IN (SELECT value FROM json_each(:ids)) AND status IN ('dead', 'failed', 'cancelled')
RETURNING id;

-- name: status_of
SELECT status FROM tasks WHERE id = :id;

-- name: statuses
-- Where each of these tasks stands (a caller's backstop for results it waits for).
SELECT id, status FROM tasks WHERE id IN (SELECT value FROM json_each(:ids));

-- name: get_task
SELECT id, agent, key, session, status, attempt, max_attempts, input, output, error,
       created_at, started_at, finished_at, lease_owner, usage, tenant,
       parent_id, cancel_requested
FROM tasks WHERE id = :id;

-- name: counts
-- The counts read `task_counts` (0018_counts_table.sql), which holds a row per tenant,
-- status and agent, zeros included.
SELECT status, sum(n) FROM task_counts GROUP BY status HAVING sum(n) > 0;

-- name: count_queued
-- A tenant's backlog, for its limit on queued tasks.
SELECT coalesce(sum(n), 0) FROM task_counts WHERE tenant = :tenant AND status = 'queued';

-- name: counts_by_tenant
SELECT tenant, status, sum(n) FROM task_counts GROUP BY tenant, status HAVING sum(n) > 0;

-- name: counts_by_agent
SELECT agent, status, sum(n) FROM task_counts GROUP BY agent, status HAVING sum(n) > 0;

-- name: count_tasks
-- Moves in `task_counts`: a VALUES row per (tenant, status, agent), [tenant, status, agent,
-- how many tasks came to it (negative: left it)].
INSERT INTO task_counts (tenant, status, agent, n)
SELECT column1, column2, column3, column4 FROM (VALUES {rows}) WHERE true
ON CONFLICT (tenant, status, agent) DO UPDATE SET n = n + excluded.n;

-- name: logged_counts
-- The tasks of the change feed's rows after :after (the ones just logged), by tenant, the
-- status each logged and agent.
SELECT t.tenant, e.status, t.agent, count(*)
FROM events AS e JOIN tasks AS t ON t.id = e.task_id
WHERE e.id > :after
GROUP BY t.tenant, e.status, t.agent;

-- name: recent_errors
SELECT id, agent, key, session, status, attempt, max_attempts, input, output, error,
       created_at, started_at, finished_at, lease_owner, usage, tenant,
       parent_id, cancel_requested
FROM tasks WHERE error IS NOT NULL AND status IN ('failed', 'dead', 'queued')
  AND (:tenant IS NULL OR tenant = :tenant)
ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT :limit;

-- name: step_count
SELECT count(*) FROM steps WHERE task_id = :task_id;

-- name: steps_of
SELECT key, attempt, output, started_at, finished_at FROM steps WHERE task_id = :task_id
ORDER BY started_at, key;

-- name: events_after
-- :skip_worker leaves out the changes one worker made itself (it reported them already).
SELECT id, task_id, at, status, attempt, worker FROM events
WHERE id > :after AND (worker IS NULL OR :skip_worker IS NULL OR worker != :skip_worker)
ORDER BY id LIMIT :limit;

-- name: last_event
SELECT coalesce(max(id), 0) FROM events;

-- name: upsert_worker
INSERT INTO workers (id, host, pid, started_at, heartbeat_at, info, boot_id, pid_ns, proc_start)
VALUES (:id, :host, :pid, :now, :now, :info, :boot_id, :pid_ns, :proc_start)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, info = excluded.info;
-- name: delete_worker
DELETE FROM workers WHERE id = :id;

-- name: workers
SELECT id, host, pid, started_at, heartbeat_at, info, boot_id, pid_ns, proc_start
FROM workers ORDER BY started_at;
-- name: claim_capacity
INSERT INTO capacity_claims (route, worker, demand, at) VALUES (:route, :worker, :demand, :now)
ON CONFLICT (route, worker) DO UPDATE SET demand = excluded.demand, at = excluded.at;

-- name: capacity_claims
SELECT count(*), coalesce(sum(demand), 0),
       (SELECT coalesce(max(until), 0) FROM capacity_backoff WHERE route = :route)
FROM capacity_claims WHERE route = :route AND at >= :since;

-- name: forget_capacity_claims
DELETE FROM capacity_claims WHERE at < :before;

-- name: signal_backoff
INSERT INTO capacity_backoff (route, until) VALUES (:route, :until)
ON CONFLICT (route) DO UPDATE SET until = max(until, excluded.until);

-- name: list_tasks
-- The HTTP API's task list, newest first. A NULL filter matches everything; :before is the
-- page cursor (only ids below it). The id range keeps a page a short walk down the rowids.
-- Inputs and outputs are left out (NULL): a page shows neither, and they can be large.
SELECT id, agent, key, session, status, attempt, max_attempts, NULL, NULL, error,
       created_at, started_at, finished_at, lease_owner, usage, tenant,
       parent_id, cancel_requested
FROM tasks
WHERE id < coalesce(:before, 9223372036854775807)
  AND (:tenant IS NULL OR tenant = :tenant)
  AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
  AND (:agent IS NULL OR agent = :agent)
  AND (:created_from IS NULL OR created_at >= :created_from)
  AND (:created_to IS NULL OR created_at < :created_to)
  AND (:parent IS NULL OR parent_id = :parent)
ORDER BY id DESC LIMIT :limit;

-- name: event_details_after
-- The event feed with what the dashboard and metrics need of each task. LEFT JOIN keeps
-- the events table the outer loop: it is read by id range, tasks by primary key.
SELECT e.id, e.task_id, e.at, e.status, e.attempt, e.worker,
       t.agent, t.started_at, t.finished_at, t.usage, t.tenant
FROM events AS e LEFT JOIN tasks AS t ON t.id = e.task_id
WHERE e.id > :after
ORDER BY e.id LIMIT :limit;

-- name: insert_api_key
INSERT INTO api_keys (id, name, salt, digest, created_at, tenant, scope)
VALUES (:id, :name, :salt, :digest, :created_at, :tenant, :scope);

-- name: get_api_key
SELECT id, name, salt, digest, created_at, revoked_at, tenant, scope FROM api_keys WHERE id = :id;

-- name: api_keys
SELECT id, name, salt, digest, created_at, revoked_at, tenant, scope FROM api_keys ORDER BY created_at, id;

-- name: revoke_api_key
-- Idempotent: a key revoked twice keeps its first revocation time.
UPDATE api_keys SET revoked_at = coalesce(revoked_at, :now) WHERE id = :id;

-- name: insert_diagnostic
INSERT INTO diagnostics (task_id, attempt, agent, kind, data)
VALUES (:task_id, :attempt, :agent, :kind, :data)
ON CONFLICT DO NOTHING;

-- name: diagnostics
SELECT task_id, attempt, agent, data FROM diagnostics
WHERE (:task_id IS NULL OR task_id = :task_id) AND (:agent IS NULL OR agent = :agent)
  AND (:kind IS NULL OR kind = :kind)
ORDER BY id DESC LIMIT :limit;

-- name: backlog
-- Tasks ready to run now and when the oldest of them was submitted (the scaling policy):
-- of every agent, or of those named (a JSON array).
SELECT count(*), min(created_at) FROM tasks WHERE status = 'queued' AND not_before <= :now
  AND (:agents IS NULL OR agent IN (SELECT value FROM json_each(:agents)));

-- name: upsert_autoscaler
INSERT INTO autoscalers (id, host, pid, at, desired, running, minimum, maximum, reason)
VALUES (:id, :host, :pid, :at, :desired, :running, :minimum, :maximum, :reason)
ON CONFLICT (id) DO UPDATE SET at = excluded.at, desired = excluded.desired,
    running = excluded.running, minimum = excluded.minimum, maximum = excluded.maximum,
    reason = excluded.reason;

-- name: delete_autoscaler
DELETE FROM autoscalers WHERE id = :id;

-- name: autoscalers
SELECT id, host, pid, at, desired, running, minimum, maximum, reason FROM autoscalers
WHERE at >= :since ORDER BY id;

-- name: purge_tasks
-- Up to :limit ended tasks (of :statuses, and of :agent if given) that ended before
-- :before, oldest first, except a child whose parent is there and has not succeeded: a
-- parent reads its children's ends when it wakes, and a failed, dead or cancelled one may
-- be retried (its children, purged, would run again). Scanned in id order: old first,
-- from after :after (where the last call stopped).
DELETE FROM tasks WHERE id IN (
    SELECT t.id FROM tasks AS t
    WHERE t.id > :after
      AND t.status IN (SELECT value FROM json_each(:statuses))
      AND t.finished_at < :before
      AND (:agent IS NULL OR t.agent = :agent)
      AND (:tenant IS NULL OR t.tenant = :tenant)
      AND (t.parent_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM tasks AS p
          WHERE p.id = t.parent_id AND p.status <> 'succeeded'))
    ORDER BY t.id LIMIT :limit
)
RETURNING id, tenant, status, agent, session, usage;

-- name: add_purged_spend
-- Positional (executemany): scope, name, calls, tokens, cost.
INSERT INTO purged_spend (scope, name, calls, tokens, cost) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (scope, name) DO UPDATE SET
    calls = calls + excluded.calls, tokens = tokens + excluded.tokens,
    cost = cost + excluded.cost;

-- name: purged_spend
SELECT calls, tokens, cost FROM purged_spend WHERE scope = :scope AND name = :name;

-- name: purgeable
SELECT count(*) FROM tasks AS t
WHERE t.status IN (SELECT value FROM json_each(:statuses))
  AND t.finished_at < :before
  AND (:agent IS NULL OR t.agent = :agent)
  AND (:tenant IS NULL OR t.tenant = :tenant)
  AND (t.parent_id IS NULL OR NOT EXISTS (
      SELECT 1 FROM tasks AS p
      WHERE p.id = t.parent_id AND p.status <> 'succeeded'));

-- name: purge_steps
DELETE FROM steps WHERE task_id IN (SELECT value FROM json_each(:ids));

-- name: purge_attempts
DELETE FROM attempts WHERE task_id IN (SELECT value FROM json_each(:ids));

-- name: purge_diagnostics
DELETE FROM diagnostics WHERE task_id IN (SELECT value FROM json_each(:ids));

-- name: purge_signals
DELETE FROM signals WHERE task_id IN (SELECT value FROM json_each(:ids));

-- name: purge_memory
-- The memory of purged tasks that ran without a session: their own (`task-<id>`, within
-- their tenant), which no other task reads (ids are never given twice).
DELETE FROM memory WHERE session IN (SELECT value FROM json_each(:sessions));

-- name: purge_batch_calls
DELETE FROM llm_batch_calls WHERE task_id IN (SELECT value FROM json_each(:ids));

-- name: purge_events
-- Change-feed rows older than :before of tasks that are gone (purged), after :feed_after:
-- a reader following the feed behind them (a caller waiting for results, paused) still
-- finds the rows of every task it can wait for.
DELETE FROM events WHERE id IN (
    SELECT e.id FROM events AS e
    WHERE e.id > :feed_after AND e.at < :before
      AND NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.id = e.task_id)
    ORDER BY e.id LIMIT :limit
)
RETURNING id;

-- name: live_sessions
-- The sessions of the queued, running and waiting tasks (a task without one has its own,
-- `task-<id>`, stored as legion.store.tenancy.scoped_key keeps it): `legion purge
-- --sessions` keeps their memory.
SELECT DISTINCT coalesce(session, CASE WHEN tenant = 'default' THEN 'task-' || id
                                       ELSE char(31) || tenant || char(31) || 'task-' || id END)
FROM tasks WHERE status IN ('queued', 'running', 'waiting');

-- name: idle_sessions
-- Sessions none of whose memory was written since :before, in name order after
-- :after.
SELECT session FROM memory WHERE session > :after
GROUP BY session HAVING max(updated_at) < :before
ORDER BY session LIMIT :limit;

-- name: drop_memory
-- The memory of the sessions in :sessions (a JSON array) that none of whose keys was
-- written since :before (a write in between keeps the session whole).
DELETE FROM memory
WHERE session IN (SELECT value FROM json_each(:sessions))
  AND session NOT IN (SELECT session FROM memory
                      WHERE session IN (SELECT value FROM json_each(:sessions))
                        AND updated_at >= :before);

-- name: cancels_asked
-- The tasks a worker runs whose cancellation was asked (tasks_cancel_asked).
SELECT id FROM tasks WHERE lease_owner = :owner AND cancel_requested AND status = 'running';
