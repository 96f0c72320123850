-- legion schema, version 23 (PostgreSQL): the queue's index by agent, then tenant.
--
-- A lease took an agent's tasks by priority, then age, whatever their tenant: a tenant's
-- backlog of thousands held back every task another tenant submitted after it. Tenants
-- take turns now (legion.store.turns): the lease finds the tenants with tasks queued
-- (a seek per tenant) and reads each one's tasks in its own queue order, which this
-- index gives. With one tenant queued, the lease reads as before, from the same index.
DROP INDEX IF EXISTS tasks_queue;
CREATE INDEX tasks_queue ON tasks (agent, tenant, priority DESC, id) WHERE status = 'queued';
