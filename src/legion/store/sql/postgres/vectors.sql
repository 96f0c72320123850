-- Named queries of vector collections (PostgreSQL with pgvector). "-- name:" starts each.
-- {table}, {index} and {dims} are filled in (as identifiers and a literal) per collection;
-- vectors travel in pgvector's binary form (%b).

-- name: vector_available
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector');

-- name: vector_type
SELECT to_regtype('vector') IS NOT NULL;

-- name: create_extension
CREATE EXTENSION IF NOT EXISTS vector;

-- name: lock_collection
SELECT pg_advisory_xact_lock(hashtext('legion.vectors.' || %(name)s));

-- name: collection_get
SELECT name, scope, model, dims, id FROM vector_collections WHERE name = %(name)s;

-- name: collection_insert
INSERT INTO vector_collections (name, scope, model, dims, created_at)
VALUES (%(name)s, %(scope)s, %(model)s, %(dims)s, %(now)s)
RETURNING id;

-- name: collections
SELECT name, scope, model, dims, id FROM vector_collections ORDER BY name;

-- name: create_items
CREATE TABLE IF NOT EXISTS {table} (
    session   TEXT   NOT NULL,
    id        TEXT   NOT NULL,
    text      TEXT   NOT NULL,
    metadata  JSONB  NOT NULL,
    embedding vector({dims}) NOT NULL,
    PRIMARY KEY (session, id)
);

-- name: create_index
CREATE INDEX IF NOT EXISTS {index} ON {table} USING hnsw (embedding vector_cosine_ops);

-- name: index_exists
SELECT to_regclass(%(index)s) IS NOT NULL;

-- name: upsert
INSERT INTO {table} (session, id, text, metadata, embedding)
VALUES (%s, %s, %s, %s::jsonb, %b)
ON CONFLICT (session, id)
DO UPDATE SET text = EXCLUDED.text, metadata = EXCLUDED.metadata, embedding = EXCLUDED.embedding;

-- name: exact_search
-- For a filtered search (a session, or metadata): no index scan, so the k nearest rows
-- that pass the filter come back (an HNSW scan filters after it finds its candidates).
SET LOCAL enable_indexscan = off;

-- name: ef_search
SELECT set_config('hnsw.ef_search', %(ef)s, true);

-- name: search
SELECT id, text, metadata, embedding <=> %(q)b AS distance
FROM {table}
WHERE session = %(session)s AND metadata @> %(where)s::jsonb
ORDER BY embedding <=> %(q)b
LIMIT %(k)s;

-- name: search_index
-- An unfiltered search of a shared collection (whose rows are all of session ''): no WHERE,
-- so that the planner walks the HNSW index. With the filters of `search`, even ones every
-- row passes, it estimates them selective and scans the whole table instead.
SELECT id, text, metadata, embedding <=> %(q)b AS distance
FROM {table}
ORDER BY embedding <=> %(q)b
LIMIT %(k)s;

-- name: delete
DELETE FROM {table} WHERE session = %(session)s AND id = ANY(%(ids)s);

-- name: stored
SELECT id, text, metadata FROM {table} WHERE session = %(session)s AND id = ANY(%(ids)s);

-- name: set_metadata
UPDATE {table} SET metadata = %(metadata)s::jsonb WHERE session = %(session)s AND id = %(id)s;

-- name: count
SELECT count(*) FROM {table} WHERE session = %(session)s;

-- name: count_all
SELECT count(*) FROM {table};

-- name: session_collections
SELECT id FROM vector_collections WHERE scope = 'session' ORDER BY id;

-- name: drop_sessions
DELETE FROM {table} WHERE session = ANY(%(sessions)s);

-- name: count_sessions
SELECT count(*) FROM {table} WHERE session = ANY(%(sessions)s);

-- name: collections_table
SELECT to_regclass('vector_collections') IS NOT NULL;

-- name: drop_items
DROP TABLE IF EXISTS {table};

-- name: drop_collection
DELETE FROM vector_collections WHERE id = %(id)s;
