-- A destination's own outbox_policy: what its full outbox does with a new
-- message, drop_oldest or refuse; '' follows the tenant's outbox_policy.
ALTER TABLE destinations ADD COLUMN outbox_policy TEXT NOT NULL DEFAULT '';
