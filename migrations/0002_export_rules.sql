-- Export rules: messages on matching topics are written to a Kafka topic
-- under the tenant's prefix.

CREATE TABLE export_rules (
    tenant     TEXT NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
    id         TEXT NOT NULL,
    filter     TEXT NOT NULL,
    topic      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, id)
);
