-- The auth front's counts of throttled attempts (password guesses,
-- sign-ups, reset and verification mails, member adds, two-factor codes,
-- operator tokens), in the database so that every control-plane process
-- counts against one budget, and a restart forgets nothing. A row is one
-- budget's key (a hash of the budget's name and what it counts: an
-- account, an address, a pair of them); tally is its attempts of the last
-- hour, its streak and its last attempt, as JSON; until is when it holds
-- nothing more (its last attempt and an hour).
CREATE TABLE auth_tallies (
    id TEXT PRIMARY KEY,
    tally TEXT NOT NULL,
    until_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX auth_tallies_until ON auth_tallies (until_at);

-- The pairs of an account and an address that signed in lately (a hash of
-- each pair): a correct password from there is held only to the pair's
-- own budget, whatever strangers spent on the account.
CREATE TABLE auth_trusted (
    id TEXT PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL
);
CREATE INDEX auth_trusted_at ON auth_trusted (at);
