-- Account security (issue 23): verified emails, one-time tokens that verify
-- an email or reset a password, and where each session was started.
--
-- A token is "<id>.<secret>"; only the SHA-256 of the secret is kept, so a
-- copy of the database opens no account. used_at marks a token spent (or
-- replaced by a newer one of the same purpose).

ALTER TABLE accounts ADD COLUMN email_verified_at TIMESTAMPTZ;

CREATE TABLE account_tokens (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    purpose     TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    email       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    used_at     TIMESTAMPTZ
);
CREATE INDEX account_tokens_account ON account_tokens (account_id, purpose);
CREATE INDEX account_tokens_expires ON account_tokens (expires_at);

-- What a person sees in their list of sessions: the address and browser a
-- session was started from, and when it was last used (to the minute).

ALTER TABLE sessions ADD COLUMN address TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN user_agent TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN last_seen_at TIMESTAMPTZ;

-- The account's own trail (sign-ins aside): actions on account:<id>.

CREATE INDEX audit_log_object ON audit_log (object, at);
