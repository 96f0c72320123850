-- legion schema, version 1 (SQLite).
-- Times are seconds since the epoch (REAL). JSON payloads are stored as BLOBs of UTF-8 JSON.

CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY,
    agent            TEXT    NOT NULL,
    input            BLOB    NOT NULL,
    key              TEXT    UNIQUE,              -- idempotency key; submitting it twice returns the first task
    session          TEXT,                        -- ctx.memory scope
    priority         INTEGER NOT NULL DEFAULT 0,  -- higher runs first
    status           TEXT    NOT NULL,            -- queued | running | succeeded | failed | dead | cancelled
    attempt          INTEGER NOT NULL DEFAULT 0,  -- attempts started; the fencing token of the current lease
    max_attempts     INTEGER NOT NULL,
    not_before       REAL    NOT NULL DEFAULT 0,  -- a queued task waits until then (retry backoff)
    lease_owner      TEXT,
    lease_expires    REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    output           BLOB,
    error            BLOB,                        -- {"type", "message", "traceback"} of the last failure
    created_at       REAL    NOT NULL,
    started_at       REAL,                        -- start of the latest attempt
    finished_at      REAL
);

-- The queue: only queued rows are indexed, in the order workers take them.
CREATE INDEX tasks_queue ON tasks (agent, priority DESC, id) WHERE status = 'queued';
-- Leases held, for heartbeats and reclaiming.
CREATE INDEX tasks_leases ON tasks (lease_owner, lease_expires) WHERE status = 'running';
CREATE INDEX tasks_status ON tasks (status, agent);

-- One row per completed step; a task that runs again replays these instead of re-running them.
CREATE TABLE steps (
    task_id     INTEGER NOT NULL,
    key         TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    output      BLOB    NOT NULL,
    started_at  REAL    NOT NULL,
    finished_at REAL    NOT NULL,
    PRIMARY KEY (task_id, key)
) WITHOUT ROWID;

-- Session memory: state an agent keeps between tasks of one session.
CREATE TABLE memory (
    session    TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (session, key)
) WITHOUT ROWID;

-- Status changes of tasks, in commit order: the change feed that result waiters and
-- progress displays follow. A task entering `running` is not logged (its started_at
-- says when): it would double the feed's write cost on the hot path for no reader.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL,
    at      REAL    NOT NULL,
    status  TEXT    NOT NULL,
    attempt INTEGER NOT NULL,
    worker  TEXT                -- the worker whose lease this change ended, if any
);

CREATE TRIGGER tasks_status_event AFTER UPDATE OF status ON tasks
WHEN NEW.status IS NOT OLD.status AND NEW.status != 'running'
BEGIN
    INSERT INTO events (task_id, at, status, attempt, worker)
    VALUES (NEW.id, (julianday('now') - 2440587.5) * 86400.0, NEW.status, NEW.attempt, OLD.lease_owner);
END;

-- Live workers, for load reports and for telling a dead worker's leases from a live one's.
CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    info         BLOB NOT NULL DEFAULT '{}'
);
