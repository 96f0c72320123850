-- legion schema, version 13 (PostgreSQL): one row per ended attempt, written in the same
-- statement as the attempt's completion: when it started and ended, on which worker, how
-- it ended, its error, and its seconds running and waiting for capacity.
CREATE TABLE attempts (
    id          bigserial PRIMARY KEY,
    task_id     bigint  NOT NULL,
    attempt     integer NOT NULL,
    worker      text    NOT NULL,
    outcome     text    NOT NULL,
    started_at  float8  NOT NULL,
    finished_at float8  NOT NULL,
    running     float8  NOT NULL,
    waited      float8  NOT NULL,
    error       bytea             -- ErrorInfo JSON, when the attempt failed
);
CREATE INDEX attempts_task ON attempts (task_id);
