-- Usage outlives its tenant for the retention period (billing disputes,
-- audits): the usage table no longer cascades from tenants, and a deleted
-- tenant's slug stays reserved as long as its usage is kept, so that nobody
-- who registers the slug again sees it.

CREATE TABLE usage_kept (
    tenant             TEXT NOT NULL,
    hour               TIMESTAMPTZ NOT NULL,
    messages_in        BIGINT NOT NULL DEFAULT 0,
    messages_out       BIGINT NOT NULL DEFAULT 0,
    bytes_in           BIGINT NOT NULL DEFAULT 0,
    bytes_out          BIGINT NOT NULL DEFAULT 0,
    connection_seconds BIGINT NOT NULL DEFAULT 0,
    peak_connections   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, hour)
);
INSERT INTO usage_kept (tenant, hour, messages_in, messages_out, bytes_in, bytes_out, connection_seconds, peak_connections)
    SELECT tenant, hour, messages_in, messages_out, bytes_in, bytes_out, connection_seconds, peak_connections FROM usage;
DROP TABLE usage;
ALTER TABLE usage_kept RENAME TO usage;
CREATE INDEX usage_hour ON usage (hour);

CREATE TABLE deleted_tenants (
    slug       TEXT PRIMARY KEY,
    deleted_at TIMESTAMPTZ NOT NULL
);
