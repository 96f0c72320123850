-- legion schema, version 23 (SQLite): the running tasks whose cancellation was asked, by
-- worker.
--
-- A running task learned of a cancel asked from another process only at its worker's next
-- heartbeat (up to 5 s): one that writes nothing (an LLM call, a sleep) often finished
-- first and ended `succeeded`, its effects done. Workers now look twice a second
-- (`cancels_asked`), which this index, empty but for a moment after each cancel, makes
-- free.
CREATE INDEX IF NOT EXISTS tasks_cancel_asked ON tasks (lease_owner) WHERE cancel_requested AND status = 'running';
