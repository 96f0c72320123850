-- legion schema, version 6 (PostgreSQL): crash accounting per task and worker identity.
-- `crashes` counts the times a task's worker stopped while running it alone (its own
-- crashes); `isolate` marks a task taken back from a worker that stopped while running
-- it among others: it runs alone until it ends, so a task that crashes its worker is
-- told from its innocent neighbours.
ALTER TABLE tasks ADD COLUMN crashes integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN isolate boolean NOT NULL DEFAULT false;
CREATE INDEX tasks_isolated ON tasks (agent, priority DESC, id) WHERE status = 'queued' AND isolate;

-- Who a worker is beyond its host name: the kernel's boot id, its PID namespace and
-- its process's start time (clock ticks after boot), so another process can tell for
-- sure that the worker's process is gone.
ALTER TABLE workers ADD COLUMN boot_id text NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN pid_ns text NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN proc_start bigint NOT NULL DEFAULT 0;

-- The database's clock, in seconds since the epoch: lease expiry and worker liveness are
-- judged by it, never by a worker's own clock.
CREATE FUNCTION legion_now() RETURNS double precision
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$ SELECT date_part('epoch', clock_timestamp()) $$;
