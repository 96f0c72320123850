-- A task froze its worker's event loop past its timeout; the worker records it from its
-- watchdog thread (the loop cannot run) and exits. See legion/store/freeze.py.

-- name: freeze_task
-- Count the freeze; at :max_freezes the task is dead, else it goes back to the queue
-- without spending an attempt (a cancelled one ends cancelled). Fenced by the lease.
UPDATE tasks
SET freezes = freezes + 1,
    status = CASE
        WHEN freezes + 1 >= :max_freezes THEN 'dead'
        WHEN cancel_requested THEN 'cancelled'
        ELSE 'queued' END,
    error = CASE WHEN freezes + 1 >= :max_freezes THEN :dead_error ELSE :error END,
    attempt = CASE WHEN freezes + 1 >= :max_freezes THEN attempt ELSE attempt - 1 END,
    not_before = :now,
    lease_owner = NULL, lease_expires = NULL,
    finished_at = CASE WHEN freezes + 1 >= :max_freezes OR cancel_requested THEN :now END
WHERE id = :id AND attempt = :attempt AND lease_owner = :owner AND status = 'running'
RETURNING status, id;

-- name: release_owner
-- The exiting worker's other tasks go back to the queue unfinished, without spending an
-- attempt: they did nothing wrong.
UPDATE tasks
SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
    attempt = attempt - 1,
    lease_owner = NULL, lease_expires = NULL,
    finished_at = CASE WHEN cancel_requested THEN :now END
WHERE lease_owner = :owner AND status = 'running'
RETURNING id, status;
