-- legion schema, version 20 (SQLite): a task's id and a change's id are never given twice.
--
-- Without AUTOINCREMENT SQLite gives a new row the largest id there plus one, so once
-- `legion purge` had deleted the newest tasks (an idle store), the next task took the id
-- of a purged one: it read that task's memory (`task-<id>`, kept by a purge), a client
-- holding the old id got the new task, and the change feed's next row took an id that a
-- reader following the feed had read past (its end never reached a caller waiting for
-- it). The tables are rebuilt with AUTOINCREMENT, which counts from the largest id ever
-- given (PostgreSQL's identity columns never gave an id twice).
CREATE TABLE tasks_next (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    agent            TEXT    NOT NULL,
    input            BLOB    NOT NULL,
    key              TEXT    UNIQUE,
    session          TEXT,
    priority         INTEGER NOT NULL DEFAULT 0,
    status           TEXT    NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    not_before       REAL    NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires    REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    output           BLOB,
    error            BLOB,
    created_at       REAL    NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    usage            BLOB,
    crashes          INTEGER NOT NULL DEFAULT 0,
    isolate          INTEGER NOT NULL DEFAULT 0,
    freezes          INTEGER NOT NULL DEFAULT 0,
    tenant           TEXT    NOT NULL DEFAULT 'default',
    input_hash       BLOB,
    needs            TEXT,
    parent_id        INTEGER,
    wait_event       TEXT,
    wait_count       INTEGER NOT NULL DEFAULT 0,
    wait_children    INTEGER,
    wake_at          REAL,
    wait_info        BLOB,
    succeeded_on     TEXT,
    running          REAL,
    waited           REAL,
    isolate_group    INTEGER NOT NULL DEFAULT 1
);
INSERT INTO tasks_next (
    id, agent, input, key, session, priority, status, attempt, max_attempts, not_before,
    lease_owner, lease_expires, cancel_requested, output, error, created_at, started_at,
    finished_at, usage, crashes, isolate, freezes, tenant, input_hash, needs, parent_id,
    wait_event, wait_count, wait_children, wake_at, wait_info, succeeded_on, running,
    waited, isolate_group
)
SELECT
    id, agent, input, key, session, priority, status, attempt, max_attempts, not_before,
    lease_owner, lease_expires, cancel_requested, output, error, created_at, started_at,
    finished_at, usage, crashes, isolate, freezes, tenant, input_hash, needs, parent_id,
    wait_event, wait_count, wait_children, wake_at, wait_info, succeeded_on, running,
    waited, isolate_group
FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_next RENAME TO tasks;
CREATE INDEX tasks_queue ON tasks (agent, priority DESC, id) WHERE status = 'queued';
CREATE INDEX tasks_leases ON tasks (lease_owner, lease_expires) WHERE status = 'running';
CREATE INDEX tasks_isolated ON tasks (agent, priority DESC, id) WHERE status = 'queued' AND isolate;
CREATE INDEX tasks_tenant ON tasks (tenant, id);
CREATE INDEX tasks_wake ON tasks (wake_at) WHERE status = 'waiting' AND wake_at IS NOT NULL;
CREATE INDEX tasks_children ON tasks (parent_id, status) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_errors ON tasks (finished_at) WHERE error IS NOT NULL;
CREATE INDEX tasks_waiting ON tasks (id) WHERE status = 'waiting';
-- The count goes on from the largest id a task is known to have had, not only from those
-- still there: an earlier purge of the newest tasks left their change-feed rows and the
-- memory of their own sessions (`task-<id>`, `\x1f<tenant>\x1ftask-<id>`).
INSERT INTO sqlite_sequence (name, seq)
SELECT 'tasks', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'tasks');
UPDATE sqlite_sequence SET seq = max(seq, (
    SELECT coalesce(max(n), 0) FROM (
        SELECT max(id) AS n FROM tasks
        UNION ALL SELECT max(task_id) FROM events
        UNION ALL SELECT max(CAST(substr(session, instr(session, 'task-') + 5) AS INTEGER))
        FROM memory
        WHERE session GLOB 'task-[0-9]*' OR session GLOB char(31) || '*' || char(31) || 'task-[0-9]*'
    )
)) WHERE name = 'tasks';

CREATE TABLE events_next (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id INTEGER NOT NULL,
    at      REAL    NOT NULL,
    status  TEXT    NOT NULL,
    attempt INTEGER NOT NULL,
    worker  TEXT                -- the worker whose lease this change ended, if any
);
INSERT INTO events_next (id, task_id, at, status, attempt, worker)
SELECT id, task_id, at, status, attempt, worker FROM events;
DROP TABLE events;
ALTER TABLE events_next RENAME TO events;
