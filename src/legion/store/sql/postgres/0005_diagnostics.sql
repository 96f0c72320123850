-- legion schema, version 5 (PostgreSQL): what legion noticed about how an attempt used the
-- event loop (a block, an un-awaited step, an escaped exception, steps that could have
-- run together). One row per finding, written with the attempt's completion.
CREATE TABLE diagnostics (
    id      bigserial PRIMARY KEY,
    task_id bigint    NOT NULL,
    attempt integer   NOT NULL,
    agent   text      NOT NULL,
    kind    text      NOT NULL,
    data    bytea     NOT NULL  -- {"kind", "message", "site", "seconds", "stack"}
);
CREATE INDEX diagnostics_task ON diagnostics (task_id);
