-- legion schema, version 19 (SQLite): suspects of a worker's death rerun in halving groups.
--
-- A task whose worker stopped while it ran with others is a suspect (`isolate`): one of
-- them may have killed the worker. Until now each suspect reran alone, one at a time, so
-- a fleet restarted after a kill, a reboot or an out-of-memory stop reran every task it
-- had in flight one after the other. `isolate_group` is the most suspects it may run with
-- now, itself included: half of those it was lost with. A group that loses its worker
-- again is halved again, down to the task that kills it, which then runs alone (a crash
-- charged to it); a group that ends clears its members.
ALTER TABLE tasks ADD COLUMN isolate_group INTEGER NOT NULL DEFAULT 1;
