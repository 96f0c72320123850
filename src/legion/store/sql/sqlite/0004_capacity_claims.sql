-- legion schema, version 4 (SQLite): LLM capacity shared by the workers of one API key.
-- Each worker claims its demand per route every second; its share of the limit is its
-- claim over all live claims. A 429 seen by one worker pauses and slows all of them.
CREATE TABLE capacity_claims (
    route  TEXT NOT NULL,
    worker TEXT NOT NULL,
    demand REAL NOT NULL,
    at     REAL NOT NULL,
    PRIMARY KEY (route, worker)
) WITHOUT ROWID;

CREATE TABLE capacity_backoff (
    route TEXT PRIMARY KEY,
    until REAL NOT NULL
) WITHOUT ROWID;
