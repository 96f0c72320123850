-- legion schema, version 14 (PostgreSQL): fewer indexes for every status change to keep.
--
-- A task changes status at least twice (queued -> running -> its end), and each change
-- wrote new entries in two indexes on `status` (`tasks_status` on (status, agent) and
-- `tasks_tenant_status` on (tenant, status)). One index on (tenant, status, agent)
-- answers what both did - the counts by status, by agent and by tenant, and a tenant's
-- backlog - at half the writes; failures and waiting tasks have partial indexes of their
-- own, which only the rows they hold cost anything. (The change feed stays a trigger
-- here: it numbers the events of a transaction, see 0001_initial.sql.)
DROP INDEX tasks_status;
DROP INDEX tasks_tenant_status;
CREATE INDEX tasks_counts ON tasks (tenant, status, agent);
CREATE INDEX tasks_errors ON tasks (finished_at) WHERE error IS NOT NULL;
CREATE INDEX tasks_waiting ON tasks (id) WHERE status = 'waiting';
