-- Sessions the server can end, notices to an account, and who made each API
-- key.
--
-- A session token (console cookie or API bearer token) names a row here; a
-- request is served only while the row is neither ended nor past its expiry,
-- so logging out ends the session wherever the token is used. Kinds:
-- account (a person signed in), operator (the operator's console cookie),
-- impersonation (the operator acting as an owner of one tenant). Rows are
-- deleted a day after they expire.

CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    account_id TEXT REFERENCES accounts (id) ON DELETE CASCADE,
    tenant     TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    ended_at   TIMESTAMPTZ
);
CREATE INDEX sessions_expires ON sessions (expires_at);
CREATE INDEX sessions_account ON sessions (account_id);

-- What happened to an account that it should hear of: it was added to or
-- removed from a tenant (there is no email to tell it by).

CREATE TABLE notices (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    role       TEXT NOT NULL DEFAULT '',
    by_whom    TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX notices_account ON notices (account_id, id);

-- The account on whose behalf a key was made (directly, or by a key it
-- made), so that its keys end when it leaves the tenant. Keys made before
-- this migration have none and are kept.

ALTER TABLE api_keys ADD COLUMN created_by TEXT;
CREATE INDEX api_keys_creator ON api_keys (tenant, created_by);

-- Tenant creation is counted per account from the audit log (deleted
-- tenants included).

CREATE INDEX audit_log_actor ON audit_log (actor, action, at);
