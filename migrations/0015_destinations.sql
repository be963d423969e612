-- Destinations: where a tenant's rules send messages (webhooks first).
-- The signing secret and the header values are sealed by the hub under a
-- key from its configuration (never stored in the clear); header names
-- are kept apart so they can be listed. Rules gain a CEL condition and a
-- destination; a rule with a destination has no Kafka topic ('').

CREATE TABLE destinations (
    tenant         TEXT NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
    id             TEXT NOT NULL,
    name           TEXT NOT NULL,
    type           TEXT NOT NULL,
    url            TEXT NOT NULL,
    header_names   TEXT NOT NULL DEFAULT '[]',
    sealed_headers TEXT NOT NULL DEFAULT '',
    sealed_secret  TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, name)
);

ALTER TABLE export_rules ADD COLUMN condition TEXT NOT NULL DEFAULT '';
ALTER TABLE export_rules ADD COLUMN destination TEXT NOT NULL DEFAULT '';
