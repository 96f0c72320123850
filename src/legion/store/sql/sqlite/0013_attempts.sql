-- legion schema, version 13 (SQLite): one row per ended attempt, written in the same
-- transaction as the attempt's completion: when it started and ended, on which worker,
-- how it ended, its error, and its seconds running and waiting for capacity.
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    task_id     INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    worker      TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    started_at  REAL    NOT NULL,
    finished_at REAL    NOT NULL,
    running     REAL    NOT NULL,
    waited      REAL    NOT NULL,
    error       BLOB              -- ErrorInfo JSON, when the attempt failed
);
CREATE INDEX attempts_task ON attempts (task_id);
