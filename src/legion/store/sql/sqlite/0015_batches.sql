-- legion schema, version 15 (SQLite): the LLM batch tier.
--
-- A call made with tier="batch" waits here for a provider's batch job (its task is
-- `waiting` for the signal `event`): `pending`, then `claimed` by a worker's batch desk
-- (`job` holds the claim, `poll_at` its time), then `sent` (`job` is the provider's batch
-- id, `poll_at` the next poll), or `dropped` when its task gave up on it after it was sent
-- (kept until the job's next poll: a job whose calls were all dropped is cancelled).
-- Answered calls are deleted, and given-up ones not yet sent.
CREATE TABLE llm_batch_calls (
    task_id     INTEGER NOT NULL,
    event       TEXT    NOT NULL,
    route       TEXT    NOT NULL,
    request     BLOB    NOT NULL,
    fallback_at REAL    NOT NULL,
    state       TEXT    NOT NULL DEFAULT 'pending',
    job         TEXT,
    poll_at     REAL    NOT NULL DEFAULT 0,
    created_at  REAL    NOT NULL,
    PRIMARY KEY (task_id, event)
);
CREATE INDEX llm_batch_calls_open ON llm_batch_calls (state, route, created_at);
