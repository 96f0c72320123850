-- legion schema, version 1 (PostgreSQL).
-- Times are seconds since the epoch (double precision), as in the SQLite store. JSON payloads
-- are stored byte for byte as bytea holding UTF-8 JSON; read one with
-- convert_from(output, 'UTF8')::jsonb. Tables live in the connection's current schema.

CREATE TABLE tasks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent            text             NOT NULL,
    input            bytea            NOT NULL,
    key              text             UNIQUE,               -- idempotency key; submitting it twice returns the first task
    session          text,                                  -- ctx.memory scope
    priority         integer          NOT NULL DEFAULT 0,   -- higher runs first
    status           text             NOT NULL
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')),
    attempt          integer          NOT NULL DEFAULT 0,   -- attempts started; the fencing token of the current lease
    max_attempts     integer          NOT NULL,
    not_before       double precision NOT NULL DEFAULT 0,   -- a queued task waits until then (retry backoff)
    lease_owner      text,
    lease_expires    double precision,
    cancel_requested boolean          NOT NULL DEFAULT false,
    output           bytea,
    error            bytea,                                 -- {"type", "message", "traceback"} of the last failure
    created_at       double precision NOT NULL,
    started_at       double precision,                      -- start of the latest attempt
    finished_at      double precision
);

-- The queue: only queued rows are indexed, in the order workers take them.
CREATE INDEX tasks_queue ON tasks (agent, priority DESC, id) WHERE status = 'queued';
-- Leases held (a task has a lease owner exactly while it runs), for heartbeats and for
-- reclaiming dead owners' and expired leases.
CREATE INDEX tasks_leases ON tasks (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX tasks_expiry ON tasks (lease_expires) WHERE lease_expires IS NOT NULL;
CREATE INDEX tasks_status ON tasks (status, agent);

-- One row per completed step; a task that runs again replays these instead of re-running them.
CREATE TABLE steps (
    task_id     bigint           NOT NULL,
    key         text             NOT NULL,
    attempt     integer          NOT NULL,
    output      bytea            NOT NULL,
    started_at  double precision NOT NULL,
    finished_at double precision NOT NULL,
    PRIMARY KEY (task_id, key)
);

-- Session memory: state an agent keeps between tasks of one session.
CREATE TABLE memory (
    session    text             NOT NULL,
    key        text             NOT NULL,
    value      bytea            NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (session, key)
);

-- Status changes of tasks: the change feed that result waiters and progress displays follow.
-- A task entering `running` is not logged (its started_at says when), as in the SQLite store.
--
-- Ids must follow commit order, or a follower reading `id > cursor` could pass over an event
-- whose transaction commits late. A sequence cannot give that, so an event's id is
--     (id of the writing top-level transaction << 20) | (its number within that transaction)
-- and the feed hands out only ids below legion_feed_horizon(): events of transactions older
-- than every transaction still running, which are all final. Any event that becomes visible
-- later belongs to a transaction at or above the horizon, so its id is above every id handed
-- out so far. One transaction may record at most 2^20 status changes; ids stay below 2^63
-- until the cluster has used 2^43 transaction ids.
CREATE TABLE events (
    id      bigint           PRIMARY KEY,
    task_id bigint           NOT NULL,
    at      double precision NOT NULL,
    status  text             NOT NULL,
    attempt integer          NOT NULL,
    worker  text                        -- the worker whose lease this change ended, if any
);

-- The first event id that may still belong to an unfinished transaction.
CREATE FUNCTION legion_feed_horizon() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20 $$;

-- The LISTEN/NOTIFY channel that tells idle workers new work may be ready in `schema`
-- (a channel name is at most 63 bytes).
CREATE FUNCTION legion_work_channel(schema text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT 'legion.work.' || CASE WHEN octet_length(schema) <= 51 THEN schema
                                  ELSE left(md5(schema), 16) END
$$;

-- Logs one status change, numbering it within its transaction (a transaction-local setting
-- counts), and wakes idle workers when a task becomes ready again (a retry, a released or
-- reclaimed lease, a requeue). NOTIFY is sent at commit, once per transaction and channel.
CREATE FUNCTION legion_task_status_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    n integer := coalesce(nullif(current_setting('legion.events_in_xact', true), ''), '0')::integer;
BEGIN
    IF n >= 1048576 THEN
        RAISE EXCEPTION 'legion: more than 1048576 task status changes in one transaction';
    END IF;
    PERFORM set_config('legion.events_in_xact', (n + 1)::text, true);
    INSERT INTO events (id, task_id, at, status, attempt, worker)
    VALUES ((pg_current_xact_id()::text::bigint << 20) | n, NEW.id,
            date_part('epoch', clock_timestamp()), NEW.status, NEW.attempt, OLD.lease_owner);
    IF NEW.status = 'queued' THEN
        PERFORM pg_notify(legion_work_channel(TG_TABLE_SCHEMA), '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_status_event AFTER UPDATE OF status ON tasks
FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status AND NEW.status <> 'running')
EXECUTE FUNCTION legion_task_status_changed();

-- New tasks wake idle workers too.
CREATE FUNCTION legion_tasks_submitted() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify(legion_work_channel(TG_TABLE_SCHEMA), '');
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_submitted AFTER INSERT ON tasks
FOR EACH STATEMENT EXECUTE FUNCTION legion_tasks_submitted();

-- Live workers, for load reports and for telling a dead worker's leases from a live one's.
CREATE TABLE workers (
    id           text             PRIMARY KEY,
    host         text             NOT NULL,
    pid          integer          NOT NULL,
    started_at   double precision NOT NULL,
    heartbeat_at double precision NOT NULL,
    info         bytea            NOT NULL DEFAULT '\x7b7d'   -- '{}'
);
