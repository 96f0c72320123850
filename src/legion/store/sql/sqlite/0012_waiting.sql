-- legion schema, version 12 (SQLite): durable waiting.
--
-- A task suspended at a wait (ctx.wait_for, ctx.sleep, ctx.approval, ctx.spawn, ctx.map)
-- is `waiting`: it holds no lease, and is queued again as soon as what it waits for holds:
-- the `wait_count`-th signal named `wait_event` arrived, at most `wait_children` of its
-- child tasks are unfinished, or `wake_at` passed. `wait_info` is JSON to show while it
-- waits (an approval's prompt). `parent_id` links a child task to the task that spawned it.
ALTER TABLE tasks ADD COLUMN parent_id INTEGER;
ALTER TABLE tasks ADD COLUMN wait_event TEXT;
ALTER TABLE tasks ADD COLUMN wait_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN wait_children INTEGER;
ALTER TABLE tasks ADD COLUMN wake_at REAL;
ALTER TABLE tasks ADD COLUMN wait_info BLOB;
CREATE INDEX tasks_wake ON tasks (wake_at) WHERE status = 'waiting' AND wake_at IS NOT NULL;
CREATE INDEX tasks_children ON tasks (parent_id, status) WHERE parent_id IS NOT NULL;

-- Signals sent to tasks, kept whether or not the task waits yet (no lost wake-up): the
-- n-th wait for an event receives the n-th signal of that name.
CREATE TABLE signals (
    id         INTEGER PRIMARY KEY,
    task_id    INTEGER NOT NULL,
    event      TEXT    NOT NULL,
    data       BLOB    NOT NULL,
    created_at REAL    NOT NULL
);
CREATE INDEX signals_task ON signals (task_id, event, id);

-- Schedules: a cron expression (UTC) that submits one task of `agent` per tick. Each tick
-- is claimed once, by moving `next_tick` forward (compare and set), and its task is
-- submitted in the same transaction with the idempotency key schedule:<name>:<tick>.
CREATE TABLE schedules (
    name       TEXT PRIMARY KEY,
    cron       TEXT NOT NULL,
    agent      TEXT NOT NULL,
    input      BLOB NOT NULL,
    max_attempts INTEGER NOT NULL,
    next_tick  REAL NOT NULL,
    created_at REAL NOT NULL
);
