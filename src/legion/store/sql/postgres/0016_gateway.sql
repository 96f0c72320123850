-- legion schema, version 16 (PostgreSQL): what `legion gateway` keeps for its callers.
-- key_usage: each API key's calls, tokens and cost, added up by every gateway on the store
-- (one total per key, however many gateways on however many machines served it).
CREATE TABLE key_usage (
    key_id            text    PRIMARY KEY,
    calls             bigint  NOT NULL,  -- answered by a provider
    failed            bigint  NOT NULL,
    replayed          bigint  NOT NULL,  -- answered from gateway_calls, bought nothing
    prompt_tokens     bigint  NOT NULL,
    completion_tokens bigint  NOT NULL,
    cost_usd          float8  NOT NULL,  -- of the priced calls
    unpriced_calls    bigint  NOT NULL,  -- calls whose cost is unknown
    updated_at        float8  NOT NULL
);
-- gateway_calls: the answers of calls made with an X-Legion-Task header, one per step of
-- the caller's task, so that the task's call made again gets the same answer back.
CREATE TABLE gateway_calls (
    key_id     text   NOT NULL,  -- recordings are the key's own
    task       text   NOT NULL,
    step       text   NOT NULL,
    request    text   NOT NULL,  -- a digest of the request the answer is for
    output     bytea  NOT NULL,  -- the completion (or embeddings) JSON
    created_at float8 NOT NULL,
    PRIMARY KEY (key_id, task, step)
);
