-- Two-factor sign-in, invitations and single sign-on (issue 23, parts 3-5).

-- account_mfa holds an account's TOTP secret, sealed (AES-GCM under the
-- operator's key ring, as destination secrets are). enabled_at is NULL
-- while the secret is set up but not yet confirmed with a code; last_step
-- is the last 30-second step a code was accepted for, so that no code is
-- accepted twice.
CREATE TABLE account_mfa (
    account_id TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    secret     TEXT NOT NULL,
    enabled_at TIMESTAMPTZ,
    last_step  BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL
);

-- recovery_codes are an account's single-use second factors, stored as
-- SHA-256 hashes (each code carries 80 random bits).
CREATE TABLE recovery_codes (
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    used_at    TIMESTAMPTZ,
    PRIMARY KEY (account_id, code_hash)
);

-- tenant_mfa: a row means the tenant's members must have two-factor
-- sign-in on to use it.
CREATE TABLE tenant_mfa (
    tenant     TEXT PRIMARY KEY REFERENCES tenants (slug) ON DELETE CASCADE,
    set_by     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- invites: an email asked to join a tenant with a role. The link's token
-- is stored as its SHA-256 hash. An invite is pending until accepted,
-- revoked or expired.
CREATE TABLE invites (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    role        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    invited_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    accepted_at TIMESTAMPTZ,
    accepted_by TEXT,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX invites_tenant ON invites (tenant, created_at);

-- account_identities link an account to a person at an OpenID Connect
-- issuer (issuer URL and subject), made the first time they sign in there.
CREATE TABLE account_identities (
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX account_identities_account ON account_identities (account_id);
