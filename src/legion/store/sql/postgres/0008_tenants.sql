-- legion schema, version 8 (PostgreSQL): tenants of the HTTP API and idempotency that can
-- tell a repeated submission from a different one.
--
-- Every task and API key belongs to a tenant ('default' for a single user; every task and
-- key made before this version belongs to it). A key's scope is 'tenant' (it sees its
-- tenant's tasks) or 'admin' (it sees every tenant's).
--
-- Idempotency keys are unique per tenant. `tasks.key` keeps its UNIQUE constraint (as in
-- the SQLite store, which cannot drop one), so a key of the default tenant is stored as
-- given and another tenant's as chr(31) || tenant || chr(31) || key
-- (legion.store.tenancy adds and strips the prefix). `input_hash` is
-- sha256(agent, NUL, input) of a keyed task: the same key sent with another agent or input
-- is a conflict, never an answer with the first task.
ALTER TABLE tasks ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE tasks ADD COLUMN input_hash bytea;
CREATE INDEX tasks_tenant ON tasks (tenant, id);
CREATE INDEX tasks_tenant_status ON tasks (tenant, status);
ALTER TABLE api_keys ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE api_keys ADD COLUMN scope text NOT NULL DEFAULT 'tenant'
    CHECK (scope IN ('tenant', 'admin'));
