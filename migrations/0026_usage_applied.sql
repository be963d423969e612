-- Usage deltas added (the meter's flushes): a delta carries an id of its
-- own, and the transaction that adds it records the id, so that a delta
-- tried again after a failure whose outcome was unknown (a timeout during
-- the commit, a connection lost after it) is not counted twice. A row is
-- kept a week, far longer than a delta is tried again.
CREATE TABLE usage_applied (
    id TEXT PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL
);
CREATE INDEX usage_applied_at ON usage_applied (at);
