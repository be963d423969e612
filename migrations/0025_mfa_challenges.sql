-- Two-factor challenges spent (issue 23, part 3): the challenge token a
-- login with two-factor on answers is exchanged for one session only. A
-- row is the id of a challenge that started one; it is kept until the
-- token expires (and a margin for clocks), after which the token is
-- refused anyway and the next spend deletes the row.
CREATE TABLE mfa_challenges_spent (
    id         TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX mfa_challenges_spent_expiry ON mfa_challenges_spent (expires_at);
