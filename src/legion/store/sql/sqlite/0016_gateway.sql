-- legion schema, version 16 (SQLite): what `legion gateway` keeps for its callers.
-- key_usage: each API key's calls, tokens and cost, added up by every gateway on the store
-- (one total per key, however many gateways served it).
CREATE TABLE key_usage (
    key_id            TEXT    PRIMARY KEY,
    calls             INTEGER NOT NULL,  -- answered by a provider
    failed            INTEGER NOT NULL,
    replayed          INTEGER NOT NULL,  -- answered from gateway_calls, bought nothing
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd          REAL    NOT NULL,  -- of the priced calls
    unpriced_calls    INTEGER NOT NULL,  -- calls whose cost is unknown
    updated_at        REAL    NOT NULL
);
-- gateway_calls: the answers of calls made with an X-Legion-Task header, one per step of
-- the caller's task, so that the task's call made again gets the same answer back.
CREATE TABLE gateway_calls (
    key_id     TEXT NOT NULL,  -- recordings are the key's own
    task       TEXT NOT NULL,
    step       TEXT NOT NULL,
    request    TEXT NOT NULL,  -- a digest of the request the answer is for
    output     BLOB NOT NULL,  -- the completion (or embeddings) JSON
    created_at REAL NOT NULL,
    PRIMARY KEY (key_id, task, step)
);
