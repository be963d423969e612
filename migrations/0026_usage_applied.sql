-- Usage transactions (the meter's flushes): each transaction that adds
-- usage records an id of its own, so that deltas tried again after a
-- commit that failed, but may have committed all the same (a timeout
-- while the database commits, the connection lost after it), are not
-- counted twice: they carry the ids of those tries, and one whose try is
-- recorded is skipped. The next transaction deletes the record of one
-- that committed; the record of one whose commit failed is kept a week.
CREATE TABLE usage_applied (
    id TEXT PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL
);
CREATE INDEX usage_applied_at ON usage_applied (at);
