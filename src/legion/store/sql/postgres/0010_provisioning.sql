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
