-- legion schema, version 10 (SQLite): provisioning.
-- `autoscalers`: each `legion worker --autoscale` supervisor's latest decision (how many
-- workers it wants, how many run, and why), for `legion status` and the dashboard.
CREATE TABLE autoscalers (
    id       TEXT PRIMARY KEY,
    host     TEXT NOT NULL,
    pid      INTEGER NOT NULL,
    at       REAL NOT NULL,
    desired  INTEGER NOT NULL,
    running  INTEGER NOT NULL,
    minimum  INTEGER NOT NULL,
    maximum  INTEGER NOT NULL,
    reason   TEXT NOT NULL
) WITHOUT ROWID;

-- `tasks.needs`: what an instance of the task needs, as a JSON object of resource name to
-- amount (a tag such as "gpu" is 1); NULL: nothing. A worker leases the task only if it
-- offers at least every amount (see legion.resources).
ALTER TABLE tasks ADD COLUMN needs TEXT;
