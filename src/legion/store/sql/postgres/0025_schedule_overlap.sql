-- legion schema, version 25 (PostgreSQL): what a schedule does when its last task has not
-- ended at its next tick, and that task.
--
-- A schedule whose task outlasted its period stacked runs, one more each tick (a nightly
-- report that took 25 hours ran twice at once the next night, and so on). `overlap`:
-- 'allow' (as before: every tick runs) or 'skip' (a tick whose schedule's last task has
-- not ended is passed over). `last_task`: the task of the last tick run, which `legion
-- schedule list` shows with its status.
ALTER TABLE schedules ADD COLUMN IF NOT EXISTS overlap text NOT NULL DEFAULT 'allow';
ALTER TABLE schedules ADD COLUMN IF NOT EXISTS last_task bigint;
