-- legion schema, version 14 (SQLite): a cheaper status change, for the hot path.
--
-- The change feed (`events`) is written by the statements that change a status, no longer
-- by a trigger: the trigger cost every UPDATE that sets `status`, each completion above
-- all (~5 us a row of the ~14 us the completions' write took, measured with
-- benchmarks/sql_per_row.py), even where it did not fire: an UPDATE that may fire a
-- trigger keeps an undo journal of its own. See legion/store/sqlite_feed.py.
DROP TRIGGER tasks_status_event;
--
-- Fewer indexes for every status change to keep.
-- A task changes status at least twice (queued -> running -> its end), and each change
-- rewrote its entries in two indexes on `status` (`tasks_status` on (status, agent) and
-- `tasks_tenant_status` on (tenant, status)): a delete and an insert in each. One index
-- on (tenant, status, agent) answers what both did - the counts by status, by agent and
-- by tenant, and a tenant's backlog - from the index alone, at half the writes. The
-- statements that looked tasks up by status (the fence of a write batch, lease
-- extensions) go by primary key or by the partial indexes of the queue and the leases.
DROP INDEX tasks_status;
DROP INDEX tasks_tenant_status;
CREATE INDEX tasks_counts ON tasks (tenant, status, agent);
-- Failures, newest first, for `legion status` and the dashboard: only rows with an error.
CREATE INDEX tasks_errors ON tasks (finished_at) WHERE error IS NOT NULL;
-- Tasks suspended at a wait, newest first, for the API: only waiting rows.
CREATE INDEX tasks_waiting ON tasks (id) WHERE status = 'waiting';
