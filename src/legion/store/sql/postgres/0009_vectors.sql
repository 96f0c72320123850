-- legion schema, version 9 (PostgreSQL): the catalog of vector collections. The items of
-- each collection live in a table of their own (vector_items_<id>, a pgvector column of the
-- collection's dimension and an HNSW index), created with the collection, so a store
-- without the pgvector extension still migrates.
CREATE TABLE vector_collections (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT             NOT NULL UNIQUE,
    scope      TEXT             NOT NULL,  -- 'session' or 'shared'
    model      TEXT             NOT NULL,
    dims       INTEGER          NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
