-- Kafka destinations: a tenant's own Kafka cluster. Its settings are kept
-- as JSON (brokers, topic, TLS, SASL mechanism and user name); its SASL
-- password is sealed by the hub like a webhook's secret (a Kafka
-- destination has no signing secret: sealed_secret is '').
--
-- destination_outboxes remembers every destination that ever had an
-- outbox in the session store, on purpose without a foreign key: when a
-- destination or its whole tenant is deleted, the row stays until the
-- data plane has deleted the destination's outbox and dead letters, which
-- would otherwise be left behind in the session store for ever.

ALTER TABLE destinations ADD COLUMN kafka TEXT NOT NULL DEFAULT '';
ALTER TABLE destinations ADD COLUMN sealed_password TEXT NOT NULL DEFAULT '';

CREATE TABLE destination_outboxes (
    tenant TEXT NOT NULL,
    id     TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);

INSERT INTO destination_outboxes (tenant, id) SELECT tenant, id FROM destinations;
