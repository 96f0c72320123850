-- legion schema, version 3 (SQLite): API keys of the HTTP API (`legion keys`, `legion serve`).
-- A key reads "lgn_<id>_<secret>". Only a salted SHA-256 digest of the secret is kept: the
-- secret is 32 random bytes, so a fast hash is as safe as a slow one (see legion.server.keys).
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,  -- the key's public part, shown by `legion keys list`
    name       TEXT NOT NULL,     -- what or who the key is for
    salt       BLOB NOT NULL,
    digest     BLOB NOT NULL,     -- sha256(salt || secret)
    created_at REAL NOT NULL,
    revoked_at REAL               -- set by `legion keys revoke`; the key is then refused (403)
);
