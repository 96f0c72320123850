-- legion schema, version 9 (SQLite): vector collections (ctx.vectors, legion vectors).
-- A collection keeps its scope, the model that embedded it and the vectors' dimension;
-- its items are keyed by session ('' in a shared collection) and id. Embeddings are
-- float32 blobs, searched exactly with sqlite-vec's vec_distance_cosine.
CREATE TABLE IF NOT EXISTS vector_collections (
    name       TEXT PRIMARY KEY,
    scope      TEXT    NOT NULL,  -- 'session' or 'shared'
    model      TEXT    NOT NULL,
    dims       INTEGER NOT NULL,
    created_at REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS vector_items (
    collection TEXT NOT NULL,
    session    TEXT NOT NULL,
    id         TEXT NOT NULL,
    text       TEXT NOT NULL,
    metadata   TEXT NOT NULL,  -- a JSON object
    embedding  BLOB NOT NULL,  -- dims float32, little-endian
    PRIMARY KEY (collection, session, id)
) WITHOUT ROWID;
