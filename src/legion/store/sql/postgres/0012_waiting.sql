-- legion schema, version 12 (PostgreSQL): durable waiting.
--
-- A task suspended at a wait (ctx.wait_for, ctx.sleep, ctx.approval, ctx.spawn, ctx.map)
-- is `waiting`: it holds no lease, and is queued again as soon as what it waits for holds:
-- the `wait_count`-th signal named `wait_event` arrived, at most `wait_children` of its
-- child tasks are unfinished, or `wake_at` passed. `wait_info` is JSON to show while it
-- waits (an approval's prompt). `parent_id` links a child task to the task that spawned it.
ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled', 'waiting'));
ALTER TABLE tasks ADD COLUMN parent_id bigint;
ALTER TABLE tasks ADD COLUMN wait_event text;
ALTER TABLE tasks ADD COLUMN wait_count integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN wait_children integer;
ALTER TABLE tasks ADD COLUMN wake_at double precision;
ALTER TABLE tasks ADD COLUMN wait_info bytea;
CREATE INDEX tasks_wake ON tasks (wake_at) WHERE status = 'waiting' AND wake_at IS NOT NULL;
CREATE INDEX tasks_children ON tasks (parent_id, status) WHERE parent_id IS NOT NULL;

-- Signals sent to tasks, kept whether or not the task waits yet (no lost wake-up): the
-- n-th wait for an event receives the n-th signal of that name.
CREATE TABLE signals (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id    bigint           NOT NULL,
    event      text             NOT NULL,
    data       bytea            NOT NULL,
    created_at double precision NOT NULL
);
CREATE INDEX signals_task ON signals (task_id, event, id);

-- Schedules: a cron expression (UTC) that submits one task of `agent` per tick. Each tick
-- is claimed once, by moving `next_tick` forward (compare and set), and its task is
-- submitted in the same transaction with the idempotency key schedule:<name>:<tick>.
CREATE TABLE schedules (
    name         text PRIMARY KEY,
    cron         text             NOT NULL,
    agent        text             NOT NULL,
    input        bytea            NOT NULL,
    max_attempts integer          NOT NULL,
    next_tick    double precision NOT NULL,
    created_at   double precision NOT NULL
);
