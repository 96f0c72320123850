-- legion schema, version 21 (SQLite): what purged tasks had spent on LLM calls, per agent
-- and per tenant. An agent's or a tenant's budget counts from the usage recorded on its
-- tasks (legion.run.spending): a purge took that usage with the tasks, and a limit "in
-- all" began again after each nightly purge. `legion purge` adds it here first.
CREATE TABLE IF NOT EXISTS purged_spend (
    scope  TEXT    NOT NULL,  -- 'agent' or 'tenant'
    name   TEXT    NOT NULL,
    calls  INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,  -- prompt and completion
    cost   REAL    NOT NULL DEFAULT 0,  -- USD
    PRIMARY KEY (scope, name)
) WITHOUT ROWID;
