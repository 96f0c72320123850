-- Named queries of the PostgreSQL store. Each starts with a "-- name:" line.
-- Parameters are named (%(param)s; %(param)b sends arrays in binary: psycopg builds a text
-- array literal in Python, element by element, at 0.6-4.7 µs an element against ~0.2).
-- Batches travel as one array per column and are unpacked with unnest(): one statement and
-- one round trip for a whole batch.

-- name: create_version_table
CREATE TABLE IF NOT EXISTS legion_schema (
    version    integer     PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: session_mark
-- '1' in a session that took the settings sent at connect (legion.store.postgres).
SELECT current_setting('legion.session', true);

-- name: lock_migrations
-- Held until the migrating transaction ends: workers starting together migrate one by one.
SELECT pg_advisory_xact_lock(hashtext('legion.migrate'), hashtext(current_schema()));

-- name: schema_version
SELECT coalesce(max(version), 0) FROM legion_schema;

-- name: recorded_versions
SELECT version FROM legion_schema;

-- name: record_version
INSERT INTO legion_schema (version) VALUES (%(version)s);

-- name: current_schema
-- Where the tables go: the first schema of the search_path that exists (NULL if none).
SELECT current_schema();

-- name: store_exists
-- Whether legion's tables are in the schema where they go (its version table is made first).
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_tables
    WHERE schemaname = current_schema() AND tablename = 'legion_schema'
);

-- name: work_channel
SELECT legion_work_channel(current_schema());

-- name: database_exists
SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %(name)s);

-- name: insert_tasks
-- Rows are inserted, and answered by RETURNING, in input order. A key that exists already
-- (or is being inserted by a concurrent submit that then commits) is skipped.
INSERT INTO tasks (agent, input, key, session, priority, status, max_attempts, not_before, created_at,
                   tenant, input_hash, needs)
SELECT agent, input, key, session, priority, 'queued', max_attempts, not_before, %(now)s,
       tenant, input_hash, needs::jsonb
FROM unnest(%(agent)b::text[], %(input)b::bytea[], %(key)b::text[], %(session)b::text[],
            %(priority)b::integer[], %(max_attempts)b::integer[], %(not_before)b::float8[],
            %(tenant)b::text[], %(input_hash)b::bytea[], %(needs)b::text[])
     WITH ORDINALITY AS t(agent, input, key, session, priority, max_attempts, not_before,
                          tenant, input_hash, needs, ord)
ORDER BY ord
ON CONFLICT (key) WHERE key IS NOT NULL DO NOTHING
RETURNING id, key;

-- name: tasks_by_keys
SELECT key, id, status, input_hash FROM tasks WHERE key = ANY(%(keys)b::text[]);

-- name: lease
-- The tasks of %(agent)s and %(tenant)s in their queue's order (legion.store.turns:
-- tenants take turns; `lease_read` and `lease_ids` when several have tasks queued).
-- SKIP LOCKED: concurrent workers take disjoint rows instead of queueing on each other.
-- The lease runs %(seconds)s on the database's clock. Tasks to run alone (`isolate`) are
-- leased by lease_isolated only. A task that needs resources (`needs`) goes only to a worker
-- whose %(offer)s covers every amount; only tasks of at least %(min_priority)s are taken.
UPDATE tasks AS t
SET status = 'running', attempt = t.attempt + 1, lease_owner = %(owner)s,
    lease_expires = legion_now() + %(seconds)s, started_at = %(now)s, finished_at = NULL
