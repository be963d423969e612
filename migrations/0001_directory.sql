-- The directory: accounts, tenants, members, devices, ACL rules, API keys,
-- the audit log and server settings.

CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE tenants (
    slug            TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    plan            TEXT NOT NULL,
    suspended       BOOLEAN NOT NULL DEFAULT FALSE,
    quota_overrides TEXT NOT NULL DEFAULT '{}',
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE members (
    tenant     TEXT NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, account_id)
);
CREATE INDEX members_account ON members (account_id, tenant);

CREATE TABLE devices (
    tenant       TEXT NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    enabled      BOOLEAN NOT NULL,
    client_ids   TEXT NOT NULL,
    metadata     TEXT NOT NULL DEFAULT '{}',
    secret_hash  TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE acl_rules (
    tenant     TEXT NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
    id         TEXT NOT NULL,
    position   INTEGER NOT NULL,
    effect     TEXT NOT NULL,
    action     TEXT NOT NULL,
    topic      TEXT NOT NULL,
    device     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX acl_rules_position ON acl_rules (tenant, position);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    key_hash     TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ
);
CREATE INDEX api_keys_tenant ON api_keys (tenant, id);

-- The audit log outlives what it describes, so it has no foreign keys.
CREATE TABLE audit_log (
    id     TEXT PRIMARY KEY,
    tenant TEXT,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant, id);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
