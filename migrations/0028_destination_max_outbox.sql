-- A destination's own bound on its outbox, below the tenant's max_outbox
-- quota; 0 is the quota.
ALTER TABLE destinations ADD COLUMN max_outbox BIGINT NOT NULL DEFAULT 0;
