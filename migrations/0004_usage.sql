-- Metered usage per tenant in hourly buckets. The data plane adds to the
-- current hour's row about once a second; peak_connections keeps the
-- highest value any flush saw.

CREATE TABLE usage (
    tenant             TEXT NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
    hour               TIMESTAMPTZ NOT NULL,
    messages_in        BIGINT NOT NULL DEFAULT 0,
    messages_out       BIGINT NOT NULL DEFAULT 0,
    bytes_in           BIGINT NOT NULL DEFAULT 0,
    bytes_out          BIGINT NOT NULL DEFAULT 0,
    connection_seconds BIGINT NOT NULL DEFAULT 0,
    peak_connections   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, hour)
);
