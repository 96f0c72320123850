-- legion schema, version 19 (PostgreSQL): only keyed tasks are in the index of keys.
--
-- `tasks.key` was a UNIQUE constraint, whose index holds every row, NULL keys included.
-- A status change writes a new version of the row (status is indexed, so it is never a
-- heap-only update), and each version added an entry there: three per task (submit,
-- lease, completion) for the many tasks that have no key. A partial unique index keeps
-- the same uniqueness for the keys that exist; the submit names it in ON CONFLICT (key)
-- WHERE key IS NOT NULL, and lookups by key (`key = ANY(...)`) imply its predicate.
CREATE UNIQUE INDEX tasks_key ON tasks (key) WHERE key IS NOT NULL;
ALTER TABLE tasks DROP CONSTRAINT tasks_key_key;
