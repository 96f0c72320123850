-- legion schema, version 4 (PostgreSQL): LLM capacity shared by the workers of one API key.
-- Each worker claims its demand per route every second; its share of the limit is its
-- claim over all live claims. A 429 seen by one worker pauses and slows all of them.
CREATE TABLE capacity_claims (
    route  text             NOT NULL,
    worker text             NOT NULL,
    demand double precision NOT NULL,
    at     double precision NOT NULL,
    PRIMARY KEY (route, worker)
);

CREATE TABLE capacity_backoff (
    route text             PRIMARY KEY,
    until double precision NOT NULL
);
