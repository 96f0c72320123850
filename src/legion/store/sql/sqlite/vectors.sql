-- Named queries of vector collections (SQLite with sqlite-vec). "-- name:" starts each.

-- name: collection_get
SELECT name, scope, model, dims FROM vector_collections WHERE name = :name;

-- name: collection_insert
INSERT INTO vector_collections (name, scope, model, dims, created_at)
VALUES (:name, :scope, :model, :dims, :now);

-- name: collections
SELECT c.name, c.scope, c.model, c.dims,
       (SELECT count(*) FROM vector_items i WHERE i.collection = c.name) AS items
FROM vector_collections c ORDER BY c.name;

-- name: upsert
-- Positional (executemany): collection, session, id, text, metadata, embedding.
INSERT INTO vector_items (collection, session, id, text, metadata, embedding)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (collection, session, id)
DO UPDATE SET text = excluded.text, metadata = excluded.metadata, embedding = excluded.embedding;

-- name: search
-- Exact cosine search; /*where*/ becomes one "AND json_type(...) ... AND json_extract(...) = ?"
-- per filter (see SQLiteVectors.search).
-- An item stored with no direction (all zeros, before legion refused them) has no distance
-- (NULL): it is no one's neighbour.
SELECT id, text, metadata, distance FROM (
  SELECT id, text, metadata, vec_distance_cosine(embedding, ?) AS distance
  FROM vector_items
  WHERE collection = ? AND session = ? /*where*/
)
WHERE distance IS NOT NULL
ORDER BY distance
LIMIT ?;

-- name: delete
DELETE FROM vector_items
WHERE collection = :collection AND session = :session
  AND id IN (SELECT value FROM json_each(:ids));

-- name: stored
SELECT id, text, metadata FROM vector_items
WHERE collection = :collection AND session = :session
  AND id IN (SELECT value FROM json_each(:ids));

-- name: count
SELECT count(*) FROM vector_items WHERE collection = :collection AND session = :session;

-- name: set_metadata
-- Positional (executemany): metadata, collection, session, id.
UPDATE vector_items SET metadata = ? WHERE collection = ? AND session = ? AND id = ?;

-- name: drop_sessions
-- Every item of these sessions (a shared collection's are under '', never one of them).
DELETE FROM vector_items WHERE session IN (SELECT value FROM json_each(:sessions));

-- name: count_sessions
-- What `drop_sessions` would delete (`legion forget --dry-run`).
SELECT count(*) FROM vector_items WHERE session IN (SELECT value FROM json_each(:sessions));

-- name: drop_items
DELETE FROM vector_items WHERE collection = :name;

-- name: drop_collection
DELETE FROM vector_collections WHERE name = :name;
