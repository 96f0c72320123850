-- legion schema, version 10 (PostgreSQL): provisioning.
-- `autoscalers`: each `legion worker --autoscale` supervisor's latest decision (how many
-- workers it wants, how many run, and why), for `legion status` and the dashboard.
CREATE TABLE autoscalers (
    id       text PRIMARY KEY,
    host     text NOT NULL,
    pid      integer NOT NULL,
    at       double precision NOT NULL,
    desired  integer NOT NULL,
    running  integer NOT NULL,
    minimum  integer NOT NULL,
    maximum  integer NOT NULL,
    reason   text NOT NULL
);

-- `tasks.needs`: what an instance of the task needs, as a JSON object of resource name to
-- amount (a tag such as "gpu" is 1); NULL: nothing. A worker leases the task only if it
-- offers at least every amount (see legion.resources).
ALTER TABLE tasks ADD COLUMN needs jsonb;
