-- A task froze its worker's event loop past its timeout; the worker records it from its
-- watchdog thread (the loop cannot run) and exits. See legion/store/freeze.py.

-- name: freeze_task
-- Count the freeze; at %(max_freezes)s the task is dead, else it goes back to the queue
-- without spending an attempt (a cancelled one ends cancelled). Fenced by the lease.
UPDATE tasks
SET freezes = freezes + 1,
    status = CASE
        WHEN freezes + 1 >= %(max_freezes)s THEN 'dead'
        WHEN cancel_requested THEN 'cancelled'
        ELSE 'queued' END,
    error = CASE WHEN freezes + 1 >= %(max_freezes)s THEN %(dead_error)b ELSE %(error)b END,
    attempt = CASE WHEN freezes + 1 >= %(max_freezes)s THEN attempt ELSE attempt - 1 END,
    not_before = %(now)s,
    lease_owner = NULL, lease_expires = NULL,
    finished_at = CASE WHEN freezes + 1 >= %(max_freezes)s OR cancel_requested
                       THEN %(now)s END
WHERE id = %(id)s AND attempt = %(attempt)s AND lease_owner = %(owner)s AND status = 'running'
RETURNING status, id;

-- name: release_owner
-- The exiting worker's other tasks go back to the queue unfinished, without spending an
-- attempt: they did nothing wrong.
UPDATE tasks
SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
    attempt = attempt - 1,
    lease_owner = NULL, lease_expires = NULL,
    finished_at = CASE WHEN cancel_requested THEN %(now)s END
WHERE lease_owner = %(owner)s AND status = 'running'
RETURNING id, status;

-- name: end_sessions
-- End this process's other sessions (tagged with %(tag)s as application_name): its loop
-- is frozen, so their open transactions would hold their locks until it exits.
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE application_name = %(tag)s AND pid <> pg_backend_pid();
