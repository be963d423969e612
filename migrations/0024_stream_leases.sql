-- App streams (GET /v1/tenants/{tenant}/stream) counted against the
-- tenant's max_streams across every control-plane process: one row per
-- open stream, renewed by the process serving it while it runs. A row
-- past expires_at is a stream whose process died; it no longer counts and
-- the next acquire for its tenant deletes it.

CREATE TABLE stream_leases (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    principal  TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX stream_leases_by_tenant ON stream_leases (tenant, expires_at);