FROM (
    SELECT id FROM tasks
    WHERE status = 'queued' AND agent = %(agent)s AND tenant = %(tenant)s
      AND not_before <= %(now)s AND NOT isolate AND priority >= %(min_priority)s
      AND (needs IS NULL OR NOT EXISTS (
          SELECT 1 FROM jsonb_each_text(needs) AS n
          WHERE n.value::float8 > coalesce((%(offer)s::jsonb ->> n.key)::float8, 0)))
    ORDER BY priority DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS picked
WHERE t.id = picked.id
RETURNING t.id, t.agent, t.input, t.key, t.session, t.attempt, t.max_attempts, t.priority,
    t.tenant;

-- name: queued_tenants
-- The tenants with tasks of %(agent)s queued (a seek in the queue's index for each, in
-- name order: the order by the index's columns keeps the planner to it) of which one may
-- be leased now (of at least %(min_priority)s, due, not to run alone: its offer is left
-- to `lease_read`), each with its tasks of %(agent)s running now. A tenant whose queued
-- tasks are all delayed (a retry's backoff, a `not_before`) costs the lease a look in the
-- index here, and no read in `lease_read`.
WITH RECURSIVE queued(tenant) AS (
    SELECT (SELECT tenant FROM tasks WHERE status = 'queued' AND agent = %(agent)s
            ORDER BY tenant, priority DESC, id LIMIT 1)
    UNION ALL
    SELECT (SELECT tenant FROM tasks WHERE status = 'queued' AND agent = %(agent)s
              AND tenant > queued.tenant ORDER BY tenant, priority DESC, id LIMIT 1)
    FROM queued WHERE queued.tenant IS NOT NULL
)
SELECT q.tenant, coalesce((SELECT sum(c.n) FROM task_counts AS c
                           WHERE c.tenant = q.tenant AND c.status = 'running'
                             AND c.agent = %(agent)s), 0)::bigint
FROM queued AS q
WHERE q.tenant IS NOT NULL
  AND EXISTS (SELECT 1 FROM tasks AS t
              WHERE t.status = 'queued' AND t.agent = %(agent)s AND t.tenant = q.tenant
                AND t.not_before <= %(now)s AND NOT t.isolate
                AND t.priority >= %(min_priority)s);

-- name: lease_read
-- The first %(share)s tasks of %(agent)s of each of %(tenants)s, in their queue's order,
-- read without a lock (legion.store.turns merges them; `lease_turns` then locks and
-- leases what the turns gave each tenant: a lease locks no row it does not take, so
-- workers leasing at once do not find each other's reads locked).
SELECT q.tenant, p.priority, p.id
FROM unnest(%(tenants)s::text[]) AS q(tenant)
CROSS JOIN LATERAL (
    SELECT id, priority FROM tasks
    WHERE status = 'queued' AND agent = %(agent)s AND tenant = q.tenant
      AND not_before <= %(now)s AND NOT isolate AND priority >= %(min_priority)s
      AND (needs IS NULL OR NOT EXISTS (
          SELECT 1 FROM jsonb_each_text(needs) AS n
          WHERE n.value::float8 > coalesce((%(offer)s::jsonb ->> n.key)::float8, 0)))
    ORDER BY priority DESC, id
    LIMIT %(share)s
) AS p;

-- name: lease_read_after
-- More of one tenant's tasks, after (%(after_priority)s, %(after_id)s) in its queue's
-- order (as `lease_read`, without a lock): for a tenant whose turns used up those read
-- (legion.store.turns).
SELECT tenant, priority, id FROM tasks
WHERE status = 'queued' AND agent = %(agent)s AND tenant = %(tenant)s
  AND not_before <= %(now)s AND NOT isolate AND priority >= %(min_priority)s
  AND (priority < %(after_priority)s OR (priority = %(after_priority)s AND id > %(after_id)s))
  AND (needs IS NULL OR NOT EXISTS (
      SELECT 1 FROM jsonb_each_text(needs) AS n
      WHERE n.value::float8 > coalesce((%(offer)s::jsonb ->> n.key)::float8, 0)))
ORDER BY priority DESC, id
LIMIT %(share)s;

-- name: lease_turns
-- Lease %(counts)s tasks of each of %(tenants)s (what the turns gave each: legion.store.
-- turns), each tenant's first in its queue's order, skipping rows another worker is
-- leasing right now (SKIP LOCKED: its next ones instead, or fewer).
UPDATE tasks AS t
SET status = 'running', attempt = t.attempt + 1, lease_owner = %(owner)s,
    lease_expires = legion_now() + %(seconds)s, started_at = %(now)s, finished_at = NULL
FROM (
    SELECT p.id
    FROM unnest(%(tenants)s::text[], %(counts)s::integer[]) AS q(tenant, n)
    CROSS JOIN LATERAL (
        SELECT id FROM tasks
        WHERE status = 'queued' AND agent = %(agent)s AND tenant = q.tenant
          AND not_before <= %(now)s AND NOT isolate AND priority >= %(min_priority)s
          AND (needs IS NULL OR NOT EXISTS (
              SELECT 1 FROM jsonb_each_text(needs) AS n
              WHERE n.value::float8 > coalesce((%(offer)s::jsonb ->> n.key)::float8, 0)))
        ORDER BY priority DESC, id
        LIMIT q.n
        FOR UPDATE SKIP LOCKED
    ) AS p
) AS picked
WHERE t.id = picked.id
RETURNING t.id, t.agent, t.input, t.key, t.session, t.attempt, t.max_attempts, t.priority,
    t.tenant;

-- name: lease_isolated
-- A group of tasks to run apart from all others (taken back from a worker that stopped
-- while running them with others): the first in line and, up to its `isolate_group` (and
-- %(limit)s) in all, others in line that may run in a group that large.
WITH first AS (
    SELECT least(isolate_group, %(limit)s) AS size FROM tasks
    WHERE status = 'queued' AND isolate AND agent = ANY(%(agents)b::text[])
      AND not_before <= %(now)s
      AND (needs IS NULL OR NOT EXISTS (
          SELECT 1 FROM jsonb_each_text(needs) AS n
          WHERE n.value::float8 > coalesce((%(offer)s::jsonb ->> n.key)::float8, 0)))
    ORDER BY priority DESC, id
    LIMIT 1
)
UPDATE tasks AS t
SET status = 'running', attempt = t.attempt + 1, lease_owner = %(owner)s,
    lease_expires = legion_now() + %(seconds)s, started_at = %(now)s, finished_at = NULL
FROM (
    SELECT id FROM tasks
    WHERE status = 'queued' AND isolate AND agent = ANY(%(agents)b::text[])
      AND not_before <= %(now)s
      AND isolate_group >= (SELECT size FROM first)
      AND (needs IS NULL OR NOT EXISTS (
          SELECT 1 FROM jsonb_each_text(needs) AS n
          WHERE n.value::float8 > coalesce((%(offer)s::jsonb ->> n.key)::float8, 0)))
    ORDER BY priority DESC, id
    LIMIT coalesce((SELECT size FROM first), 0)
    FOR UPDATE SKIP LOCKED
) AS picked
WHERE t.id = picked.id
RETURNING t.id, t.agent, t.input, t.key, t.session, t.attempt, t.max_attempts, t.priority,
    t.tenant;
-- name: replayed_steps
SELECT task_id, key, output FROM steps WHERE task_id = ANY(%(ids)b::bigint[]);
-- name: complete
-- Fenced: a completion applies only while its worker still holds lease number `attempt`.
-- Each one that applies also records its attempt, in this statement: a succeeded one on
-- the task's row (0017_succeeded_attempt.sql), any other in `attempts` (0013_attempts.sql).
-- Answers the 1-based positions of the completions that applied.
WITH done AS (
    UPDATE tasks AS t
    SET status = CASE WHEN t.cancel_requested AND c.status IN ('queued', 'waiting') THEN 'cancelled'
                      ELSE c.status END,
        output = c.output,
        error = CASE WHEN c.status = 'succeeded' THEN NULL ELSE coalesce(c.error, t.error) END,
        not_before = c.not_before,
        attempt = t.attempt - c.uncount,
        lease_owner = NULL, lease_expires = NULL,
        finished_at = CASE WHEN t.cancel_requested AND c.status IN ('queued', 'waiting')
                           THEN legion_now() ELSE c.finished_at END,
        usage = coalesce(c.usage, t.usage),
        isolate = CASE WHEN c.status = 'queued' AND c.uncount = 1 THEN t.isolate ELSE false END,
        succeeded_on = CASE WHEN c.outcome = 'succeeded' THEN c.owner END,
        started_at = CASE WHEN c.outcome = 'succeeded' THEN c.started ELSE t.started_at END,
        running = CASE WHEN c.outcome = 'succeeded' THEN c.running END,
        waited = CASE WHEN c.outcome = 'succeeded' THEN c.waited END
    FROM unnest(%(status)b::text[], %(output)b::bytea[], %(error)b::bytea[], %(not_before)b::float8[],
                %(uncount)b::integer[], %(finished_at)b::float8[], %(id)b::bigint[],
                %(attempt)b::integer[], %(owner)b::text[], %(usage)b::bytea[],
                %(outcome)b::text[], %(started)b::float8[], %(ended)b::float8[],
                %(running)b::float8[], %(waited)b::float8[])
         WITH ORDINALITY
         AS c(status, output, error, not_before, uncount, finished_at, id, attempt, owner, usage,
              outcome, started, ended, running, waited, ord)
    WHERE t.id = c.id AND t.attempt = c.attempt AND t.lease_owner = c.owner AND t.status = 'running'
    RETURNING c.ord, c.id, c.attempt, c.owner, c.outcome, c.started, c.ended, c.running, c.waited,
              c.error
), recorded AS (
    INSERT INTO attempts (task_id, attempt, worker, outcome, started_at, finished_at, running,
                          waited, error)
    SELECT id, attempt, owner, outcome, started, ended, running, waited, error FROM done
    WHERE outcome <> 'succeeded'
)
SELECT ord FROM done;
-- name: insert_steps
-- Fenced like a completion: a step is recorded only while its lease holds. Sorted by
-- (task_id, key) by the caller so concurrent batches lock in one order; within a batch the
-- first record of a key wins, as a recorded step never changes. Answers (task_id, false)
-- for the tasks whose lease was lost (their steps were not recorded) and (task_id, true)
-- for those whose cancellation was asked (so it is seen at every step, not only at the
-- heartbeat); the other fenced writes answer the same.
WITH w AS (
    SELECT * FROM unnest(%(task_id)b::bigint[], %(key)b::text[], %(attempt)b::integer[],
                         %(owner)b::text[], %(output)b::bytea[], %(started_at)b::float8[],
                         %(finished_at)b::float8[])
                  AS w(task_id, key, attempt, owner, output, started_at, finished_at)
),
live AS (
    -- The leases these writes come from that still hold, locked (shared) until the
    -- commit: a reclaim or a lease cannot take them in between.
    SELECT t.id, t.cancel_requested FROM tasks AS t
    WHERE t.id = ANY(%(task_id)b::bigint[]) AND t.status = 'running'
      AND (t.id, t.attempt, t.lease_owner) IN (SELECT task_id, attempt, owner FROM w)
    ORDER BY t.id
    FOR SHARE
),
written AS (
    INSERT INTO steps (task_id, key, attempt, output, started_at, finished_at)
    SELECT task_id, key, attempt, output, started_at, finished_at FROM w
    WHERE task_id IN (SELECT id FROM live)
    ON CONFLICT (task_id, key) DO NOTHING
)
SELECT DISTINCT task_id, false FROM w WHERE task_id NOT IN (SELECT id FROM live)
UNION ALL SELECT id, true FROM live WHERE cancel_requested;
-- name: set_memory
-- A write made by a task (task_id not NULL) is fenced by its lease, like a step; answers
-- the tasks whose lease was lost.
WITH w AS (
    SELECT * FROM unnest(%(session)b::text[], %(key)b::text[], %(value)b::bytea[],
                         %(task_id)b::bigint[], %(attempt)b::integer[], %(owner)b::text[])
                  AS w(session, key, value, task_id, attempt, owner)
),
live AS (
    -- The leases these writes come from that still hold, locked (shared) until the
    -- commit: a reclaim or a lease cannot take them in between.
    SELECT t.id, t.cancel_requested FROM tasks AS t
    WHERE t.id = ANY(%(task_id)b::bigint[]) AND t.status = 'running'
      AND (t.id, t.attempt, t.lease_owner) IN (SELECT task_id, attempt, owner FROM w)
    ORDER BY t.id
    FOR SHARE
),
written AS (
    INSERT INTO memory (session, key, value, updated_at)
    SELECT session, key, value, %(now)s FROM w
    WHERE task_id IS NULL OR task_id IN (SELECT id FROM live)
    ON CONFLICT (session, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
)
SELECT DISTINCT task_id, false FROM w
WHERE task_id IS NOT NULL AND task_id NOT IN (SELECT id FROM live)
UNION ALL SELECT id, true FROM live WHERE cancel_requested;
-- name: delete_memory
WITH w AS (
    SELECT * FROM unnest(%(session)b::text[], %(key)b::text[], %(task_id)b::bigint[],
                         %(attempt)b::integer[], %(owner)b::text[])
                  AS w(session, key, task_id, attempt, owner)
),
live AS (
    -- The leases these writes come from that still hold, locked (shared) until the
    -- commit: a reclaim or a lease cannot take them in between.
    SELECT t.id, t.cancel_requested FROM tasks AS t
    WHERE t.id = ANY(%(task_id)b::bigint[]) AND t.status = 'running'
      AND (t.id, t.attempt, t.lease_owner) IN (SELECT task_id, attempt, owner FROM w)
    ORDER BY t.id
    FOR SHARE
),
deleted AS (
    DELETE FROM memory AS m USING w
    WHERE m.session = w.session AND m.key = w.key
      AND (w.task_id IS NULL OR w.task_id IN (SELECT id FROM live))
)
SELECT DISTINCT task_id, false FROM w
WHERE task_id IS NOT NULL AND task_id NOT IN (SELECT id FROM live)
UNION ALL SELECT id, true FROM live WHERE cancel_requested;
-- name: get_memory
SELECT value FROM memory WHERE session = %(session)s AND key = %(key)s;

-- name: lock_memory_key
-- Swaps of one key (ctx.memory.update) one after the other, until the commit: a key with
-- no row yet has no row to lock.
SELECT pg_advisory_xact_lock(hashtext(%(session)s), hashtext(%(key)s));

-- name: get_memory_for_update
SELECT value FROM memory WHERE session = %(session)s AND key = %(key)s FOR UPDATE;

-- name: memory_items
SELECT key, value FROM memory WHERE session = %(session)s ORDER BY key;

-- name: extend_leases
-- Extends only the leases the worker runs (on the database's clock). SKIP LOCKED: a row
-- locked right now is being written, completed, reclaimed or cancelled; held_leases tells
-- whether it is still this worker's. Never waiting on a row lock also means a heartbeat
-- cannot deadlock with a write batch.
UPDATE tasks SET lease_expires = legion_now() + %(seconds)s
WHERE id IN (
    SELECT id FROM tasks
    WHERE id = ANY(%(ids)b::bigint[]) AND lease_owner = %(owner)s AND status = 'running'
    FOR UPDATE SKIP LOCKED
)
RETURNING id, cancel_requested;

-- name: held_leases
-- Which of these tasks are still leased to the worker (read without waiting on locks).
SELECT id, cancel_requested FROM tasks
WHERE id = ANY(%(ids)b::bigint[]) AND lease_owner = %(owner)s AND status = 'running';

-- name: release_unheld
-- After a lease call whose answer was lost: rows leased to the worker that it does not run
-- go back to the queue, their attempt not counted.
UPDATE tasks
SET status = 'queued', attempt = attempt - 1, lease_owner = NULL, lease_expires = NULL
WHERE id IN (
    SELECT id FROM tasks
    WHERE lease_owner = %(owner)s AND status = 'running' AND NOT id = ANY(%(keep)b::bigint[])
    FOR UPDATE SKIP LOCKED
)
RETURNING id;

-- name: now
SELECT legion_now();
-- name: end_stalled_sessions
-- End legion's sessions (this role's, this database's) that have held a transaction open
-- for longer than %(after)s seconds while waiting on their client in the middle of a
-- pipeline: a process paused (SIGSTOP, a frozen VM) or cut off behind a proxy that keeps
-- its socket alive. PostgreSQL's idle_in_transaction_session_timeout does not apply
-- before a pipeline's Sync, and the row locks such a session holds would keep its tasks
-- from being reclaimed for good. The client would have abandoned the call by now.
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND usename = current_user
  AND application_name LIKE 'legion-%%' AND pid <> pg_backend_pid()
  AND state = 'active' AND wait_event = 'ClientRead'
  AND xact_start < clock_timestamp() - make_interval(secs => %(after)s);

-- name: reclaim
-- Leases that expired (on the database's clock), or whose worker is known dead, go back
-- to the queue, each to run apart from all others next (`isolate`) until it ends: in a
-- group of at most half as many as it was lost with (`isolate_group`), so that the one
-- that stops its workers ends up alone. The stop is charged to the task (its own crash
-- count) only if it ran alone as such a suspect already (`isolate`): a first stop may be
-- its worker's own (paused past its lease, killed by an operator, its other leases taken
-- back a pass earlier), and costs no attempt. A task charged on its last attempt is dead.
-- SKIP LOCKED: a locked row is being completed right now. Each attempt ended here gets
-- its row in `attempts` (outcome `lost`) in the same statement.
WITH s AS (
    SELECT id, attempt, lease_owner, started_at, isolate,
           (SELECT count(*) FROM tasks AS o
            WHERE o.lease_owner = x.lease_owner AND o.status = 'running') AS shared
    FROM tasks AS x
    WHERE status = 'running'
      AND ((lease_expires < legion_now() AND lease_owner IS DISTINCT FROM %(keep)s)
           OR lease_owner = ANY(%(dead_owners)b::text[]))
    FOR UPDATE SKIP LOCKED
), r AS (
    SELECT id, attempt, lease_owner, started_at, shared = 1 AND isolate AS alone,
           greatest(1, shared / 2) AS group_size
    FROM s
), u AS (
    UPDATE tasks AS t
    SET status = CASE
            WHEN t.cancel_requested THEN 'cancelled'
            WHEN r.alone AND t.attempt >= t.max_attempts THEN 'dead'
            ELSE 'queued' END,
        error = CASE WHEN t.cancel_requested THEN t.error
                     WHEN r.alone THEN %(crash_error)b ELSE %(error)b END,
        attempt = CASE WHEN t.cancel_requested OR r.alone THEN t.attempt ELSE t.attempt - 1 END,
        crashes = t.crashes + CASE WHEN r.alone THEN 1 ELSE 0 END,
        isolate = NOT t.cancel_requested,
        isolate_group = r.group_size,
        lease_owner = NULL, lease_expires = NULL,
        finished_at = CASE WHEN t.cancel_requested OR (r.alone AND t.attempt >= t.max_attempts)
                           THEN %(now)s END
    FROM r
    WHERE t.id = r.id
    RETURNING t.id, t.status, r.attempt, r.lease_owner, r.started_at, r.alone
), lost AS (
    INSERT INTO attempts (task_id, attempt, worker, outcome, started_at, finished_at, running,
                          waited, error)
    SELECT id, attempt, lease_owner, 'lost', coalesce(started_at, %(now)s), %(now)s,
           greatest(%(now)s - coalesce(started_at, %(now)s), 0), 0,
           CASE WHEN alone THEN %(crash_error)b ELSE %(error)b END
    FROM u
)
SELECT id, status FROM u;
-- name: absolve
-- The queued tasks that run alone because their last attempt was lost on %(owner)s, which
-- lives: they run with others again.
UPDATE tasks AS t SET isolate = false
WHERE t.status = 'queued' AND t.isolate
  AND EXISTS (SELECT 1 FROM attempts AS a
              WHERE a.task_id = t.id AND a.worker = %(owner)s AND a.outcome = 'lost'
                AND a.attempt >= t.attempt)
RETURNING t.id;

-- name: cancel
-- A queued task is cancelled at once; a running one is asked to stop (its worker sees the
-- request at its next heartbeat).
UPDATE tasks
SET status = CASE WHEN status IN ('queued', 'waiting') THEN 'cancelled' ELSE status END,
    finished_at = CASE WHEN status IN ('queued', 'waiting') THEN %(now)s ELSE finished_at END,
    cancel_requested = true
WHERE id = %(id)s AND status IN ('queued', 'running', 'waiting')
RETURNING status;

-- name: cancel_many
-- `cancel` of each of %(ids)s that is queued, running or waiting, and not locked right now.
-- SKIP LOCKED: a cancel of many rows that waited for one a write batch holds, while holding
-- one that batch waits for, would deadlock; the caller cancels those it skipped one by one.
UPDATE tasks
SET status = CASE WHEN status IN ('queued', 'waiting') THEN 'cancelled' ELSE status END,
    finished_at = CASE WHEN status IN ('queued', 'waiting') THEN %(now)s ELSE finished_at END,
    cancel_requested = true
WHERE id IN (
    SELECT id FROM tasks
    WHERE id = ANY(%(ids)b::bigint[]) AND status IN ('queued', 'running', 'waiting')
    FOR UPDATE SKIP LOCKED
)
RETURNING id, status;

-- name: requeue
-- One chunk of a requeue, in id order; the caller goes on after the last id it got.
UPDATE tasks
SET status = 'queued', attempt = 0, not_before = 0, cancel_requested = false, crashes = 0, isolate = false,
    finished_at = NULL, lease_owner = NULL, lease_expires = NULL
WHERE id IN (
    SELECT id FROM tasks
    WHERE status = ANY(%(statuses)b::text[]) AND (%(agent)s::text IS NULL OR agent = %(agent)s)
      AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
      AND id > %(after)s
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE
)
RETURNING id;

-- name: requeue_many
-- These tasks, those that ended dead, failed or cancelled; rows locked in id order.
UPDATE tasks
SET status = 'queued', attempt = 0, not_before = 0, cancel_requested = false, crashes = 0, isolate = false,
    finished_at = NULL, lease_owner = NULL, lease_expires = NULL
WHERE id IN (
    SELECT id FROM tasks
    WHERE id = ANY(%(ids)b::bigint[]) AND status IN ('dead', 'failed', 'cancelled')
    ORDER BY id
    FOR UPDATE
)
RETURNING id;

-- name: status_of
SELECT status FROM tasks WHERE id = %(id)s;

-- name: statuses
-- Where each of these tasks stands (a caller's backstop for results it waits for).
SELECT id, status FROM tasks WHERE id = ANY(%(ids)b::bigint[]);

-- name: get_task
SELECT id, agent, key, session, status, attempt, max_attempts, input, output, error,
       created_at, started_at, finished_at, lease_owner, usage, tenant,
       parent_id, cancel_requested
FROM tasks WHERE id = %(id)s;

-- name: get_tasks
SELECT id, agent, key, session, status, attempt, max_attempts, input, output, error,
       created_at, started_at, finished_at, lease_owner, usage, tenant,
       parent_id, cancel_requested
FROM tasks WHERE id = ANY(%(ids)b::bigint[]);

-- name: find_keys
SELECT id, agent, key, session, status, attempt, max_attempts, input, output, error,
       created_at, started_at, finished_at, lease_owner, usage, tenant,
       parent_id, cancel_requested
FROM tasks WHERE key = ANY(%(keys)b::text[]);

-- name: counts
-- The counts read `task_counts` (0020_counts_table.sql): a row per tenant, status, agent
-- and database session that moved them, zeros included.
SELECT status, sum(n)::bigint FROM task_counts GROUP BY status HAVING sum(n) <> 0;

-- name: count_queued
-- A tenant's backlog, for its limit on queued tasks.
SELECT coalesce(sum(n), 0)::bigint FROM task_counts WHERE tenant = %(tenant)s AND status = 'queued';

-- name: counts_by_tenant
SELECT tenant, status, sum(n)::bigint FROM task_counts GROUP BY tenant, status HAVING sum(n) <> 0;

-- name: counts_by_agent
SELECT agent, status, sum(n)::bigint FROM task_counts GROUP BY agent, status HAVING sum(n) <> 0;

-- name: fold_counts
-- The counts moved by database sessions that have ended, folded into one row each.
SELECT legion_fold_counts();

-- name: recent_errors
SELECT id, agent, key, session, status, attempt, max_attempts, input, output, error,
       created_at, started_at, finished_at, lease_owner, usage, tenant,
       parent_id, cancel_requested
FROM tasks WHERE error IS NOT NULL AND status IN ('failed', 'dead', 'queued')
  AND (CAST(%(tenant)s AS text) IS NULL OR tenant = %(tenant)s)
ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT %(limit)s;

-- name: step_count
SELECT count(*) FROM steps WHERE task_id = %(task_id)s;

-- name: steps_of
SELECT key, attempt, output, started_at, finished_at FROM steps WHERE task_id = %(task_id)s
ORDER BY started_at, key;

-- name: feed_state
-- The feed's horizon (ids below it are final) and the newest event this snapshot sees.
SELECT legion_feed_horizon(), coalesce((SELECT max(id) FROM events), 0);

-- name: events_after
-- :skip_worker leaves out the changes one worker made itself (it reported them already).
SELECT id, task_id, at, status, attempt, worker FROM events
WHERE id > %(after)s AND id < %(horizon)s
  AND (worker IS NULL OR %(skip_worker)s::text IS NULL OR worker <> %(skip_worker)s)
ORDER BY id LIMIT %(limit)s;

-- name: last_event
SELECT coalesce(max(id), 0) FROM events WHERE id < legion_feed_horizon();

-- name: upsert_worker
-- The heartbeat is the database's time.
INSERT INTO workers (id, host, pid, started_at, heartbeat_at, info, boot_id, pid_ns, proc_start)
VALUES (%(id)s, %(host)s, %(pid)s, legion_now(), legion_now(), %(info)b, %(boot_id)s,
        %(pid_ns)s, %(proc_start)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, info = excluded.info;
-- name: delete_worker
DELETE FROM workers WHERE id = %(id)s;

-- name: workers
SELECT id, host, pid, started_at, heartbeat_at, info, boot_id, pid_ns, proc_start
FROM workers ORDER BY started_at;
-- name: claim_capacity
INSERT INTO capacity_claims (route, worker, demand, at)
VALUES (%(route)s, %(worker)s, %(demand)s, %(now)s)
ON CONFLICT (route, worker) DO UPDATE SET demand = excluded.demand, at = excluded.at;

-- name: capacity_claims
SELECT count(*), coalesce(sum(demand), 0),
       (SELECT coalesce(max(until), 0) FROM capacity_backoff WHERE route = %(route)s)
FROM capacity_claims WHERE route = %(route)s AND at >= %(since)s;

-- name: forget_capacity_claims
DELETE FROM capacity_claims WHERE at < %(before)s;

-- name: signal_backoff
INSERT INTO capacity_backoff (route, until) VALUES (%(route)s, %(until)s)
ON CONFLICT (route) DO UPDATE SET until = greatest(capacity_backoff.until, excluded.until);

-- name: list_tasks
-- The HTTP API's task list, newest first. A NULL filter matches everything; %(before)s is
-- the page cursor (only ids below it). Inputs and outputs are left out (NULL): a page shows
-- neither, and they can be large.
SELECT id, agent, key, session, status, attempt, max_attempts, NULL::bytea, NULL::bytea, error,
       created_at, started_at, finished_at, lease_owner, usage, tenant,
       parent_id, cancel_requested
FROM tasks
WHERE id < coalesce(%(before)s::bigint, 9223372036854775807)
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s::text)
  AND (%(statuses)b::text[] IS NULL OR status = ANY(%(statuses)b::text[]))
  AND (%(agent)s::text IS NULL OR agent = %(agent)s::text)
  AND (%(created_from)s::float8 IS NULL OR created_at >= %(created_from)s::float8)
  AND (%(created_to)s::float8 IS NULL OR created_at < %(created_to)s::float8)
  AND (%(parent)s::bigint IS NULL OR parent_id = %(parent)s::bigint)
ORDER BY id DESC LIMIT %(limit)s;

-- name: event_details_after
-- The event feed with what the dashboard and metrics need of each task; like events_after,
-- only events below the feed's horizon, which are final (see 0001_initial.sql).
SELECT e.id, e.task_id, e.at, e.status, e.attempt, e.worker,
       t.agent, t.started_at, t.finished_at, t.usage, t.tenant
FROM events AS e LEFT JOIN tasks AS t ON t.id = e.task_id
WHERE e.id > %(after)s AND e.id < %(horizon)s
ORDER BY e.id LIMIT %(limit)s;

-- name: insert_api_key
INSERT INTO api_keys (id, name, salt, digest, created_at, tenant, scope)
VALUES (%(id)s, %(name)s, %(salt)b, %(digest)b, %(created_at)s, %(tenant)s, %(scope)s);

-- name: get_api_key
SELECT id, name, salt, digest, created_at, revoked_at, tenant, scope FROM api_keys WHERE id = %(id)s;

-- name: api_keys
SELECT id, name, salt, digest, created_at, revoked_at, tenant, scope FROM api_keys ORDER BY created_at, id;

-- name: revoke_api_key
-- Idempotent: a key revoked twice keeps its first revocation time.
UPDATE api_keys SET revoked_at = coalesce(revoked_at, %(now)s) WHERE id = %(id)s;

-- name: insert_diagnostics
-- Fenced by the attempt's lease, like a step.
WITH w AS (
    SELECT * FROM unnest(%(task_id)b::bigint[], %(attempt)b::integer[], %(owner)b::text[],
                         %(agent)b::text[], %(kind)b::text[], %(data)b::bytea[])
                  AS w(task_id, attempt, owner, agent, kind, data)
),
live AS (
    -- The leases these writes come from that still hold, locked (shared) until the
    -- commit: a reclaim or a lease cannot take them in between.
    SELECT t.id, t.cancel_requested FROM tasks AS t
    WHERE t.id = ANY(%(task_id)b::bigint[]) AND t.status = 'running'
      AND (t.id, t.attempt, t.lease_owner) IN (SELECT task_id, attempt, owner FROM w)
    ORDER BY t.id
    FOR SHARE
),
written AS (
    INSERT INTO diagnostics (task_id, attempt, agent, kind, data)
    SELECT task_id, attempt, agent, kind, data FROM w WHERE task_id IN (SELECT id FROM live)
    ON CONFLICT DO NOTHING
)
SELECT DISTINCT task_id, false FROM w WHERE task_id NOT IN (SELECT id FROM live)
UNION ALL SELECT id, true FROM live WHERE cancel_requested;
-- name: diagnostics
SELECT task_id, attempt, agent, data FROM diagnostics
WHERE (%(task_id)s::bigint IS NULL OR task_id = %(task_id)s)
  AND (%(agent)s::text IS NULL OR agent = %(agent)s)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s)
ORDER BY id DESC LIMIT %(limit)s;

-- name: backlog
-- Tasks ready to run now and when the oldest of them was submitted (the scaling policy):
-- of every agent, or of those named.
SELECT count(*), min(created_at) FROM tasks WHERE status = 'queued' AND not_before <= %(now)s
  AND (%(agents)s::text[] IS NULL OR agent = ANY(%(agents)s::text[]));

-- name: upsert_autoscaler
INSERT INTO autoscalers (id, host, pid, at, desired, running, minimum, maximum, reason)
VALUES (%(id)s, %(host)s, %(pid)s, %(at)s, %(desired)s, %(running)s, %(minimum)s,
        %(maximum)s, %(reason)s)
ON CONFLICT (id) DO UPDATE SET at = excluded.at, desired = excluded.desired,
    running = excluded.running, minimum = excluded.minimum, maximum = excluded.maximum,
    reason = excluded.reason;

-- name: delete_autoscaler
DELETE FROM autoscalers WHERE id = %(id)s;

-- name: autoscalers
SELECT id, host, pid, at, desired, running, minimum, maximum, reason FROM autoscalers
WHERE at >= %(since)s ORDER BY id;

-- name: purge_tasks
-- Up to %(limit)s ended tasks (of %(statuses)s, and of %(agent)s if given) that ended
-- before %(before)s, oldest first, except a child whose parent is there and has not
-- succeeded (a parent reads its children's ends when it wakes; a failed, dead or cancelled
-- one may be retried), with what hangs off them; the counts follow by the delete trigger
-- (0020_counts_table.sql). Scanned in id order from after %(after)s (where the last call
-- stopped). A locked row is being written: left for a later purge.
WITH gone AS (
    DELETE FROM tasks WHERE id IN (
        SELECT t.id FROM tasks AS t
        WHERE t.id > %(after)s
          AND t.status = ANY(%(statuses)b::text[])
          AND t.finished_at < %(before)s
          AND (%(agent)s::text IS NULL OR t.agent = %(agent)s)
          AND (%(tenant)s::text IS NULL OR t.tenant = %(tenant)s)
          AND (t.parent_id IS NULL OR NOT EXISTS (
              SELECT 1 FROM tasks AS p
              WHERE p.id = t.parent_id AND p.status <> 'succeeded'))
        ORDER BY t.id LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, tenant, session, agent, usage
), spent AS (
    -- What they had spent on LLM calls: budgets count it still (legion.run.spending).
    SELECT agent, tenant,
           coalesce((u ->> 'llm_calls')::bigint, 0) AS calls,
           coalesce((u ->> 'prompt_tokens')::bigint, 0)
               + coalesce((u ->> 'completion_tokens')::bigint, 0) AS tokens,
           coalesce((u ->> 'cost_usd')::float8, 0) AS cost
    FROM (SELECT agent, tenant, convert_from(usage, 'UTF8')::jsonb AS u
          FROM gone WHERE usage IS NOT NULL) AS used
), spend_kept AS (
    INSERT INTO purged_spend AS p (scope, name, calls, tokens, cost)
    SELECT 'agent', agent, sum(calls), sum(tokens), sum(cost) FROM spent GROUP BY agent
    UNION ALL
    SELECT 'tenant', tenant, sum(calls), sum(tokens), sum(cost) FROM spent GROUP BY tenant
    ON CONFLICT (scope, name) DO UPDATE SET
        calls = p.calls + excluded.calls, tokens = p.tokens + excluded.tokens,
        cost = p.cost + excluded.cost
), steps_gone AS (
    DELETE FROM steps WHERE task_id IN (SELECT id FROM gone)
), attempts_gone AS (
    DELETE FROM attempts WHERE task_id IN (SELECT id FROM gone)
), diagnostics_gone AS (
    DELETE FROM diagnostics WHERE task_id IN (SELECT id FROM gone)
), signals_gone AS (
    DELETE FROM signals WHERE task_id IN (SELECT id FROM gone)
), batch_calls_gone AS (
    DELETE FROM llm_batch_calls WHERE task_id IN (SELECT id FROM gone)
), own AS (
    -- The sessions of those that ran without one: their own (`task-<id>`, within their
    -- tenant: legion.store.tenancy.scoped_key), which no other task reads.
    SELECT CASE WHEN tenant = 'default' THEN 'task-' || id
                ELSE chr(31) || tenant || chr(31) || 'task-' || id END AS session
    FROM gone WHERE session IS NULL
), memory_gone AS (
    DELETE FROM memory WHERE session IN (SELECT session FROM own)
)
-- How many went, their own sessions (their vectors go by them: legion purge) and the last.
SELECT (SELECT count(*) FROM gone), ARRAY(SELECT session FROM own),
       (SELECT coalesce(max(id), 0) FROM gone);

-- name: purged_spend
SELECT calls, tokens, cost FROM purged_spend WHERE scope = %(scope)s AND name = %(name)s;

-- name: purgeable
SELECT count(*) FROM tasks AS t
WHERE t.status = ANY(%(statuses)b::text[])
  AND t.finished_at < %(before)s
  AND (%(agent)s::text IS NULL OR t.agent = %(agent)s)
  AND (%(tenant)s::text IS NULL OR t.tenant = %(tenant)s)
  AND (t.parent_id IS NULL OR NOT EXISTS (
      SELECT 1 FROM tasks AS p
      WHERE p.id = t.parent_id AND p.status <> 'succeeded'));

-- name: purge_events
-- Change-feed rows older than %(before)s of tasks that are gone (purged), after
-- %(feed_after)s: a reader following the feed behind them (a caller waiting for results,
-- paused) still finds the rows of every task it can wait for.
DELETE FROM events WHERE id IN (
    SELECT e.id FROM events AS e
    WHERE e.id > %(feed_after)s AND e.at < %(before)s
      AND NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.id = e.task_id)
    ORDER BY e.id LIMIT %(limit)s
)
RETURNING id;

-- name: live_sessions
-- The sessions of the queued, running and waiting tasks (a task without one has its own,
-- `task-<id>`, stored as legion.store.tenancy.scoped_key keeps it): `legion purge
-- --sessions` keeps their memory.
SELECT DISTINCT coalesce(session, CASE WHEN tenant = 'default' THEN 'task-' || id::text
                                       ELSE chr(31) || tenant || chr(31) || 'task-' || id::text END)
FROM tasks WHERE status IN ('queued', 'running', 'waiting');

-- name: idle_sessions
-- Sessions none of whose memory was written since %(before)s, in name order after
-- %(after)s.
SELECT session FROM memory WHERE session > %(after)s
GROUP BY session HAVING max(updated_at) < %(before)s
ORDER BY session LIMIT %(limit)s;

-- name: drop_memory
-- The memory of the sessions in %(sessions)s that none of whose keys was written since
-- %(before)s (a write in between keeps the session whole).
DELETE FROM memory
WHERE session = ANY(%(sessions)s::text[])
  AND session NOT IN (SELECT session FROM memory
                      WHERE session = ANY(%(sessions)s::text[]) AND updated_at >= %(before)s);

-- name: cancels_asked
-- The tasks a worker runs whose cancellation was asked (tasks_cancel_asked).
SELECT id FROM tasks WHERE lease_owner = %(owner)s AND cancel_requested AND status = 'running';
