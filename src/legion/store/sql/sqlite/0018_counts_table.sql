-- legion schema, version 18 (SQLite): the counts by status kept in a table of their own.
--
-- The index on (tenant, status, agent) answered the counts by status, by agent and by
-- tenant from the index alone, but every status change deleted an entry of it and
-- inserted another: a task's submit, lease and end cost ~2.8 us of the ~13 us its SQL
-- took (benchmarks/sql_per_row.py). A row per (tenant, status, agent) holds the count
-- now, moved by each statement that changes a status in the same transaction, a
-- statement per batch (see legion/store/sqlite_counts.py). Zero rows may stay.
CREATE TABLE task_counts (
    tenant TEXT    NOT NULL,
    status TEXT    NOT NULL,
    agent  TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (tenant, status, agent)
) WITHOUT ROWID;
INSERT INTO task_counts (tenant, status, agent, n)
SELECT tenant, status, agent, count(*) FROM tasks GROUP BY tenant, status, agent;
DROP INDEX tasks_counts;
