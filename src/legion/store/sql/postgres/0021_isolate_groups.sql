-- legion schema, version 21 (PostgreSQL): suspects of a worker's death rerun in halving
-- groups. See sqlite/0019_isolate_groups.sql: `isolate_group` is the most suspects a task
-- that must run apart (`isolate`) may run with now, itself included.
ALTER TABLE tasks ADD COLUMN isolate_group integer NOT NULL DEFAULT 1;
