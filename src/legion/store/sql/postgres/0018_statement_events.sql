-- legion schema, version 18 (PostgreSQL): the change feed is written once per statement.
--
-- A row trigger (0001_initial.sql) logged each status change with a PL/pgSQL call, a
-- set_config and an INSERT of its own: about a quarter of what a completion cost the
-- server. This statement trigger logs all the changes of one UPDATE with one INSERT,
-- from the statement's transition tables; ids are numbered within the transaction as
-- before, in task order within a statement. A transition table has no statistics, so the
-- planner would join the two with a nested loop (quadratic in the rows updated); the
-- function turns that off for its own queries.
DROP TRIGGER tasks_status_event ON tasks;
DROP FUNCTION legion_task_status_changed();

CREATE FUNCTION legion_task_statuses_changed() RETURNS trigger
LANGUAGE plpgsql
SET enable_nestloop = off
SET enable_mergejoin = off
AS $$
DECLARE
    n integer := coalesce(nullif(current_setting('legion.events_in_xact', true), ''), '0')::integer;
    added integer;
    requeued boolean;
BEGIN
    WITH logged AS (
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

CREATE TRIGGER tasks_status_events AFTER UPDATE ON tasks
REFERENCING OLD TABLE AS changed_before NEW TABLE AS changed_after
FOR EACH STATEMENT EXECUTE FUNCTION legion_task_statuses_changed();
