-- legion schema, version 15 (PostgreSQL): the LLM batch tier.
--
-- A call made with tier="batch" waits here for a provider's batch job (its task is
-- `waiting` for the signal `event`): `pending`, then `claimed` by a worker's batch desk
-- (`job` holds the claim, `poll_at` its time), then `sent` (`job` is the provider's batch
-- id, `poll_at` the next poll), or `dropped` when its task gave up on it after it was sent
-- (kept until the job's next poll: a job whose calls were all dropped is cancelled).
-- Answered calls are deleted, and given-up ones not yet sent.
CREATE TABLE llm_batch_calls (
    task_id     bigint           NOT NULL,
    event       text             NOT NULL,
    route       text             NOT NULL,
    request     bytea            NOT NULL,
    fallback_at double precision NOT NULL,
    state       text             NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'claimed', 'sent', 'dropped')),
    job         text,
    poll_at     double precision NOT NULL DEFAULT 0,
    created_at  double precision NOT NULL,
    PRIMARY KEY (task_id, event)
);
CREATE INDEX llm_batch_calls_open ON llm_batch_calls (state, route, created_at);
