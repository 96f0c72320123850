-- legion schema, version 20 (PostgreSQL): the counts by status kept in a table of their own.
--
-- The index on (tenant, status, agent) answered the counts by status, by agent and by
-- tenant, and a tenant's backlog, by reading an entry per task: 40-110 ms a read at a
-- million tasks, on every submit of a tenant with a queue limit and every refresh of the
-- dashboard. And a status change is never a heap-only update (status is indexed), so
-- each one added an entry to that index: ~9 of the ~70 us of the server's time a no-op
-- task took (pg_stat_statements, benchmarks/README.md).
--
-- `task_counts` holds a count per (tenant, status, agent), moved by statement triggers on
-- `tasks` in the statement's own transaction: any statement that adds tasks, changes
-- their status or deletes them moves the counts (legion's own and an operator's alike).
-- Each database session moves rows of its own (`shard` = its backend's pid), so
-- concurrent transactions never wait on each other's counts, nor deadlock over them;
-- a read sums the shards. `legion_fold_counts` (called with the reaper's reclaim) folds
-- the rows of sessions that have ended into shard 0. Zero rows may stay.
CREATE TABLE task_counts (
    tenant text    NOT NULL,
    status text    NOT NULL,
    agent  text    NOT NULL,
    shard  integer NOT NULL,
    n      bigint  NOT NULL,
    PRIMARY KEY (tenant, status, agent, shard)
);

-- No writer may change a status between the first count and the triggers.
LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO task_counts (tenant, status, agent, shard, n)
SELECT tenant, status, agent, 0, count(*) FROM tasks GROUP BY tenant, status, agent;

-- The change feed's statement trigger (0018_statement_events.sql) moves the counts too:
-- every row the statement updated counts +1 where it is now and -1 where it was, from
-- the two transition tables apart (rows whose status stayed cancel out), without the
-- join the feed needs (a lease logs no event: its rows are filtered out before the join).
CREATE OR REPLACE FUNCTION legion_task_statuses_changed() RETURNS trigger
LANGUAGE plpgsql
SET enable_nestloop = off
SET enable_mergejoin = off
AS $$
DECLARE
    n integer := coalesce(nullif(current_setting('legion.events_in_xact', true), ''), '0')::integer;
    added integer;
    requeued boolean;
BEGIN
    WITH counted AS (
        INSERT INTO task_counts AS c (tenant, status, agent, shard, n)
        SELECT tenant, status, agent, pg_backend_pid(), sum(moved)
        FROM (SELECT tenant, status, agent, 1 AS moved FROM changed_after
              UNION ALL
              SELECT tenant, status, agent, -1 FROM changed_before) AS moves
        GROUP BY tenant, status, agent
        HAVING sum(moved) <> 0
        ORDER BY tenant, status, agent
        ON CONFLICT (tenant, status, agent, shard) DO UPDATE SET n = c.n + excluded.n
    ), logged AS (
        INSERT INTO events (id, task_id, at, status, attempt, worker)
        SELECT (pg_current_xact_id()::text::bigint << 20)
                   | (n + row_number() OVER (ORDER BY after.id) - 1),
               after.id, date_part('epoch', clock_timestamp()), after.status, after.attempt,
               before.lease_owner
        FROM changed_after AS after JOIN changed_before AS before ON before.id = after.id
        WHERE after.status IS DISTINCT FROM before.status AND after.status <> 'running'
        RETURNING status
    )
    SELECT count(*), coalesce(bool_or(status = 'queued'), false) INTO added, requeued
    FROM logged;
    IF added = 0 THEN
        RETURN NULL;
    END IF;
    IF n + added > 1048576 THEN
        RAISE EXCEPTION 'legion: more than 1048576 task status changes in one transaction';
    END IF;
    PERFORM set_config('legion.events_in_xact', (n + added)::text, true);
    IF requeued THEN
        PERFORM pg_notify(legion_work_channel(TG_TABLE_SCHEMA), '');
    END IF;
    RETURN NULL;
END
$$;

-- Tasks added or deleted (an operator's purge: legion deletes none), counted from the
-- statement's transition table, named the same in both triggers.
CREATE FUNCTION legion_tasks_added_or_deleted() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO task_counts AS c (tenant, status, agent, shard, n)
    SELECT tenant, status, agent, pg_backend_pid(),
           CASE TG_OP WHEN 'DELETE' THEN -count(*) ELSE count(*) END
    FROM tasks_changed
    GROUP BY tenant, status, agent
    ORDER BY tenant, status, agent
    ON CONFLICT (tenant, status, agent, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_added AFTER INSERT ON tasks
REFERENCING NEW TABLE AS tasks_changed
FOR EACH STATEMENT EXECUTE FUNCTION legion_tasks_added_or_deleted();

CREATE TRIGGER tasks_deleted AFTER DELETE ON tasks
REFERENCING OLD TABLE AS tasks_changed
FOR EACH STATEMENT EXECUTE FUNCTION legion_tasks_added_or_deleted();

CREATE FUNCTION legion_tasks_truncated() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    DELETE FROM task_counts;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_truncated AFTER TRUNCATE ON tasks
FOR EACH STATEMENT EXECUTE FUNCTION legion_tasks_truncated();

-- The rows of sessions that have ended, folded into shard 0; one caller at a time (the
-- others skip: the next reclaim folds what they would have). It never waits: a row
-- locked now is a live session's (a new session that got an ended one's pid), folded
-- once that one ends too. Answers how many rows it folded.
CREATE FUNCTION legion_fold_counts() RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    folded integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('legion_fold_counts'), hashtext(current_schema())) THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        DELETE FROM task_counts
        WHERE (tenant, status, agent, shard) IN (
            SELECT tenant, status, agent, shard FROM task_counts
            WHERE shard <> 0
              AND shard NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)
            FOR UPDATE SKIP LOCKED)
        RETURNING tenant, status, agent, n
    ), kept AS (
        INSERT INTO task_counts AS c (tenant, status, agent, shard, n)
        SELECT tenant, status, agent, 0, sum(n) FROM gone
        GROUP BY tenant, status, agent
        ORDER BY tenant, status, agent
        ON CONFLICT (tenant, status, agent, shard) DO UPDATE SET n = c.n + excluded.n
    )
    SELECT count(*) INTO folded FROM gone;
    RETURN folded;
END
$$;

DROP INDEX tasks_counts;
