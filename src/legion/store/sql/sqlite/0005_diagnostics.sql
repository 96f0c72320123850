-- legion schema, version 5 (SQLite): what legion noticed about how an attempt used the
-- event loop (a block, an un-awaited step, an escaped exception, steps that could have
-- run together). One row per finding, written with the attempt's completion.
CREATE TABLE diagnostics (
    id      INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    agent   TEXT    NOT NULL,
    kind    TEXT    NOT NULL,
    data    BLOB    NOT NULL  -- {"kind", "message", "site", "seconds", "stack"}
);
CREATE INDEX diagnostics_task ON diagnostics (task_id);
