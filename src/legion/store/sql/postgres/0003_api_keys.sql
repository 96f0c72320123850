-- legion schema, version 3 (PostgreSQL): API keys of the HTTP API (`legion keys`, `legion serve`).
-- A key reads "lgn_<id>_<secret>". Only a salted SHA-256 digest of the secret is kept: the
-- secret is 32 random bytes, so a fast hash is as safe as a slow one (see legion.server.keys).
CREATE TABLE api_keys (
    id         text             PRIMARY KEY,  -- the key's public part, shown by `legion keys list`
    name       text             NOT NULL,     -- what or who the key is for
    salt       bytea            NOT NULL,
    digest     bytea            NOT NULL,     -- sha256(salt || secret)
    created_at double precision NOT NULL,
    revoked_at double precision               -- set by `legion keys revoke`; then refused (403)
);
