-- legion schema, version 22 (PostgreSQL): what purged tasks had spent on LLM calls, per
-- agent and per tenant. An agent's or a tenant's budget counts from the usage recorded on
-- its tasks (legion.run.spending): a purge took that usage with the tasks, and a limit "in
-- all" began again after each nightly purge. `legion purge` adds it here first.
CREATE TABLE IF NOT EXISTS purged_spend (
    scope  text             NOT NULL,  -- 'agent' or 'tenant'
    name   text             NOT NULL,
    calls  bigint           NOT NULL DEFAULT 0,
    tokens bigint           NOT NULL DEFAULT 0,  -- prompt and completion
    cost   double precision NOT NULL DEFAULT 0,  -- USD
    PRIMARY KEY (scope, name)
);
